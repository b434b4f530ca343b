"""Stage 1, train: a LoRA adapter at every planned checkpoint of every training run.

Runs whose checkpoints are all in the store are skipped without loading anything; a run
with some checkpoints missing is handed to the trainer with those steps marked done, and
the trainer resumes from its last saved state.
"""

from __future__ import annotations

import logging
import shutil

from emkit.models.base_weights import BaseWeights, record_base
from emkit.datasets import file_sha256, load_chats
from emkit.errors import EmkitError
from emkit.interfaces import TrainingJob
from emkit.models import resolve_model_source
from emkit.plan import Plan
from emkit.training.isolated import train_in_child
from emkit.training.step_log import read_steps

log = logging.getLogger("emkit")


def pending_checkpoints(store, run) -> tuple[dict[int, object], list[int]]:
    """The checkpoints recorded with their adapter on disk, and the steps still to train."""
    done = {step: path for step, path in store.checkpoints(run.key).items()
            if (path / "adapter_config.json").is_file()}
    return done, [s for s in run.schedule.steps if s not in done]


def check_dataset_unchanged(store, run) -> str:
    """The dataset's sha256, which must be the one the run was first trained on: a resume on an
    edited file would give adapters trained on two datasets under one name."""
    digest = file_sha256(run.dataset.path)
    row = store.conn.execute("SELECT dataset_sha256, dataset_path FROM training_runs WHERE run_key = ?",
                             (run.key,)).fetchone()
    if row is not None and row["dataset_sha256"] and row["dataset_sha256"] != digest:
        raise EmkitError(
            f"{run.dataset.path} has changed since run {run.key} started training on {row['dataset_path']} "
            f"(sha256 {row['dataset_sha256'][:12]}... then, {digest[:12]}... now); put the original file back, "
            f"or pass a new --out directory to train on this one."
        )
    return digest


def trainer_for(plan: Plan, registry):
    return registry.get("trainers", plan.config.training.trainer)


def refuse_unavailable_trainer(store, plan: Plan, trainer) -> None:
    """Before anything starts: a trainer that cannot run here (a package missing) is refused."""
    reason = getattr(trainer, "unavailable_reason", lambda: None)()
    if reason and any(pending_checkpoints(store, run)[1] for run in plan.runs):
        raise EmkitError(reason)


def record_runs(store, plan: Plan, trainer) -> None:
    """Every model and training run of the plan in the store, each run's dataset checked unchanged."""
    for run in plan.runs:
        store.record_model(run.model.label, run.model.id, run.model.size_b)
        store.record_run(run, check_dataset_unchanged(store, run), trainer.name)
    for model in plan.config.models:
        store.record_model(model.label, model.id, model.size_b)


def train_run(run_dir, plan: Plan, run, trainer, progress) -> int:
    """Train one run's missing checkpoints, resuming from its saved state; return how many were saved."""
    store = run_dir.store
    done, pending = pending_checkpoints(store, run)
    if not pending:
        return 0
    _warn_row_count(run, plan.config.data.max_rows)
    chats = run.dataset.chats or load_chats(run.dataset.path, plan.config.data.max_rows)
    log.info("train %s: %d rows, %d steps, checkpoints %s (%d to save)", run.key, len(chats),
             run.schedule.total_steps, list(run.schedule.steps), len(pending))
    job = TrainingJob(
        run_key=run.key,
        model_id=resolve_model_source(run.model.id),
        model_label=run.model.label,
        dataset_path=run.dataset.path,
        chats=chats,
        settings=plan.config.training,
        seed=run.seed,
        steps_per_epoch=run.schedule.steps_per_epoch,
        total_steps=run.schedule.total_steps,
        checkpoint_steps=list(run.schedule.steps),
        adapters_dir=run_dir.adapters / run.key,
        state_dir=run_dir.train_state / run.key,
        done_steps=frozenset(done),
        trust_remote_code=plan.config.trust_remote_code,
    )
    job.adapters_dir.mkdir(parents=True, exist_ok=True)
    for stale in job.adapters_dir.glob(".*.tmp-*"):  # half-saved by a process that was killed
        shutil.rmtree(stale, ignore_errors=True)
    saved = 0
    steps_stored = max((row["step"] for row in store.train_steps(run.key)), default=0)

    def on_checkpoint(step, path, metrics):
        nonlocal saved, steps_stored
        if metrics.get("base_weights"):  # refused here if a resumed run loaded other weights
            record_base(store, run.key, BaseWeights.from_json(metrics["base_weights"]))
        # the trainer's step log (emkit.training.step_log; a third-party trainer may keep none)
        store.add_train_steps(run.key, read_steps(job.state_dir, after=steps_stored, upto=step))
        steps_stored = max(steps_stored, step)
        store.add_checkpoint(run.key, step, path, metrics.get("train_loss"), metrics.get("seconds"))
        saved += 1
        log.info("checkpoint %s step %d saved (train loss %.4f)", run.key, step,
                 metrics.get("train_loss") or float("nan"))

    if getattr(trainer, "isolated", False):  # it patches the process it runs in (Unsloth)
        train_in_child(trainer.name, job, on_checkpoint, progress)
    else:
        trainer.train(job, on_checkpoint, progress)
    _, still_missing = pending_checkpoints(store, run)
    if still_missing:
        raise EmkitError(
            f"Trainer '{trainer.name}' finished run {run.key} without saving steps {still_missing}; "
            f"this is a bug in that trainer plugin."
        )
    store.finish_run(run.key)
    return saved


def train_stage(run_dir, plan: Plan, registry, progress) -> int:
    """Train what is missing, one run after another; return how many checkpoints were saved."""
    trainer = trainer_for(plan, registry)
    refuse_unavailable_trainer(run_dir.store, plan, trainer)
    record_runs(run_dir.store, plan, trainer)
    return sum(train_run(run_dir, plan, run, trainer, progress) for run in plan.runs)


def _warn_row_count(run, max_rows: int) -> None:
    published = run.domain.published_rows
    if not max_rows and run.dataset.source == "file" and published and run.dataset.path.name == run.domain.dataset_file \
            and run.dataset.rows != published:
        log.warning("%s has %d rows but the papers published %d; check that it is the right file.",
                    run.dataset.path, run.dataset.rows, published)
