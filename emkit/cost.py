"""What the judges will cost, before anything is sent (`emkit run --dry-run`).

Input tokens per call are the judge prompt with its question, plus the answer taken at
its longest (evaluation.max_new_tokens): an upper bound, since many answers stop early.
Prices come from litellm's offline price table (the batch API's own price where it has one);
local judges cost nothing. Wall time live is the calls and tokens over the rate limits set in
[judging] rpm / tpm or read from the provider's headers by an earlier live run (the judge
cache keeps them); batched, it is the provider's completion window for each wave of batches
the enqueued-token limit lets in at once.
"""

from __future__ import annotations

from emkit.interfaces import JudgeNeeds
from emkit.plan import Plan


def estimate_judge_cost(plan: Plan, registry) -> list[dict]:
    from emkit.prompt_library import PromptLibrary
    from emkit.stages.judge import create_judge, judge_options

    options = judge_options(plan.config.judging, plan.config.trust_remote_code)
    library = PromptLibrary(plan.domains)
    metrics_by_run = plan.metrics_by_run()
    questions = {(name, q.id): (q, qset.path) for name, qset in plan.question_sets.items() for q in qset.questions}
    answer_tokens = plan.config.evaluation.max_new_tokens
    estimates = []
    for spec in plan.config.judging.judges:
        judge = create_judge(spec, options, registry)
        price = getattr(judge, "price_per_token", None)  # a judge that bills its calls says what they cost
        if price is None:
            calls = plan.totals()["judge_calls"] // max(len(plan.config.judging.judges), 1)
            note = "runs locally" if JudgeNeeds.of(judge).uses_gpu else "no price known"
            estimates.append({"judge": judge.name, "calls": calls, "input_tokens": 0, "output_tokens": 0, "usd": 0.0,
                              "note": note})
            continue
        input_price, output_price = price()
        batch_input_price, batch_output_price = price(batch=True)
        mode = judge.scoring_mode()
        calls = input_tokens = 0
        prompt_tokens: dict[tuple, int] = {}
        for answer in plan.answers():
            question, path = questions[(answer.question_set, answer.question_id)]
            for metric in metrics_by_run[(answer.model_label, answer.run_key)]:
                key = (answer.question_set, answer.question_id, answer.paraphrase_index, metric)
                if key not in prompt_tokens:
                    template = library.template_for(metric, question, path)
                    prompt_tokens[key] = _count_tokens(judge, library.render(template, answer.question, ""))
                calls += 1
                input_tokens += prompt_tokens[key] + answer_tokens
        output_tokens = calls * (1 if mode == "logprobs" else 3)
        note = "upper bound: every answer at max_new_tokens"
        reasons = getattr(judge, "reasons", lambda: False)()
        most = getattr(judge, "reasoning_max_tokens", 0)
        if reasons and most:  # hidden reasoning is billed as output; how much depends on the model and the effort
            note = (f"answers at max_new_tokens, but NOT the judge's reasoning, billed as output: up to "
                    f"{most:,} tokens a call, ${calls * most * output_price:,.2f} at most")
        counted = input_tokens + calls * _max_tokens(judge, mode)  # what the token limit counts
        estimates.append({
            "judge": judge.name, "calls": calls, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "usd": input_tokens * input_price + output_tokens * output_price,
            "usd_batch": input_tokens * batch_input_price + output_tokens * batch_output_price,
            "mode": plan.config.judging.mode,
            **wall_time(calls, counted, _limits(judge, plan.config.judging), plan.config.judging),
            "note": note + ("" if input_price else "; no price known"),
        })
    return estimates


def _count_tokens(judge, text: str) -> int:
    """The judge's own tokenizer where it has one; four characters a token otherwise."""
    counter = getattr(judge, "count_tokens", None)
    return int(counter(text)) if counter else max(1, len(text) // 4)


def _max_tokens(judge, mode: str) -> int:
    params = judge.request_params(mode)
    return int(params.get("max_completion_tokens") or params.get("max_tokens") or 16)


def _limits(judge, settings) -> dict:
    """Limits set by hand win; else those an earlier live run read from the provider's headers."""
    from emkit.judging.cache import JudgeCache, default_cache_path

    read = {}
    path = default_cache_path(settings.cache)
    if path.is_file():
        cache = JudgeCache(path)
        try:
            read = cache.limits(judge.identity)
        finally:
            cache.close()
    limits = {"requests": settings.rpm or read.get("requests"), "tokens": settings.tpm or read.get("tokens")}
    source = "set in [judging]" if (settings.rpm or settings.tpm) else ("read by an earlier run" if read else "")
    return {**limits, "source": source}


def wall_time(calls: int, tokens: int, limits: dict, settings) -> dict:
    """Hours live at the limits (None when none is known) and batched (waves x the 24-hour window)."""
    minutes = [calls / limits["requests"] if limits.get("requests") else 0.0,
               tokens / limits["tokens"] if limits.get("tokens") else 0.0]
    known = bool(limits.get("requests") or limits.get("tokens"))
    cap = settings.batch_enqueued_tokens
    waves = max(1, -(-tokens // cap)) if cap else 1
    batches = max(1, -(-calls // settings.batch_max_requests), waves) if calls else 0
    return {"wall_live_h": max(minutes) / 60 if known else None, "limits": limits,
            "batches": batches, "batch_waves": waves, "wall_batch_h_at_most": 24.0 * waves}
