"""`emkit intervene RUN`: generate a checkpoint's answers again with a direction ablated or added, and judge them.

The causal test of a direction (Soligo, Turner et al. 2025): if the final checkpoint's
misalignment direction carries its misalignment, projecting it out of the residual stream
lowers the EM rate, and adding it to the base model raises it. Every answer is asked again in
the slot of a plain answer of the run's plan (same question, paraphrase and sample) with that
answer's sampling seed, so the two arms differ by the intervention alone (with the hf generator,
a zero intervention gives the plain answer back token for token), and the EM rates with and
without are compared answer slot by answer slot (emkit.analysis.interventions).

Answers are stored under the intervention's key, which holds a digest of the vectors used, so a
stopped command resumes, and a direction found again from other answers is another intervention.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from emkit.errors import EmkitError

log = logging.getLogger("emkit")


@dataclass(frozen=True)
class Request:
    """What to do to which runs: ``kind`` "ablate" or "steer" (with ``scale``); ``layers`` (None: the
    direction's best layer by held-out AUROC); ``direction`` "RUN_KEY@STEP" (None: each run's own final
    checkpoint's); ``at`` the step to generate at (None: each run's final checkpoint; 0: the base model)."""

    kind: str
    scale: float = 1.0
    layers: tuple[int, ...] | None = None
    direction: str | None = None
    at: int | None = None
    runs: tuple[str, ...] = ()
    judge: str | None = None  # whose verdicts made the direction (default: the run's primary judge)


def intervention_answer_id(plain_answer_id: str, intervention_key: str, run_key: str) -> str:
    """The run is in the key too: at step 0 two runs of one model fill the same baseline slots, each with its
    own answers (the same direction given to both, to test transfer, is still two sets of answers)."""
    return hashlib.sha256(f"{plain_answer_id}\x1f{intervention_key}\x1f{run_key}".encode()).hexdigest()[:24]


def parse_direction(text: str) -> tuple[str, int]:
    run_key, sep, step = text.rpartition("@")
    if not sep or not run_key or not step.isdigit():
        raise EmkitError(f"--direction {text!r}: give a training run and a checkpoint as RUN_KEY@STEP, e.g. "
                         f"medical-s0@1320 (the run keys are in `emkit status RUN`).")
    return run_key, int(step)


def choose_intervention(store, request: Request, run, judge: str, final_step: int, models: dict):
    """The Intervention the request asks for in ``run`` (a TrainingRunPlan), read from the stored directions."""
    from emkit.directions.hooks import Intervention

    source_run, source_step = parse_direction(request.direction) if request.direction else (run.key, final_step)
    if source_run not in models:
        raise EmkitError(f"--direction {source_run}@{source_step}: the run has no training run {source_run!r}; its "
                         f"runs are {', '.join(sorted(models))}.")
    if models[source_run] != run.model.label:
        raise EmkitError(f"--direction {source_run}@{source_step} is a direction of {models[source_run]}, and "
                         f"{run.key} is a run of {run.model.label}: two models' residual streams are different "
                         f"spaces. Pass --run to pick runs of {models[source_run]}.")
    stored = store.direction_layers(source_run, source_step, judge)
    if not stored:
        if store.direction_steps(source_run, judge):
            raise EmkitError(f"{source_run} has no direction at step {source_step} under judge {judge}: `emkit "
                             f"directions` found none at its final checkpoint (too few misaligned or aligned answers "
                             f"for --min-answers), so it made no timeline; lower --min-answers, or pass --direction "
                             f"RUN_KEY@STEP of another run.")
        raise EmkitError(f"No direction of {source_run} under judge {judge} is stored: run `emkit directions RUN"
                         f"{' --judge ' + judge if request.judge else ''}` first (it finds one at every checkpoint "
                         f"with enough answers).")
    usable = {layer: (vector, auroc) for layer, (vector, auroc) in stored.items() if vector is not None}
    if not usable:
        raise EmkitError(f"{source_run} at step {source_step} has too few misaligned or aligned answers for a "
                         f"direction (see `emkit directions`); pass --direction RUN_KEY@STEP to use another "
                         f"checkpoint's.")
    if request.layers:
        missing = [layer for layer in request.layers if layer not in usable]
        if missing:
            raise EmkitError(f"--layers {','.join(map(str, missing))}: {source_run} at step {source_step} has a "
                             f"direction at layers {', '.join(map(str, sorted(usable)))} only.")
        layers = list(request.layers)
    else:
        scored = [(auroc, layer) for layer, (_, auroc) in usable.items() if auroc is not None]
        if not scored:
            raise EmkitError(f"{source_run} at step {source_step} has no held-out AUROC to choose a layer by; "
                             f"pass --layers.")
        layers = [max(scored, key=lambda pair: (pair[0], -pair[1]))[1]]  # ties: the first, as `emkit directions` says
    import numpy as np
    import torch

    vectors = {layer: torch.from_numpy(np.frombuffer(usable[layer][0], dtype=np.float32).copy()) for layer in layers}
    return Intervention(request.kind, vectors, request.scale, source=f"{source_run}@{source_step}")


def run_interventions(run_path: Path, request: Request, registry, progress,
                      generator_name: str | None = None) -> list[str]:
    """Generate and judge every chosen run's answers under the intervention; returns a line per run."""
    from emkit.config import apply_overrides, config_from_dict
    from emkit.plan import build_plan
    from emkit.stages.judge import ready_judge_pool
    from emkit.rundir import RunDirectory, read_saved_config, saved_config_path

    run_path = Path(run_path)
    saved = read_saved_config(run_path) if (run_path / "emkit.sqlite").is_file() else None
    if saved is None:
        raise EmkitError(f"{run_path} is not an emkit run directory (no emkit.sqlite and config.toml); interventions "
                         f"need the checkpoints and directions of an `emkit run`: pass its --out directory.")
    if generator_name:
        saved = apply_overrides(saved, generator=generator_name)
    config = config_from_dict(saved, str(saved_config_path(run_path)))
    plan = build_plan(config, registry, need_datasets=False)
    generator = registry.get("generators", config.evaluation.generator)
    if not getattr(generator, "supports_interventions", False):
        raise EmkitError(f"The {generator.name} generator cannot generate with a direction ablated or added (it does "
                         f"not declare supports_interventions); pass --generator hf.")
    runs = [run for run in plan.runs if not request.runs or run.key in request.runs]
    unknown = sorted(set(request.runs) - {run.key for run in plan.runs})
    if unknown:
        raise EmkitError(f"--run {', '.join(unknown)}: not a training run of {run_path}; its runs are "
                         f"{', '.join(run.key for run in plan.runs)}.")
    if request.direction:
        parse_direction(request.direction)  # its form, before anything is read
    judge = request.judge or _primary_judge(run_path)
    done, lines = [], []
    with RunDirectory(run_path).attach() as run_dir:
        store = run_dir.store
        models = {run.key: run.model.label for run in plan.runs}
        chosen = []  # every run's choice made, and each bad input refused, before any model is loaded
        for run in runs:
            checkpoints = store.checkpoints(run.key)
            if not checkpoints:
                lines.append(f"{run.key}: no checkpoint trained yet")
                continue
            final = max(checkpoints)
            at = final if request.at is None else request.at
            if at != 0 and at not in checkpoints:
                raise EmkitError(f"--at {at}: {run.key} has checkpoints at steps "
                                 f"{', '.join(map(str, sorted(checkpoints)))} (and 0, the base model).")
            chosen.append((run, at, None if at == 0 else checkpoints[at],
                           choose_intervention(store, request, run, judge, final, models)))
        pool = ready_judge_pool(config, registry, with_models=True) if chosen else None
        for run, at, adapter, intervention in chosen:
            slots = {intervention_answer_id(a.answer_id, intervention.key, run.key): a
                     for a in plain_answers(plan, run, at)}  # each new answer's id -> the plain answer's slot
            _generate(store, plan, run, at, adapter, intervention, slots, generator, progress)
            _judge(store, plan, run, at, intervention, slots, pool, progress, judge)
            done.append((run.key, at, intervention.key))
    # read back once the store is closed: the tables read it as any reader does
    return lines + _lines(run_path, done, judge)


