"""The `slurm` executor's jobs: one per unit, submitted through submitit (imported only here).

Jobs are watched with squeue and submitit's result files; sacct only as a second opinion
before a job is declared gone (clusters without accounting are common, and there sacct fails).
A job that reaches its time limit or is preempted saves nothing extra: it requeues itself
(submitit's Checkpointable) or Slurm requeues it, and the unit resumes from its last training
state and its shard. A job is declared gone (and submitted again, up to
execution.max_attempts times) only when it has been neither queued nor running, with no
result, at MISSES_BEFORE_GONE polls in a row, and sacct does not know it as queued or
running: a job Slurm is requeuing (PREEMPTED, NODE_FAIL, REQUEUED) is waited for, never run
twice. The job ids are in the store, so an emkit process started after this one died waits
for the jobs already in the queue instead of submitting them twice.

A request no node can meet is refused before submitting (sinfo), and a job Slurm keeps
pending for a reason that never clears (PartitionConfig, ...) ends the run in one sentence.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths, pickle_load

from emkit.default_plugins.slurm_queue import (QueuedJob, check_request_fits, never_starts, never_starts_message,
                                                reason_in_words, sacct_states, squeue_jobs)
from emkit.errors import EmkitError
from emkit.execution.handles import DONE, FAILED, GONE, QUEUED, RUNNING, JobHandle, JobState, log_tail

log = logging.getLogger("emkit")

RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
                 "RESV_DEL_HOLD"}
# Interrupted: Slurm may requeue the job (PreemptMode=REQUEUE, JobRequeue=1); until the misses run out it is waited for
INTERRUPTED_STATES = {"PREEMPTED", "NODE_FAIL"}
# Consecutive polls with the job neither queued nor running and no result: a finished job's result
# file can lag behind squeue on a network filesystem, and a preempted job takes a moment to requeue
MISSES_BEFORE_GONE = 3


class UnitJob(submitit.helpers.Checkpointable):
    """What a Slurm job runs. As a Checkpointable, at its time limit or preemption submitit requeues it
    with the same arguments, and the unit picks up where its shard and training state are."""

    def __init__(self, spec_json: str):
        self.spec_json = spec_json

    def __call__(self) -> dict:
        from emkit.execution.job import UnitSpec, run_unit

        return run_unit(UnitSpec.from_json(self.spec_json))


def sbatch_parameters(settings) -> dict:
    """submitit's parameters for execution.slurm (one task, one node)."""
    from submitit.slurm.slurm import _convert_mem

    slurm = settings.slurm
    parameters = {"time": slurm.time_min, "cpus_per_task": slurm.cpus_per_job, "mem": _convert_mem(slurm.mem_gb),
                  "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": slurm.signal_before_end_s}
    if slurm.gpus_per_job:
        parameters["gpus_per_node"] = slurm.gpus_per_job
    for key in ("partition", "account", "qos"):
        if getattr(slurm, key):
            parameters[key] = getattr(slurm, key)
    if slurm.setup:
        parameters["setup"] = list(slurm.setup)
    if slurm.sbatch:
        parameters["additional_parameters"] = dict(slurm.sbatch)
    return parameters


