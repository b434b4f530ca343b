"""Stage 3, judge: every stored answer on every metric by every judge.

Judging reads stored answers only, so a judge added later re-scores old runs without
generating again. For each judge: the prompts are rendered, requests already in the
shared cache are copied without a call, identical requests are sent once, and every
result is written to the store (and the cache) the moment it arrives.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from emkit.errors import EmkitError, JudgeErrorsExceeded
from emkit.interfaces import JudgeNeeds, JudgeOptions, JudgeRequest
from emkit.judging.api import JudgeUnavailable
from emkit.judging.cache import JudgeCache, default_cache_path, request_key
from emkit.plan import Plan
from emkit.prompt_library import PromptLibrary

log = logging.getLogger("emkit")


@dataclass
class JudgeTally:
    judge: str
    statuses: Counter = field(default_factory=Counter)
    from_cache: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @staticmethod
    def per_judge(tallies: list["JudgeTally"]) -> list["JudgeTally"]:
        """One tally per judge, summing its passes (beside the GPU work and after it)."""
        merged: dict[str, JudgeTally] = {}
        for tally in tallies:
            into = merged.setdefault(tally.judge, JudgeTally(tally.judge))
            into.statuses.update(tally.statuses)
            into.from_cache += tally.from_cache
            into.calls += tally.calls
            into.input_tokens += tally.input_tokens
            into.output_tokens += tally.output_tokens
            into.cost_usd += tally.cost_usd
        return list(merged.values())

    def line(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        return (f"{self.judge}: {self.total} judgments ({statuses}); {self.calls} calls, {self.from_cache} from "
                f"cache; {self.input_tokens:,} input + {self.output_tokens:,} output tokens, ${self.cost_usd:.4f}")


def judge_options(settings, trust_remote_code: bool) -> JudgeOptions:
    return JudgeOptions(
        api_base=settings.api_base or None, scoring=settings.scoring, concurrency=settings.concurrency,
        timeout_s=settings.timeout_s, max_retries=settings.max_retries, retry_backoff_s=settings.retry_backoff_s,
        batch_size=settings.batch_size, transport=settings.transport,
        api_key_env=settings.api_key_env or None, allow_insecure_http=settings.allow_insecure_http,
        reasoning_effort=settings.reasoning_effort, trust_remote_code=trust_remote_code,
        mode=settings.mode, rpm=settings.rpm, tpm=settings.tpm, batch_poll_s=settings.batch_poll_s,
        batch_max_requests=settings.batch_max_requests, batch_max_mb=settings.batch_max_mb,
        batch_enqueued_tokens=settings.batch_enqueued_tokens, batch_resend=settings.batch_resend,
        ledger=str(default_cache_path(settings.cache)),
    )


def create_judge(spec: str, options: JudgeOptions, registry):
    """``NAME:ARGUMENT`` picks the backend NAME; anything else is a litellm model name."""
    backend_name, sep, argument = spec.partition(":")
    if sep and backend_name in registry.entries["judges"]:
        return registry.get("judges", backend_name).create(argument, options)
    return registry.get("judges", "litellm").create(spec, options)


class JudgePool:
    """Each judge made once and kept: a local judge loads its model once for every pass over the
    answers (the background judging of emkit.execution makes one pass per batch of new answers)."""

    def __init__(self, options: JudgeOptions, registry):
        self.options, self.registry = options, registry
        self._made: dict[str, object] = {}

    def get(self, spec: str):
        if spec not in self._made:
            self._made[spec] = create_judge(spec, self.options, self.registry)
        return self._made[spec]


@dataclass
class JudgeTarget:
    """One (answer, metric) to score, with the prompt that scores it."""
    answer_id: str
    metric: str
    prompt: str
    prompt_version: str


def score_targets(judge, targets: list[JudgeTarget], store, cache: JudgeCache, progress,
                  max_error_share: float, earlier: int = 0) -> JudgeTally:
    """``earlier``: judgments this judge made earlier in the run without error (judging beside the GPU
    work); the error share is over the whole run's judgments, not this pass's."""
    """Score targets with one judge: cache first, identical prompts once, results stored as they come."""
    tally = JudgeTally(judge.name)
    mode = judge.scoring_mode()
    requested = getattr(judge, "model", None) or judge.name  # stored beside the snapshot that answered
    by_key: dict[str, list[JudgeTarget]] = defaultdict(list)
    for target in targets:
        by_key[request_key(judge.identity, mode, target.metric, target.prompt)].append(target)
    cached = cache.get_many(list(by_key))

    def record(key, result, from_cache, metric=None):
        if key not in by_key:  # a request of a batch shared with another run: cached for it, not stored here
            if not from_cache and metric:
                cache.put(key, judge.identity, metric, result)
            return
        for target in by_key[key]:
            store.add_judgment(target.answer_id, judge.name, target.metric, result, target.prompt_version, key,
                               from_cache, requested)
            tally.statuses[result.status] += 1
            tally.from_cache += int(from_cache)
        if not from_cache:
            tally.calls += 1
            tally.input_tokens += result.input_tokens
            tally.output_tokens += result.output_tokens
            tally.cost_usd += result.cost_usd
            cache.put(key, judge.identity, by_key[key][0].metric, result)

    for key, result in cached.items():
        record(key, result, True)
    requests = [JudgeRequest(key=key, metric=group[0].metric, prompt=group[0].prompt)
                for key, group in by_key.items() if key not in cached]
    if requests:
        judge.score(requests, lambda request, result: record(request.key, result, False, request.metric), progress)
        limits = getattr(judge, "observed_limits", None)
        if limits:  # for the dry run's wall-time estimate
            cache.put_limits(judge.identity, limits)
    errors = tally.statuses.get("error", 0)
    total = tally.total + earlier
    if total and errors / total > max_error_share:
        failure = JudgeErrorsExceeded(
            f"{errors} of {total} judgments by {judge.name} failed ({errors / total:.1%}, above the "
            f"allowed share of {max_error_share:g}); the rest are stored, and running the same command again "
            f"retries only the failed ones."
        )
        failure.tally = tally
        raise failure
    return tally


def usable_in_chain(chain: list[str], get, tried: list[str]):
    """Each judge of ``chain`` that says it can be used here, in order, as (spec, judge); why the
    others cannot is added to ``tried``. The one walk along a chain: the check before a run and
    the judging itself both take it."""
    for spec in chain:
        judge = get(spec)
        reason = judge.unavailable_reason()
        if reason is None:
            yield spec, judge
        else:
            tried.append(f"{spec}: {reason}")


def judge_with_fallback(chain: list[str], targets, pool: JudgePool, store, cache, progress,
                        max_error_share: float, earlier: dict[str, int] | None = None,
                        alone: bool = False) -> JudgeTally:
    """Score with the first judge of ``[judge] + fallback`` that can be used; a fallback is announced loudly.
    ``alone``: the chain is the judge by itself on purpose (re-judging what a fallback scored)."""
    tried: list[str] = []
    for spec, judge in usable_in_chain(chain, pool.get, tried):
        if tried:
            _announce_fallback(chain[0], judge.name, tried)
        log.info("judge %s: %d judgments to make (%s scoring)", judge.name, len(targets), judge.scoring_mode())
        try:
            return score_targets(judge, targets, store, cache, progress, max_error_share,
                                 (earlier or {}).get(judge.name, 0))
        except JudgeUnavailable as exc:  # the first call found it unusable; nothing was stored
            tried.append(f"{spec}: {exc.reason}")
    raise JudgeUnavailable(no_judge_message(tried, alone=alone))


def check_judges_usable(config, pool: JudgePool) -> None:
    """Each judge, or one of its fallbacks, must be usable here (a key set, a model present):
    checked before hours of training, not after."""
    for spec in config.judging.judges:
        tried: list[str] = []
        if next(usable_in_chain(judge_chain(spec, config.judging.fallback), pool.get, tried), None) is None:
            raise EmkitError(no_judge_message(tried))


def check_judge_needs(config, pool: JudgePool) -> None:
    """What the config asks of the judges, against what each says it can do (JudgeNeeds): a judge
    that cannot is refused before any work; a fallback that cannot is named, as it is only tried
    when its judge cannot be reached."""
    settings = config.judging
    for spec in dict.fromkeys(settings.judges + settings.fallback):
        judge = pool.get(spec)
        if settings.scoring == "logprobs" and not JudgeNeeds.of(judge).supports_logprobs:
            if spec in settings.judges:
                raise EmkitError(f"judging.scoring = \"logprobs\", but judge {judge.name} cannot score from "
                                 f"logprobs; set scoring = \"auto\" or \"text\" in [judging], or use another judge.")
            log.warning("fallback judge %s cannot score from logprobs (judging.scoring = \"logprobs\"); it would "
                        "fail if it were needed", judge.name)
        if settings.mode == "batch" and not JudgeNeeds.of(judge).supports_batch:
            log.info("judge %s does not say it has a batch API (judging.mode = \"batch\" applies to the judges "
                     "that have one)", judge.name)


def judge_models(config, pool: JudgePool) -> list[str]:
    """The model sources the run's judges and fallbacks load on this machine."""
    settings = config.judging
    return [model for spec in dict.fromkeys(settings.judges + settings.fallback)
            for model in JudgeNeeds.of(pool.get(spec)).models]


