"""Worker processes of this machine, found again by the process id in their job id (pid123, gpu0-pid123)."""

from __future__ import annotations

import os


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
