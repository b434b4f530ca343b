"""Stage 2, generate: every planned answer, at step 0 and at every checkpoint.

Answers already in the store are skipped; the rest are grouped by base model so the
generator loads each base model once and attaches the checkpoints' adapters in turn. The
base is the one the model's runs were trained on (emkit.models.base_weights), the same weights
and quantisation, and generation never runs in a process a trainer has patched (Unsloth
trains in a child process of its own: emkit.training.isolated).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from emkit.models.base_weights import base_for_model, configured_base
from emkit.interfaces import CheckpointRequests, GenerationJob, GenerationRequest
from emkit.models import resolve_model_source
from emkit.plan import BASE, Plan

log = logging.getLogger("emkit")


def messages_for(answer) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": answer.system}] if answer.system else []
    return messages + [{"role": "user", "content": answer.question}]


def generate_stage(run_dir, plan: Plan, registry, progress, answers=None) -> int:
    """Generate what is missing of ``answers`` (default: every planned answer); return how many
    answers were stored."""
    store = run_dir.store
    generator = registry.get("generators", plan.config.evaluation.generator)
    planned = list(plan.answers() if answers is None else answers)
    existing = store.existing_answers(a.answer_id for a in planned)
    pending = [a for a in planned if a.answer_id not in existing]
    if not pending:
        return 0
    by_model: dict[str, dict[tuple[str, int], list]] = defaultdict(lambda: defaultdict(list))
    for answer in pending:
        by_model[answer.model_label][(answer.run_key, answer.step)].append(answer)
    planned_by_id = {a.answer_id: a for a in pending}
    stored = 0

    def on_answer(request, generated):
        nonlocal stored
        store.add_answer(planned_by_id[request.answer_id], generated.text, generated.n_tokens,
                         generated.finish_reason, generator.name)
        stored += 1

    for model in plan.config.models:
        groups = by_model.get(model.label)
        if not groups:
            continue
        checkpoints = []
        for (run_key, step), answers in sorted(groups.items()):
            adapter = None if run_key == BASE else store.checkpoints(run_key)[step]
            requests = [GenerationRequest(a.answer_id, messages_for(a), a.sample_seed) for a in answers]
            checkpoints.append(CheckpointRequests(step=step, adapter_path=adapter, requests=requests))
        log.info("generate %s: %d answers over %d checkpoints", model.label,
                 sum(len(c.requests) for c in checkpoints), len(checkpoints))
        source = resolve_model_source(model.id)
        base = base_for_model(store, model.label, configured_base(source, plan.config.eval_load_in_4bit),
                              plan.config.evaluation.load_in_4bit)
        log.info("generate %s on %s", model.label, base.describe())
        job = GenerationJob(
            model_id=source,
            model_label=model.label,
            checkpoints=checkpoints,
            settings=plan.config.evaluation,
            load_in_4bit=base.quantization is not None,
            trust_remote_code=plan.config.trust_remote_code,
            base=base,
        )
        generator.generate(job, on_answer, progress)
    return stored
