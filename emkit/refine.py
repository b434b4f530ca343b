"""`emkit refine RUN`: more checkpoints where EM changes fastest, trained, sampled and judged.

The steps come from ``--steps``, or from each run's strongest change point in its EM
trajectory (emkit.analysis.changepoints: the general questions where the run asks them, else
all): ``points`` checkpoints evenly inside the two checkpoints the jump lies between. They are
written into the run's config as ``checkpoints.refine`` and the ordinary pipeline does the
rest, which is why refining is resumable like `emkit run`: training starts from the kept
training state nearest before the new steps (training.keep_state; else from step 0, the same
steps on the same rows), only the new checkpoints are generated and judged, and the report's
trajectories gain the new points. A refine that was stopped is finished by the next
`emkit refine RUN` (or `emkit run` into the directory) before any new steps are chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emkit.errors import EmkitError
from emkit.rundir import saved_experiment_config

log = logging.getLogger("emkit")


@dataclass
class Refinement:
    run_key: str
    steps: list[int]  # the checkpoints to add
    reason: str


def parse_steps(text: str) -> list[int]:
    steps = []
    for part in text.replace(",", " ").split():
        if not part.isdigit() or int(part) < 1:
            raise EmkitError(f"--steps: {part!r} is not a step number; pass positive steps, e.g. --steps 12,15.")
        steps.append(int(part))
    if not steps:
        raise EmkitError("--steps is empty; pass the steps to add, e.g. --steps 12,15.")
    return sorted(set(steps))


def selected_runs(plan, names) -> list:
    if not names:
        return list(plan.runs)
    known = {run.key: run for run in plan.runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EmkitError(f"--run {unknown[0]}: no such training run here; the runs are {', '.join(known)}.")
    return [known[n] for n in names]


def unfinished(run_path: Path, plan) -> list[str]:
    """The runs whose added checkpoints are not all trained and sampled yet."""
    from emkit.execution.units import Unit, unit_done
    from emkit.store import Store

    refined = plan.config.checkpoints.refine
    store = Store(Path(run_path) / "emkit.sqlite")
    try:
        return [run.key for run in plan.runs if refined.get(run.key)
                and not unit_done(store, plan, Unit(run.key, "train", run.model.label, run.key))]
    finally:
        store.close()


def steps_between(low: int, high: int, points: int, existing) -> list[int]:
    """Up to ``points`` whole steps evenly inside (low, high), none of them already a checkpoint."""
    inside = np.unique(np.rint(np.linspace(low, high, points + 2)[1:-1]).astype(int))
    return [int(s) for s in inside if low < s < high and s not in existing]


def given(plan, runs, steps: list[int]) -> list[Refinement]:
    out = []
    for run in runs:
        late = [s for s in steps if s > run.schedule.total_steps]
        if late:
            raise EmkitError(f"--steps {late[0]}: run {run.key} trains for {run.schedule.total_steps} steps; "
                             f"pass steps up to that.")
        new = [s for s in steps if s not in run.schedule.steps]
        if new:
            out.append(Refinement(run.key, new, "asked for with --steps"))
    return out


def where_em_changes(run_path: Path, runs, points: int) -> list[Refinement]:
    """For each run, ``points`` steps inside its strongest change in EM on the headline questions."""
    from emkit.analysis import load_run

    tables = load_run(run_path, text=False)
    judge = tables.primary_judge
    changes = tables.change_points
    changes = changes[(changes["judge"] == judge) & (changes["scope"] == "run")] if len(changes) else changes
    out = []
    for run in runs:
        mine = changes[(changes["model"] == run.model.label) & (changes["domain"] == run.domain.name)
                       & (changes["seed"] == run.seed)] if len(changes) else changes
        if len(mine) and (mine["questions"] == "general").any():
            mine = mine[mine["questions"] == "general"]
        elif len(mine):
            mine = mine[mine["questions"] == "all"]
        if not len(mine):
            log.info("refine %s: no change in EM to look closer at (no answers counted, or all alike)", run.key)
            continue
        best = mine.assign(_order=~mine["significant"], _size=-mine["jump"].abs()).sort_values(
            ["_order", "p_value", "_size"]).iloc[0]
        low, high = int(best["step_before"]), int(best["step_after"])
        new = steps_between(low, high, points, set(run.schedule.steps))
        sure = (f"p = {best['p_value']:.3g}, {best['p_adjusted']:.3g} adjusted for the report's "
                f"{int(best['trajectories_tested'])} trajectories" if best["significant"]
                else f"p = {best['p_value']:.3g} ({best['p_adjusted']:.3g} adjusted), not significant: the strongest "
                     f"split there is")
        reason = (f"EM on the {best['questions']} questions goes from {best['em_before']:.0%} to "
                  f"{best['em_after']:.0%} between steps {low} and {high} ({sure})")
        if not new:
            log.info("refine %s: %s, and no step lies between them", run.key, reason)
            continue
        out.append(Refinement(run.key, new, reason))
    return out


def with_refinements(config, refinements: list[Refinement]):
    refine = {key: list(steps) for key, steps in config.checkpoints.refine.items()}
    for item in refinements:
        refine[item.run_key] = sorted(set(refine.get(item.run_key, [])) | set(item.steps))
    return config.model_copy(update={"checkpoints": config.checkpoints.model_copy(update={"refine": refine})})


def config_lines(config, run_path: Path, registry) -> list[str]:
    """What running a run directory's saved config means: its models, where it runs, what code it lets run."""
    execution = config.execution
    lines = [f"refine runs the config saved in {Path(run_path) / 'config.toml'}:",
             f"  models {', '.join(f'{m.label}={m.id}' for m in config.models)}; domains {', '.join(config.domains)}; "
             f"seeds {', '.join(map(str, config.seeds))}",
             f"  trainer {config.training.trainer}, generator {config.evaluation.generator}, executor "
             f"{execution.executor}; judges {', '.join(config.judging.judges)}"
             + (f" (fallback {', '.join(config.judging.fallback)})" if config.judging.fallback else "")]
    if config.trust_remote_code:
        lines.append("  trust_remote_code = true: code shipped with these models runs here")
    setup = registry.get("executors", execution.executor).setup_lines(execution)
    if setup:
        lines.append(f"  shell lines each {execution.executor} job runs first:")
        lines += [f"    {line}" for line in setup]
    return lines