def no_judge_message(tried: list[str], alone: bool = False) -> str:
    """Why no judge of a chain can score, and what to do: the advice fits what was already tried."""
    if alone:  # its own judge is asked for by name (re-judging what a fallback scored): no fallback applies
        return (f"No judge can be used ({'; '.join(tried)}); the answers a fallback scored are re-judged by their "
                f"own judge only, so make it reachable (set its key, check --api-base) and run the same command "
                f"again.")
    if len(tried) > 1:
        return (f"No judge can be used ({'; '.join(tried)}); the judge and its fallbacks all failed: set the missing "
                f"key or check --api-base, and check the fallbacks' models.")
    return (f"No judge can be used ({'; '.join(tried)}); set the missing key, pass --api-base for an "
            f"OpenAI-compatible server, or add --fallback local:PATH_OR_HUB_ID.")


def _announce_fallback(wanted: str, used: str, reasons: list[str]) -> None:
    banner = "!" * 72
    log.warning("%s\nJUDGE FALLBACK: %s cannot be used (%s).\nScoring with %s instead; every score is recorded "
                "under %s, not %s.\n%s", banner, wanted, "; ".join(reasons), used, used, wanted, banner)


def build_targets(plan: Plan, store, judges: list[str], library: PromptLibrary) -> list[JudgeTarget]:
    """Every stored, planned answer's metrics none of ``judges`` has scored, in the plan's order. The store
    names the answers still to judge and the plan is read only at their checkpoints: a pass beside the GPU
    work, every few seconds, costs the answers that are new, not all stored (at the seed grid's 81,000
    answers, reading all of them and all their judgments took 1.3 s a pass, the GIL held)."""
    metrics_by_run = plan.metrics_by_run()
    missing: dict[str, tuple[str, set[str]]] = {}
    checkpoints = set()
    for (label, run_key), metrics in metrics_by_run.items():
        for answer_id, step, text, scored in store.unjudged(judges, label, run_key, metrics):
            missing[answer_id] = (text, scored)
            checkpoints.add((label, run_key, step))
    if not missing:
        return []
    questions = question_index(plan)
    targets = []
    for answer in plan.answers(only=checkpoints):
        if answer.answer_id not in missing:
            continue  # not generated (yet), or judged
        text, scored = missing[answer.answer_id]
        targets += answer_targets(answer.answer_id, answer, text, metrics_by_run[(answer.model_label, answer.run_key)],
                                  scored, questions, library)
    return targets


