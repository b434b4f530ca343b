"""The `local-gpus` executor: every visible GPU of this machine, as many units on each at once as its
memory takes (`[execution] units_per_gpu`: plugins/gpu_shares.py), each in a worker process of its
own (``python -m emkit.execution.job``) that sees only its GPU through CUDA_VISIBLE_DEVICES, as
Slurm would give it.

Workers run in sessions of their own: if the emkit process dies, they finish their units, and
the next `emkit run` finds them by their process id and waits for them instead of starting
the same units again. Ctrl-C stops them (their units resume from their saved state).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from emkit.default_plugins.gpu_shares import GIB, USABLE, GpuShares, gpu_memory
from emkit.default_plugins.processes import jobs_by_pid, process_alive as alive
from emkit.errors import EmkitError
from emkit.execution.handles import DONE, FAILED, GONE, RUNNING, JobHandle, JobState, log_tail
from emkit.hookspecs import hookimpl

log = logging.getLogger("emkit")


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES when it is set (as Slurm sets it), else the GPUs nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        if listed.returncode == 0:
            return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]
    return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class LocalGpusExecutor:
    name = "local-gpus"
    in_process = False
    gpu_work_here = True  # a judge that uses the GPU would share it with the units

    def __init__(self, settings, run_path: Path, name: str = "local-gpus", gpus: list[str] | None = None):
        self.name = name
        self.gpus = gpus or list(settings.gpus) or visible_gpus()
        if not self.gpus:
            raise EmkitError(
                'execution.executor = "local-gpus" found no GPU here (CUDA_VISIBLE_DEVICES is empty and nvidia-smi '
                'lists none); list the devices in execution.gpus, or use executor = "local".'
            )
        per_gpu = None if settings.units_per_gpu == "auto" else settings.units_per_gpu
        self.shares = GpuShares(self.gpus, per_gpu, gpu_memory() if per_gpu is None else {})
        self.slots = self.shares.most_at_once or len(self.gpus)
        self.jobs_dir = Path(run_path) / "jobs"
        self._processes: dict[str, subprocess.Popen] = {}
        self._loads: dict[str, object] = {}  # job id -> UnitLoad

    def describe(self) -> list[str]:
        shares = self.shares
        if shares.by_memory:
            how = ("as many units on each GPU at once as its memory takes (" +
                   ", ".join(f"GPU {g}: {shares.memory[g] / GIB:.0f} GiB" for g in self.gpus) + ")")
        else:
            how = f"{shares.per_gpu or 1} unit{'s' if (shares.per_gpu or 1) > 1 else ''} per GPU at once"
        return [f"executor {self.name}: {how} on {len(self.gpus)} GPU{'s' if len(self.gpus) > 1 else ''} "
                f"({', '.join(self.gpus)}), each unit in a worker process with CUDA_VISIBLE_DEVICES set to its GPU"]

    def room_for(self, load) -> bool:
        return self.shares.place(load) is not None

    def submit(self, unit_key: str, spec_json: str, attempt: int, load=None) -> JobHandle:
        folder = self.jobs_dir / unit_key
        folder.mkdir(parents=True, exist_ok=True)
        spec_file, result_file = folder / "spec.json", folder / f"result-{attempt}.json"
        log_path = folder / f"attempt-{attempt}.log"
        spec_file.write_text(spec_json, encoding="utf-8")
        result_file.unlink(missing_ok=True)
        gpu, share = self.shares.place(load) or (self.gpus[0], 1.0)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        if share < 1.0:  # other units share the GPU: vLLM takes this, not 90% of it
            env["EMKIT_GPU_MEMORY_SHARE"] = f"{share:.4f}"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "emkit.execution.job", str(spec_file), str(result_file)],
                                       stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        job_id = f"gpu{gpu}-pid{process.pid}"
        self._processes[job_id] = process
        self._loads[job_id] = load
        self.shares.start(job_id, gpu, self.shares.reserved_bytes(gpu, share))
        if share < 1.0:
            log.info("unit %s: on GPU %s beside %d other units, with %.0f%% of its memory", unit_key, gpu,
                     sum(1 for g, _ in self.shares.running.values() if g == gpu) - 1, 100 * share)
        return JobHandle(unit_key, job_id, str(log_path), {"pid": process.pid, "result": str(result_file)})

    def reattach(self, row: dict) -> JobHandle | None:
        """A worker a dead emkit process started: still running, or finished with its result on disk."""
        job_id = row.get("job_id") or ""
        if "-pid" not in job_id:
            return None
        gpu, pid = job_id[len("gpu"):].split("-pid")
        attempt = row.get("attempts") or 1
        result = self.jobs_dir / row["unit_key"] / f"result-{attempt}.json"
        handle = JobHandle(row["unit_key"], job_id, row.get("log_path") or "", {"pid": int(pid), "result": str(result)})
        if alive(int(pid)) and str(result) in _cmdline(int(pid)):
            if gpu in self.gpus:  # what it holds is not known: the whole GPU, until it ends
                self.shares.start(job_id, gpu, self.shares.reserved_bytes(gpu, USABLE))
            return handle
        return handle if result.is_file() else None

    def poll(self, handles: list[JobHandle]) -> dict[str, JobState]:
        states = {}
        for handle in handles:
            process = self._processes.get(handle.job_id)
            running = process.poll() is None if process is not None else alive(handle.extra["pid"])
            if running:
                states[handle.job_id] = JobState(RUNNING)
                continue
            self._processes.pop(handle.job_id, None)
            self.shares.finish(handle.job_id, self._loads.pop(handle.job_id, None), _peak_bytes(handle))
            states[handle.job_id] = _outcome(handle)
        return states

    def stop(self, handles: list[JobHandle]) -> None:
        """Ctrl-C: stop the workers; their units resume from their saved state on the next run."""
        for handle in handles:
            process = self._processes.get(handle.job_id)
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for handle in handles:
            process = self._processes.get(handle.job_id)
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

    def stop_message(self, count: int) -> str:
        return f"stopped {count} worker processes; their units resume from their saved state on the next run"


def _peak_bytes(handle: JobHandle) -> int | None:
    import json

    try:
        return json.loads(Path(handle.extra["result"]).read_text(encoding="utf-8")).get("peak_gpu_bytes")
    except (OSError, ValueError):
        return None


def _outcome(handle: JobHandle) -> JobState:
    import json

    result = Path(handle.extra["result"])
    if not result.is_file():
        return JobState(GONE, log_tail(handle.log_path))
    data = json.loads(result.read_text(encoding="utf-8"))
    if data.get("ok"):
        return JobState(DONE)
    return JobState(FAILED, f"{data.get('error')}\n{log_tail(handle.log_path)}")


class LocalGpusBackend:
    """Workers are processes of this machine, so their liveness is read as the local executor's is."""
    name = "local-gpus"
    description = ("every visible GPU of this machine, as many units on each at once as its memory takes "
                   "([execution] units_per_gpu), each in a worker process")

    def create(self, settings, run_path):
        return LocalGpusExecutor(settings, run_path)

    def plan(self, settings, out_dir) -> dict:
        gpus = list(settings.gpus) or visible_gpus()
        per_gpu = ("as many units per GPU as its memory takes" if settings.units_per_gpu == "auto" else
                   f"{settings.units_per_gpu} unit{'s' if settings.units_per_gpu > 1 else ''} per GPU")
        return {"gpus": gpus,
                "how": (f"{per_gpu} at once, on {len(gpus)} GPUs ({', '.join(gpus)})" if gpus else
                        f"{per_gpu} at once; no GPU is visible here, so this run would be refused")}

    def jobs_now(self, rows: list[dict]) -> dict[str, str | None]:
        return jobs_by_pid(rows)

    def setup_lines(self, settings) -> list[str]:
        return []


@hookimpl
def register_executors(register):
    register(LocalGpusBackend())