def sbatch_script(settings, folder: Path, job_name: str, python: str) -> str:
    """The sbatch file submitit writes for a job, as the dry run shows it."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=f"{python} -u -m submitit.core._submit {folder}", folder=folder,
                               job_name=job_name, **sbatch_parameters(settings))


class SlurmExecutor:
    name = "slurm"
    in_process = False
    gpu_work_here = False  # the units run on the cluster's GPUs, not this machine's

    def __init__(self, settings, run_path: Path):
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise EmkitError('execution.executor = "slurm" needs Slurm\'s sbatch and squeue on PATH; run emkit on a '
                             'login node of the cluster, or use executor = "local".')
        check_request_fits(settings.slurm)  # before a job waits forever for a node that does not exist
        self.settings = settings
        self.slots = settings.slurm.max_jobs
        self.folder = Path(run_path).resolve() / "jobs" / "slurm" / "%j"
        self._executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=10,
                                                python=settings.slurm.python or None)
        self._executor.update_parameters(**sbatch_parameters(settings))
        self._misses: dict[str, int] = {}

    def describe(self) -> list[str]:
        return [f"executor slurm: one job per unit through submitit, at most {self.slots} in the queue at once"]

    def submit(self, unit_key: str, spec_json: str, attempt: int) -> JobHandle:
        self._executor.update_parameters(job_name=f"emkit-{unit_key}")
        try:
            job = self._executor.submit(UnitJob(spec_json))
        except submitit.core.utils.FailedJobError as exc:
            raise EmkitError(f"sbatch refused the job of unit {unit_key}: {str(exc).strip()[-500:]}; check "
                             f"[execution.slurm] (partition, account, gpus_per_job) against `sinfo`.") from None
        paths = JobPaths(self.folder, job_id=job.job_id, task_id=0)
        return JobHandle(unit_key, job.job_id, str(paths.stderr))

    def reattach(self, row: dict) -> JobHandle | None:
        job_id = row.get("job_id")
        if not job_id:
            return None
        paths = JobPaths(self.folder, job_id=job_id, task_id=0)
        return JobHandle(row["unit_key"], job_id, str(paths.stderr))

    def _queue(self) -> dict[str, QueuedJob]:
        """job id -> Slurm state and reason of this user's jobs squeue still knows (finished ones for MinJobAge)."""
        jobs = squeue_jobs()
        if jobs is None:
            raise EmkitError("squeue failed; is the Slurm controller up? The jobs already submitted are not lost: "
                             "run the same command again when it answers.")
        return jobs

    def poll(self, handles: list[JobHandle]) -> dict[str, JobState]:
        queue = self._queue() if handles else {}
        states, missing = {}, []
        for handle in handles:
            listed = queue.get(handle.job_id)
            slurm_state = listed.state if listed else ""
            result = JobPaths(self.folder, job_id=handle.job_id, task_id=0).result_pickle
            if slurm_state in QUEUED_STATES:
                self._misses.pop(handle.job_id, None)
                if never_starts(listed.reason):
                    subprocess.run(["scancel", handle.job_id], capture_output=True, timeout=60)
                    message = never_starts_message(handle.unit_key, handle.job_id, listed.reason, self.settings.slurm)
                    states[handle.job_id] = JobState(FAILED, message, cannot_start=True)
                else:
                    states[handle.job_id] = JobState(QUEUED, reason_in_words(listed.reason) or slurm_state)
            elif slurm_state in RUNNING_STATES and not result.exists():
                self._misses.pop(handle.job_id, None)
                states[handle.job_id] = JobState(RUNNING, "" if slurm_state == "RUNNING" else slurm_state)
            elif result.exists():
                states[handle.job_id] = _outcome(result, handle)
            else:  # interrupted (PREEMPTED, NODE_FAIL), ended (CANCELLED, ...) or no longer listed, with no result
                self._misses[handle.job_id] = self._misses.get(handle.job_id, 0) + 1
                missing.append(handle)
                waiting = "being requeued by Slurm" if slurm_state in INTERRUPTED_STATES else "unlisted"
                states[handle.job_id] = JobState(RUNNING, f"{slurm_state or 'not in squeue'}: {waiting}?")
        gone = [h for h in missing if self._misses[h.job_id] >= MISSES_BEFORE_GONE]
        accounting = sacct_states([h.job_id for h in gone])
        for handle in gone:
            known = accounting.get(handle.job_id, "")
            if known in QUEUED_STATES or known in RUNNING_STATES:  # squeue lost it for a moment; sacct has not
                continue
            slurm_state = queue[handle.job_id].state if handle.job_id in queue else ""
            self._misses.pop(handle.job_id, None)
            states[handle.job_id] = JobState(GONE, f"{slurm_state or known or 'no longer in squeue'}, no result\n"
                                                   f"{log_tail(handle.log_path)}")
        return states

    def stop(self, handles: list[JobHandle]) -> None:
        """Ctrl-C: the jobs stay in the queue; the next `emkit run` waits for them."""

    def stop_message(self, count: int) -> str:
        return (f"{count} Slurm jobs stay in the queue; run the same command again to pick them up (or scancel "
                f"them: their units resume from their saved state)")


def _outcome(result: Path, handle: JobHandle) -> JobState:
    try:
        outcome, value = pickle_load(result)
    except Exception as exc:  # a result file being written
        return JobState(RUNNING, f"result unreadable yet ({exc})")
    if outcome == "success":
        return JobState(DONE)
    return JobState(FAILED, f"{str(value).strip().splitlines()[-1] if value else 'failed'}\n{log_tail(handle.log_path)}")