def _primary_judge(run_path: Path) -> str:
    from emkit.analysis import load_run

    judge = load_run(run_path, text=False).primary_judge
    if not judge:
        raise EmkitError(f"No answer in {run_path} is judged yet: run `emkit run` to the end, then "
                         f"`emkit directions`, first.")
    return judge


def plain_answers(plan, run, step: int) -> list:
    """The plan's answers in the checkpoint's slots: at step 0, the baseline's to the run's question sets."""
    from emkit.plan import BASE

    if step == 0:
        return [a for a in plan.answers(only={(run.model.label, BASE, 0)}) if a.question_set in run.question_sets]
    return list(plan.answers(only={(run.model.label, run.key, step)}))


def _generate(store, plan, run, step, adapter, intervention, slots, generator, progress) -> int:
    from emkit.interfaces import CheckpointRequests, GenerationJob, GenerationRequest
    from emkit.models import resolve_model_source
    from emkit.models.base_weights import base_for_model, configured_base
    from emkit.stages.generate import messages_for

    key = intervention.key
    store.record_intervention(key, intervention.kind, intervention.scale, intervention.layers, intervention.source,
                              intervention.vector_bytes())
    done = store.existing_intervention_answers(slots)
    pending = {answer_id: plain for answer_id, plain in slots.items() if answer_id not in done}
    if not pending:
        return 0
    # the plain answer's own seed: with and without differ by the intervention, not by the sampling noise
    requests = [GenerationRequest(answer_id, messages_for(plain), plain.sample_seed) for answer_id, plain in pending.items()]
    source = resolve_model_source(run.model.id)
    config = plan.config
    base = base_for_model(store, run.model.label, configured_base(source, config.eval_load_in_4bit),
                          config.evaluation.load_in_4bit)
    log.info("intervene %s at step %d: %s, %d answers", run.key, step, key, len(requests))
    job = GenerationJob(model_id=source, model_label=run.model.label,
                        checkpoints=[CheckpointRequests(step=step, adapter_path=adapter, requests=requests)],
                        settings=config.evaluation, load_in_4bit=base.quantization is not None,
                        trust_remote_code=config.trust_remote_code, base=base, intervention=intervention)

    def on_answer(request, generated):
        store.add_intervention_answer(request.answer_id, key, run.key, pending[request.answer_id], generated.text,
                                      generated.n_tokens, generated.finish_reason, generator.name)

    generator.generate(job, on_answer, progress)
    return len(requests)


