"""The `local` executor: one unit after another, in this process, on this machine's first GPU (or
its CPU). Units write straight into the run's store; there is nothing to merge."""

from __future__ import annotations

import os

from emkit.hookspecs import hookimpl


class LocalExecutor:
    name = "local"
    in_process = True
    gpu_work_here = True  # a judge that uses the GPU would share it with the units
    slots = 1

    def describe(self) -> list[str]:
        return ["executor local: one unit after another in this process"]


def process_alive(pid: int) -> bool:
    """Running, not a zombie: a reparented worker that exited may stay a zombie where PID 1 does not reap."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        try:  # no /proc (macOS): signal 0 asks only whether the process exists
            os.kill(pid, 0)
            return True
        except (OSError, ValueError):
            return False


def jobs_by_pid(rows: list[dict]) -> dict[str, str | None]:
    """Job ids that end in the process id (pid123, gpu0-pid123): "" while it runs, None once it is gone."""
    states = {}
    for row in rows:
        job_id = row.get("job_id") or ""
        digits = job_id.rpartition("pid")[2]
        if digits.isdigit():
            states[job_id] = "" if process_alive(int(digits)) else None
    return states


class LocalBackend:
    name = "local"
    description = "one unit after another in the emkit process, on this machine's first GPU or its CPU"

    def create(self, settings, run_path):
        return LocalExecutor()

    def plan(self, settings, out_dir) -> dict:
        return {"how": "one unit after another in this process"}

    def jobs_now(self, rows: list[dict]) -> dict[str, str | None]:
        return jobs_by_pid(rows)

    def setup_lines(self, settings) -> list[str]:
        return []


@hookimpl
def register_executors(register):
    register(LocalBackend())
