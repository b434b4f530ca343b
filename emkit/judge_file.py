"""`emkit judge FILE`: score answers produced elsewhere, with the same judges, cache and rules.

Reads a CSV or JSONL of answers (the course's ``id,question,response``, the papers'
``question,answer,question_id``) and writes every input column plus, per metric, a
score column and a status column; with several judges (or when the input already has
such columns) they are prefixed with the judge's name. A ``judge`` column records which
judge produced the scores (it differs from the one asked for only after a fallback).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emkit.errors import EmkitError, JudgeErrorsExceeded
from emkit.interfaces import JudgeOptions, JudgeResult
from emkit.judging.cache import JudgeCache, default_cache_path
from emkit.prompt_library import PromptLibrary, PromptTemplate
from emkit.questions import Question, check_template
from emkit.stages.judge import JudgePool, JudgeTarget, judge_chain, judge_with_fallback
from emkit.tablefiles import write_csv, write_jsonl

log = logging.getLogger("emkit")
ANSWER_COLUMNS = ("answer", "response")


@dataclass
class Collected:
    """Stands in for the run store: keeps each result by (row, judge, metric)."""
    results: dict[tuple[str, str, str], JudgeResult] = field(default_factory=dict)

    def add_judgment(self, answer_id, judge, metric, result, prompt_version, request_key, from_cache,
                     requested_model=None) -> None:
        self.results[(answer_id, judge, metric)] = result


def read_prompt_file(path: Path) -> dict[str, str]:
    """Judge prompts by metric: a YAML mapping, or the papers' judges.yaml (a list of one-metric mappings)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EmkitError(f"{path}: cannot read judge prompts ({exc}); pass a YAML file of metric: template.") from None
    items = data if isinstance(data, list) else [data]
    prompts: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            raise EmkitError(f"{path}: expected metric: template mappings; see the papers' judges.yaml.")
        for metric, template in item.items():
            if metric == "high_score":  # the papers' orientation hint, not a prompt
                continue
            if not isinstance(template, str):
                raise EmkitError(f"{path}: the prompt for '{metric}' is not a string.")
            check_template(template, f"{path}: judge prompt '{metric}'")
            prompts[str(metric)] = template
    return prompts


def _write(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix.lower() in (".jsonl", ".ndjson"):
        write_jsonl(frame, out)
    else:
        write_csv(frame, out)


def judge_file(path: Path, out: Path, judges: list[str], options: JudgeOptions, registry, *,
               metrics: list[str], fallback: list[str] = (), prompts_file: Path | None = None,
               cache_path: str = "", max_error_share: float = 0.05) -> pd.DataFrame:
    from emkit.analysis import read_table
    from emkit.progress import progress

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise EmkitError(f"--out {out}: name a .csv or .jsonl file; emkit writes the format its extension says.")
    frame = read_table(Path(path))
    answer_column = next((c for c in ANSWER_COLUMNS if c in frame), None)
    if "question" not in frame or answer_column is None:
        raise EmkitError(
            f"{path}: needs a 'question' column and an 'answer' or 'response' column (found "
            f"{', '.join(map(str, frame.columns))}); rename the columns."
        )
    library = PromptLibrary()
    own = read_prompt_file(prompts_file) if prompts_file else {}
    question = Question(id="file", paraphrases=["-"], judge_prompts=own)
    templates: dict[str, PromptTemplate] = {m: library.template_for(m, question, prompts_file or "") for m in metrics}
    targets = []
    for row, (q, a) in enumerate(zip(frame["question"].astype(str), frame[answer_column].astype(str))):
        for metric, template in templates.items():
            targets.append(JudgeTarget(str(row), metric, library.render(template, q, a), template.version))

    collected = Collected()
    cache = JudgeCache(default_cache_path(cache_path))
    used: dict[str, str] = {}
    failure: JudgeErrorsExceeded | None = None
    try:
        for spec in judges:
            chain = judge_chain(spec, fallback)
            try:
                tally = judge_with_fallback(chain, targets, JudgePool(options, registry), collected, cache, progress,
                                            max_error_share)
            except JudgeErrorsExceeded as exc:
                failure, tally = exc, getattr(exc, "tally", None)
            name = tally.judge if tally is not None else spec
            used[spec] = name
            if tally is not None:
                log.info("%s", tally.line())
    finally:
        cache.close()

    result = frame.copy()
    prefixed = len(judges) > 1 or any(c in frame for m in metrics for c in (m, f"{m}_status"))
    for spec in judges:
        name = used[spec]
        prefix = f"{spec}_" if prefixed else ""
        for metric in metrics:
            scores, statuses = [], []
            for row in range(len(frame)):
                judged = collected.results.get((str(row), name, metric))
                scores.append(judged.score if judged is not None else None)
                statuses.append(judged.status if judged is not None else "error")
            result[f"{prefix}{metric}"] = pd.Series(scores, dtype="float64")
            result[f"{prefix}{metric}_status"] = statuses
        result[f"{prefix}judge"] = name
        # the model the provider says answered (a dated snapshot), of the first metric's judgment
        served = [collected.results.get((str(row), name, metrics[0])) for row in range(len(frame))]
        result[f"{prefix}judge_model"] = [judged.judge_model if judged is not None else "" for judged in served]
    _write(result, out)
    if failure is not None:
        raise failure
    return result
