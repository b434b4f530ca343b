"""`emkit status RUN`: where each unit of a run's GPU work is.

Read from the run's store (the units table the coordinator keeps, and what is stored), and,
for jobs the store says are queued or running, from their executor as they are now (squeue,
the worker's process): the store may be stale when no emkit process is watching.
"""

from __future__ import annotations

from pathlib import Path


def _jobs_now(rows: dict, registry) -> dict[str, str | None]:
    """job id -> what its executor says of it now ("" running, None gone), for the jobs the store says are
    queued or running; executors no longer installed say nothing."""
    by_executor: dict[str, list[dict]] = {}
    for row in rows.values():
        if row.get("state") in ("queued", "running") and row.get("job_id") and row.get("executor"):
            by_executor.setdefault(row["executor"], []).append(row)
    now: dict[str, str | None] = {}
    for name, executor_rows in by_executor.items():
        if name in registry.entries["executors"]:
            now.update(registry.get("executors", name).jobs_now(executor_rows))
    return now


def unit_status(run_path: Path, registry) -> list[dict]:
    from emkit.execution.units import plan_run, plan_units, unit_answers
    from emkit.plan import build_plan
    from emkit.rundir import saved_experiment_config
    from emkit.store import STORE_FILE, Store

    run_path = Path(run_path)
    config = saved_experiment_config(run_path)
    plan = build_plan(config, registry, need_datasets=False)
    store = Store(run_path / STORE_FILE)
    try:
        rows = store.units()
        now = _jobs_now(rows, registry)
        out = []
        for unit in plan_units(plan):
            row = rows.get(unit.key) or {}
            planned = [a.answer_id for a in unit_answers(plan, unit)]
            answers = len(store.existing_answers(planned))
            checkpoints = planned_checkpoints = 0
            if unit.kind == "train":
                run = plan_run(plan, unit)
                planned_checkpoints = len(run.schedule.steps)
                checkpoints = len(set(store.checkpoints(unit.key)) & set(run.schedule.steps))
            complete = answers == len(planned) and checkpoints == planned_checkpoints
            state = row.get("state") or ("done" if complete else "waiting")
            job_now = now.get(row.get("job_id") or "", "")
            if state in ("queued", "running") and job_now is None:
                state = "stopped"  # its job is gone: the next `emkit run` resumes the unit
            out.append({
                "unit": unit.key, "kind": unit.kind, "state": state, "executor": row.get("executor"),
                "job_id": row.get("job_id"), "job_now": job_now or None,
                "attempts": row.get("attempts") or 0, "checkpoints": [checkpoints, planned_checkpoints],
                "answers": [answers, len(planned)], "gpu_seconds": row.get("gpu_seconds"),
                "log": row.get("log_path"), "detail": row.get("detail") if state in ("failed", "waiting", "stopped") else None,
                "updated_at": row.get("updated_at"),
            })
        return out
    finally:
        store.close()


def fallback_notes(run_path: Path) -> list[str]:
    """Answers a fallback judge scored in their judge's place, and how to have their judge score them."""
    from emkit.rundir import saved_experiment_config
    from emkit.stages.judge import fallback_lines
    from emkit.store import STORE_FILE, Store

    config = saved_experiment_config(run_path)
    store = Store(Path(run_path) / STORE_FILE)
    try:
        return fallback_lines(store, config.judging)
    finally:
        store.close()


def status_lines(run_path: Path, units: list[dict]) -> list[str]:
    from collections import Counter

    from emkit.progress import format_duration

    counts = Counter(u["state"] for u in units)
    lines = [f"{run_path}: {len(units)} units; " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    width = max((len(u["unit"]) for u in units), default=0)
    for u in units:
        job = f"job {u['job_id']}" if u["job_id"] else ""
        if u["job_now"]:
            job += f" ({u['job_now']})"
        parts = [f"  {u['state']:<8} {u['unit']:<{width}}", job]
        if u["attempts"]:
            parts.append(f"attempt {u['attempts']}")
        if u["kind"] == "train":
            parts.append(f"{u['checkpoints'][0]}/{u['checkpoints'][1]} checkpoints")
        parts.append(f"{u['answers'][0]:,}/{u['answers'][1]:,} answers")
        if u["gpu_seconds"]:
            parts.append(f"GPU {format_duration(u['gpu_seconds'])}")
        lines.append("  ".join(p for p in parts if p))
        if u["detail"]:
            lines += [f"      | {line}" for line in u["detail"].splitlines()[-15:]]
            if u["log"]:
                lines.append(f"      log: {u['log']}")
    return lines
