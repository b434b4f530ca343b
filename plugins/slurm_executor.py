"""The `slurm` executor: one Slurm job per unit, through submitit (emkit.default_plugins.slurm_jobs).

This module is what the plugin registry loads: it imports neither submitit nor anything heavy,
so `emkit --help` and `emkit status` stay fast where submitit is not installed.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from emkit.hookspecs import hookimpl


class SlurmBackend:
    name = "slurm"
    description = "one Slurm job per unit through submitit (pip install 'emkit[slurm]'), watched from a login node"

    def create(self, settings, run_path):
        try:
            from emkit.default_plugins.slurm_jobs import SlurmExecutor
        except ImportError as exc:
            from emkit.errors import EmkitError

            raise EmkitError(f'execution.executor = "slurm" needs submitit ({exc}); pip install '
                             f"'emkit[slurm]'.") from None
        return SlurmExecutor(settings, run_path)

    def plan(self, settings, out_dir) -> dict:
        data = {"how": f"one Slurm job per unit through submitit, at most {settings.slurm.max_jobs} in the queue; "
                       f"baselines start once their model's base weights are known"}
        try:
            from emkit.default_plugins.slurm_jobs import sbatch_script
        except ImportError:
            data["sbatch"] = None
            data["how"] += " (submitit is not installed: pip install 'emkit[slurm]')"
            return data
        python = settings.slurm.python or shlex.quote(sys.executable)
        folder = Path(out_dir).resolve() / "jobs" / "slurm" / "%j"
        data["sbatch"] = sbatch_script(settings, folder, "emkit-UNIT", python)
        data["details"] = ["each job's sbatch file (UNIT is the unit's key):"] + [
            f"  {line}" for line in data["sbatch"].splitlines() if line.strip()]
        return data

    def jobs_now(self, rows: list[dict]) -> dict[str, str | None]:
        """What squeue says now of the jobs it lists, with the reason in words while one is pending; a job it
        no longer lists is left out (it may have finished: the next `emkit run` reads its result)."""
        job_ids = [row["job_id"] for row in rows if row.get("job_id")]
        if not job_ids or shutil.which("squeue") is None:
            return {}
        from emkit.default_plugins.slurm_queue import reason_in_words, squeue_jobs

        jobs = squeue_jobs(user="") or {}
        return {job_id: jobs[job_id].state + (f": {reason_in_words(jobs[job_id].reason)}"
                                              if jobs[job_id].state == "PENDING" and jobs[job_id].reason else "")
                + " in squeue now"
                for job_id in job_ids if job_id in jobs}

    def setup_lines(self, settings) -> list[str]:
        return list(settings.slurm.setup)


@hookimpl
def register_executors(register):
    register(SlurmBackend())