def judges_of(config, direction_judge: str) -> list[str]:
    """The run's judges, and the one whose verdicts made the direction where it is another (added by `emkit
    rejudge`): the comparison is read under that judge, so it scores both arms."""
    return list(dict.fromkeys(config.judging.judges + [direction_judge]))


def _judge(store, plan, run, step, intervention, slots, pool, progress, direction_judge: str):
    from emkit.prompt_library import PromptLibrary
    from emkit.stages.judge import JudgeTally, answer_targets, judge_targets, question_index

    key = intervention.key
    metrics = plan.metrics_by_run()[(run.model.label, run.key)]
    questions, library = question_index(plan), PromptLibrary(plan.domains)

    def targets_for(names):
        targets = []
        for answer_id, text, scored in store.unjudged_intervention_answers(names, key, run.key, step, metrics):
            if answer_id in slots:  # an answer of a question the plan no longer asks is left alone
                targets += answer_targets(answer_id, slots[answer_id], text, metrics, scored, questions, library)
        return targets

    tallies = judge_targets(plan, store, judges_of(plan.config, direction_judge), pool, progress, targets_for)
    for tally in JudgeTally.per_judge(tallies):
        log.info("%s", tally.line())


def _lines(run_path: Path, done: list[tuple[str, int, str]], judge: str) -> list[str]:
    """"ablating the step-N direction at layer L takes step M's EM from X% to Y%", from the tables."""
    from emkit.analysis import load_run

    table = load_run(run_path, text=False).interventions if done else None
    lines = []
    for run_key, step, key in done:
        rows = table[(table["run_key"] == run_key) & (table["step"] == step) & (table["intervention"] == key)
                     & (table["judge"] == judge)]
        if rows.empty:
            lines.append(f"{run_key}: {key} at step {step}: no answer judged by {judge} in both arms")
            continue
        row = rows[rows["questions"] == ("general" if (rows["questions"] == "general").any() else "all")].iloc[0]
        lines.append(f"{run_key}: {describe(row)}")
    return lines


def _pct(value) -> str:
    return "n/a" if value != value else f"{value * 100:.1f}%"


def describe(row) -> str:
    """One sentence for an interventions row (emkit.analysis.interventions)."""
    layers = ",".join(str(layer) for layer in row["layers"])
    source_run, _, source_step = str(row["source"]).rpartition("@")
    what = ("ablating" if row["kind"] == "ablate" else f"adding {row['scale']:g} x") + \
        f" {source_run}'s step-{source_step} direction at layer{'s' if ',' in layers else ''} {layers}"
    where = "the base model's" if row["step"] == 0 else f"step {row['step']}'s"
    return (f"{what} takes {where} EM ({row['questions']} questions, judge {row['judge']}) from "
            f"{_pct(row['em_without'])} [{_pct(row['low_without'])}, {_pct(row['high_without'])}] to "
            f"{_pct(row['em_with'])} [{_pct(row['low_with'])}, {_pct(row['high_with'])}], a change of "
            f"{row['change'] * 100:+.1f} points [{row['change_low'] * 100:+.1f}, {row['change_high'] * 100:+.1f}] "
            f"over {int(row['n_without'])} and {int(row['n_with'])} counted answers; mean coherence "
            f"{row['coherent_without']:.0f} -> {row['coherent_with']:.0f}")
