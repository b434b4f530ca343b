"""Units of GPU work: a training run and the generation of its checkpoints, or a model's baseline.

A unit is done when the store holds all of its checkpoints and answers; nothing else about it
needs remembering, so a unit can be started again anywhere and do only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from emkit.plan import BASE, Plan, safe_name


@dataclass(frozen=True)
class Unit:
    key: str
    kind: str  # "train" or "baseline"
    model_label: str
    run_key: str  # BASE for a baseline

    def describe(self, plan: Plan) -> str:
        answers = sum(1 for _ in unit_answers(plan, self))
        if self.kind == "baseline":
            return f"baseline {self.model_label}: {answers:,} answers at step 0"
        run = plan_run(plan, self)
        return (f"train {self.key}: {run.schedule.total_steps:,} steps, {len(run.schedule.steps)} checkpoints, "
                f"{answers:,} answers")


@dataclass(frozen=True)
class UnitLoad:
    """What a unit puts on a GPU, for an executor that runs several units on one (plugins/gpu_shares.py)."""
    model_label: str
    kind: str
    size_b: float | None  # the model's parameters in billions, where the config says
    load_in_4bit: bool


def unit_load(plan: Plan, unit: Unit) -> UnitLoad:
    model = next(m for m in plan.config.models if m.label == unit.model_label)
    return UnitLoad(unit.model_label, unit.kind, model.size_b, plan.config.training.load_in_4bit)


def baseline_key(model_label: str) -> str:
    return f"{BASE}-{safe_name(model_label)}"


def plan_units(plan: Plan) -> list[Unit]:
    """Training runs first (they take longest), then each model's baseline."""
    units = [Unit(run.key, "train", run.model.label, run.key) for run in plan.runs]
    units += [Unit(baseline_key(b.model.label), "baseline", b.model.label, BASE) for b in plan.baselines]
    return units


def plan_run(plan: Plan, unit: Unit):
    return next(run for run in plan.runs if run.key == unit.run_key)


def unit_answers(plan: Plan, unit: Unit):
    for answer in plan.answers():
        if answer.run_key == unit.run_key and answer.model_label == unit.model_label:
            yield answer


def unit_done(store, plan: Plan, unit: Unit) -> bool:
    if unit.kind == "train":
        from emkit.stages.train import pending_checkpoints

        if pending_checkpoints(store, plan_run(plan, unit))[1]:
            return False
    planned = [a.answer_id for a in unit_answers(plan, unit)]
    return len(store.existing_answers(planned)) == len(planned)


def baseline_ready(store, plan: Plan, unit: Unit) -> bool:
    """A baseline is generated on the base its model's runs are trained on (emkit.models.base_weights):
    it waits until one of them has recorded that base, unless the model has no training runs."""
    if unit.kind != "baseline" or not any(run.model.label == unit.model_label for run in plan.runs):
        return True
    row = store.conn.execute("SELECT 1 FROM training_runs WHERE model_label = ? AND base_weights IS NOT NULL",
                             (unit.model_label,)).fetchone()
    return row is not None


def do_unit(run_dir, plan: Plan, unit: Unit, registry, progress) -> tuple[int, int]:
    """Train what the unit misses, then generate its missing answers: (checkpoints, answers) made."""
    from emkit.stages.generate import generate_stage
    from emkit.stages.train import train_run, trainer_for

    saved = 0
    if unit.kind == "train":
        saved = train_run(run_dir, plan, plan_run(plan, unit), trainer_for(plan, registry), progress)
    answers = generate_stage(run_dir, plan, registry, progress, answers=unit_answers(plan, unit))
    return saved, answers
