"""What `emkit run --dry-run` says about execution: the jobs, and for Slurm the sbatch file."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def execution_plan(plan, out_dir: Path) -> dict:
    from emkit.execution.units import plan_units

    settings = plan.config.execution
    units = plan_units(plan)
    data = {"executor": settings.executor,
            "jobs": [{"unit": u.key, "kind": u.kind, "work": u.describe(plan)} for u in units]}
    if settings.executor == "local":
        data["how"] = "one unit after another in this process"
    elif settings.executor == "local-gpus":
        from emkit.execution.local_gpus import visible_gpus

        gpus = list(settings.gpus) or visible_gpus()
        data["gpus"] = gpus
        data["how"] = (f"one unit per GPU at once, on {len(gpus)} GPUs ({', '.join(gpus)})" if gpus else
                       "one unit per GPU at once; no GPU is visible here, so this run would be refused")
    else:
        data["how"] = (f"one Slurm job per unit through submitit, at most {settings.slurm.max_jobs} in the queue; "
                       f"baselines start once their model's base weights are known")
        try:
            from emkit.execution.slurm import sbatch_script
        except ImportError:
            data["sbatch"] = None
            data["how"] += " (submitit is not installed: pip install 'emkit[slurm]')"
        else:
            python = settings.slurm.python or shlex.quote(sys.executable)
            folder = Path(out_dir).resolve() / "jobs" / "slurm" / "%j"
            data["sbatch"] = sbatch_script(settings, folder, "emkit-UNIT", python)
    return data


def execution_lines(data: dict) -> list[str]:
    lines = [f"  execution: {data['executor']}, {data['how']}"]
    lines += [f"    job {i}: {job['work']}" for i, job in enumerate(data["jobs"], 1)]
    if data.get("sbatch"):
        lines.append("  each job's sbatch file (UNIT is the unit's key):")
        lines += [f"    {line}" for line in data["sbatch"].splitlines() if line.strip()]
    return lines