def question_index(plan: Plan) -> dict:
    """(question set, question id) -> (the question, its set's file): what a metric's template is chosen by."""
    return {(name, q.id): (q, qset.path) for name, qset in plan.question_sets.items() for q in qset.questions}


def answer_targets(answer_id: str, asked, text: str, metrics: list[str], scored: set[str], questions: dict,
                   library: PromptLibrary) -> list[JudgeTarget]:
    """The judgments one answer still needs: ``asked`` (a PlannedAnswer) says which question it answers, as
    asked; ``answer_id`` is the answer's own (an intervention's answer fills a plain answer's slot)."""
    question, path = questions[(asked.question_set, asked.question_id)]
    targets = []
    for metric in metrics:
        if metric in scored:
            continue
        template = library.template_for(metric, question, path)
        targets.append(JudgeTarget(answer_id, metric, library.render(template, asked.question, text), template.version))
    return targets


def judge_chain(spec: str, fallback) -> list[str]:
    """A judge, then its fallbacks: the one place a chain is built."""
    return [spec] + [f for f in fallback if f != spec]


def judge_pass(plan: Plan, store, specs: list[str], pool: JudgePool, progress,
               earlier: list[JudgeTally] | None = None, max_error_share: float | None = None,
               fallbacks: bool = True, primary_again: bool = False) -> list[JudgeTally]:
    """Judge every stored answer not yet judged by each judge of ``specs`` (or its fallback).
    ``earlier``: this run's tallies of passes before this one; the error share counts them too.
    ``fallbacks=False``: each judge alone (beside the GPU work, answers wait for their own judge).
    ``primary_again``: answers a fallback scored are scored by their own judge too (no fallback)."""
    library = PromptLibrary(plan.domains)
    return judge_targets(plan, store, specs, pool, progress, lambda names: build_targets(plan, store, names, library),
                         earlier, max_error_share, fallbacks, primary_again)