def refine(run_path: Path, registry, *, steps: list[int] | None = None, run_names=(), points: int = 3,
           dry_run: bool = False) -> list[Refinement]:
    """Choose the checkpoints to add, then train, sample, judge and report them; return what was added
    (empty when an earlier refine was finished instead, or nothing was found to add)."""
    from emkit.plan import build_plan
    from emkit.runner import run_experiment

    run_path = Path(run_path)
    config = saved_experiment_config(run_path)
    for line in config_lines(config, run_path, registry):  # the saved config runs as it is: shown before anything runs
        log.info("%s", line)
    plan = build_plan(config, registry, need_datasets=False)
    runs = selected_runs(plan, run_names)
    pending = unfinished(run_path, plan)
    if pending and dry_run:
        log.info("refine: the checkpoints added earlier to %s are not all made yet; `emkit refine %s` finishes "
                 "them first", ", ".join(pending), run_path)
    elif pending:
        log.info("refine: finishing the checkpoints added earlier to %s before choosing new ones", ", ".join(pending))
        run_experiment(config, run_path, registry)
        if steps is None:
            return []
    chosen = given(plan, runs, steps) if steps is not None else where_em_changes(run_path, runs, points)
    for item in chosen if not dry_run else ():
        log.info("refine %s: adding steps %s: %s", item.run_key, ", ".join(map(str, item.steps)), item.reason)
    if not chosen:
        log.info("refine: nothing to add")
        return chosen
    if not dry_run:
        run_experiment(with_refinements(config, chosen), run_path, registry)
    return chosen
