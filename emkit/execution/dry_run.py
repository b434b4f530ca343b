"""What `emkit run --dry-run` says about execution: the jobs, and what the executor plugin adds
(for Slurm, the sbatch file)."""

from __future__ import annotations

from pathlib import Path


def execution_plan(plan, out_dir: Path, registry) -> dict:
    from emkit.execution.units import plan_units

    settings = plan.config.execution
    backend = registry.get("executors", settings.executor)
    return {"executor": settings.executor,
            "jobs": [{"unit": u.key, "kind": u.kind, "work": u.describe(plan)} for u in plan_units(plan)],
            **backend.plan(settings, out_dir)}


def execution_lines(data: dict) -> list[str]:
    lines = [f"  execution: {data['executor']}, {data['how']}"]
    lines += [f"    job {i}: {job['work']}" for i, job in enumerate(data["jobs"], 1)]
    lines += [f"  {line}" for line in data.get("details") or []]
    return lines