def judge_targets(plan: Plan, store, specs: list[str], pool: JudgePool, progress, targets_for,
                  earlier: list[JudgeTally] | None = None, max_error_share: float | None = None,
                  fallbacks: bool = True, primary_again: bool = False) -> list[JudgeTally]:
    """What judge_pass does, over the targets ``targets_for(names)`` gives: the judgments none of ``names``
    (a judge and its fallbacks) has made yet."""
    settings = plan.config.judging
    cache = JudgeCache(default_cache_path(settings.cache))
    tallies = []
    try:
        for spec in specs:
            chain = judge_chain(spec, settings.fallback) if fallbacks and not primary_again else [spec]
            names = [pool.get(s).name for s in chain]
            targets = targets_for(names)
            if not targets:
                continue
            share = settings.max_error_share if max_error_share is None else max_error_share
            tallies.append(judge_with_fallback(chain, targets, pool, store, cache, progress, share,
                                               made_without_error(earlier or []), alone=primary_again))
    finally:
        cache.close()
    return tallies


def made_without_error(tallies: list[JudgeTally]) -> dict[str, int]:
    made: dict[str, int] = defaultdict(int)
    for tally in tallies:
        made[tally.judge] += tally.total - tally.statuses.get("error", 0)
    return made


def judge_stage(run_dir, plan: Plan, registry, progress, pool: JudgePool | None = None,
                earlier: list[JudgeTally] | None = None, rejudge_fallbacks: bool = False) -> list[JudgeTally]:
    """Judge what is left; ``pool`` and ``earlier``: the judges and tallies of the passes made beside the GPU work.
    ``rejudge_fallbacks``: first, each judge scores the answers a fallback scored in its place."""
    pool = pool or JudgePool(judge_options(plan.config.judging, plan.config.trust_remote_code), registry)
    tallies = []
    if rejudge_fallbacks:
        tallies += judge_pass(plan, run_dir.store, plan.config.judging.judges, pool, progress, earlier,
                              primary_again=True)
    tallies += judge_pass(plan, run_dir.store, plan.config.judging.judges, pool, progress, (earlier or []) + tallies)
    for tally in JudgeTally.per_judge((earlier or []) + tallies):  # the whole run's, not only this stage's
        log.info("%s", tally.line())
    return tallies


def scored_by_fallback(store, settings) -> list[tuple[str, str, int]]:
    """(judge, fallback, answers): answers a fallback judge scored that their own judge has not."""
    found = []
    for spec in settings.judges:
        own = {answer for answer, _ in store.judged([spec])}
        for fallback in settings.fallback:
            if fallback in settings.judges:  # a judge of the run in its own right
                continue
            answers = {answer for answer, _ in store.judged([fallback])} - own
            if answers:
                found.append((spec, fallback, len(answers)))
    return found


def fallback_lines(store, settings) -> list[str]:
    return [f"{n} answers were scored by {fallback} in place of {spec}; once {spec} can be reached, "
            f"`emkit run ... --rejudge-fallbacks` has {spec} score them too"
            for spec, fallback, n in scored_by_fallback(store, settings)]


def ready_judge_pool(config, registry, with_models: bool = False) -> JudgePool:
    """The config's judges, checked usable here and able to do what it asks (before any work), and their
    built-in models (``with_models``: the config's models' too) built into the cache once: judging outside
    `emkit run` starts from this."""
    from emkit.models.builtins import build_builtins

    pool = JudgePool(judge_options(config.judging, config.trust_remote_code), registry)
    check_judges_usable(config, pool)
    check_judge_needs(config, pool)
    needed = builtin_names(config, pool, with_models)
    if needed:
        build_builtins(needed)
    return pool


def builtin_names(config, pool: JudgePool, with_models: bool = True) -> list[str]:
    """emkit's own offline models the judges load (builtin:NAME), and the config's models' with ``with_models``."""
    from emkit.models.builtins import BUILTIN_PREFIX

    sources = ([m.id for m in config.models] if with_models else []) + judge_models(config, pool)
    return list(dict.fromkeys(s[len(BUILTIN_PREFIX):] for s in sources if s.startswith(BUILTIN_PREFIX)))
