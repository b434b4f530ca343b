"""A run as Inspect eval logs (`emkit export --inspect RUN`), for `inspect view`.

One log per model and checkpoint (the base model's answers are its model's step-0 log): a
sample per answer, its question (with the system prompt) as input, the answer as output, and
each judge's scores (every metric, and whether the answer counts as misaligned under the run's
EM definition) as that judge's score. The log's results give each judge's EM rate, with its
Wilson interval, and mean scores. The logs are made with inspect_ai's own classes and writer,
so what Inspect reads is what Inspect wrote; answers are model output, stored as text.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

from emkit.plan import BASE


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")


def log_name(model: str, run_key: str, step: int) -> str:
    what = "base" if run_key == BASE else _safe(run_key)
    return f"{_safe(model)}_{what}_step-{int(step):06d}.eval"


def _number(value):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _answers(store_path: Path, answer_ids: list[str]):
    """The answers' texts and slots, straight from the store."""
    import sqlite3

    import pandas as pd

    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        frames = []
        for start in range(0, len(answer_ids), 500):
            chunk = answer_ids[start:start + 500]
            frames.append(pd.read_sql_query(
                "SELECT answer_id, question_set, question_id, paraphrase_index, sample_index, seed, system, question, "
                "answer, n_tokens, finish_reason, generator, created_at FROM answers "
                f"WHERE answer_id IN ({','.join('?' * len(chunk))})", conn, params=chunk))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    finally:
        conn.close()


def export_inspect(run_path: Path, out_dir: Path, progress=None) -> list[Path]:
    """Write the logs into ``out_dir``; return their paths."""
    from emkit.analysis import load_run
    from emkit.analysis.stats import wilson_interval
    from emkit.rundir import saved_experiment_config
    from emkit.store import STORE_FILE

    config = saved_experiment_config(run_path)
    tables = load_run(run_path, text=False)
    judged = tables.judged.drop_duplicates(["answer_id", "judge"])  # a baseline answer is in once per domain
    metrics = [c for c in ("aligned", "coherent") if c in judged.columns]
    metrics += [c[:-len("_status")] for c in judged.columns if c.endswith("_status")
                and c[:-len("_status")] not in metrics]
    answers = _answers(Path(run_path) / STORE_FILE, judged["answer_id"].unique().tolist()).set_index("answer_id")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = list(judged.groupby(["model", "run_key", "step"], observed=True, sort=True))
    for (model, run_key, step), rows in groups:
        path = out_dir / log_name(model, run_key, step)
        log = _eval_log(config, tables.em, model, run_key, int(step), rows, answers, metrics, wilson_interval)
        _write(log, path)
        written.append(path)
        if progress is not None:
            progress(len(written), len(groups), path)
    return written


def _write(log, path: Path) -> None:
    """Whole or not at all: written beside, then moved into place."""
    import os

    from inspect_ai.log import write_eval_log

    partial = path.with_name(f".{path.name}.partial")
    write_eval_log(log, str(partial), format="eval")
    os.replace(partial, path)


def _eval_log(config, em, model, run_key, step, rows, answers, metrics, wilson_interval):
    from inspect_ai.log import (EvalConfig, EvalDataset, EvalLog, EvalMetric, EvalResults, EvalSample, EvalScore,
                                EvalSpec, EvalStats)
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, GenerateConfig, ModelOutput
    from inspect_ai.scorer import Score

    domain = rows["domain"].iloc[0] if run_key != BASE else None
    model_name = f"emkit/{model}" + ("" if run_key == BASE else f"/{run_key}") + f"@step-{step}"
    judges = sorted(rows["judge"].astype(str).unique())
    samples = []
    for answer_id, by_judge in rows.groupby("answer_id", sort=True):
        answer = answers.loc[answer_id]
        messages = ([ChatMessageSystem(content=answer["system"])] if answer["system"] else []) + [
            ChatMessageUser(content=answer["question"])]
        scores = {}
        for row in by_judge.to_dict("records"):
            value = {metric: _number(row.get(metric)) for metric in metrics}
            value["misaligned"] = bool(row["misaligned"]) if row.get("em_counted") else None
            scores[str(row["judge"])] = Score(
                value=value, answer=None,
                explanation="; ".join(f"{m}: {row.get(f'{m}_status')}" for m in metrics),
                metadata={"counted": bool(row.get("em_counted"))})
        output = ModelOutput.from_content(model_name, answer["answer"],
                                          stop_reason="max_tokens" if answer["finish_reason"] == "length" else "stop")
        samples.append(EvalSample(
            id=f"{answer['question_set']}/{answer['question_id']}/{int(answer['paraphrase_index'])}",
            epoch=int(answer["sample_index"]) + 1, input=messages, target="",
            messages=messages + [ChatMessageAssistant(content=answer["answer"], model=model_name)],
            output=output, scores=scores,
            metadata={"answer_id": answer_id, "question_set": answer["question_set"],
                      "question_id": answer["question_id"], "questions": str(by_judge["questions"].iloc[0]),
                      "sampling_seed": int(answer["seed"]), "n_tokens": _number(answer["n_tokens"]),
                      "generator": answer["generator"]}))
    results = []
    for judge in judges:
        mine = rows[rows["judge"].astype(str) == judge]
        counted = mine[mine["em_counted"].astype(bool)]
        n, k = len(counted), int(counted["misaligned"].astype(bool).sum())
        low, high = wilson_interval(k, n) if n else (math.nan, math.nan)
        values = {"em_rate": k / n if n else math.nan, "em_ci_low": low, "em_ci_high": high,
                  "em_counted": float(n)}
        for metric in metrics:
            values[f"mean_{metric}"] = float(mine[metric].mean()) if mine[metric].notna().any() else math.nan
        results.append(EvalScore(name=judge, scorer=judge, scored_samples=int(mine[metrics[0]].notna().sum()),
                                 metrics={name: EvalMetric(name=name, value=_number(value) if _number(value) is not None
                                                           else float("nan")) for name, value in values.items()}))
    created = str(answers.loc[rows["answer_id"].iloc[0], "created_at"] or datetime.now(timezone.utc).isoformat())
    evaluation = config.evaluation
    spec = EvalSpec(
        created=created, task=f"emergent_misalignment_{_safe(domain) if domain else 'base'}",
        task_args={"run": run_key, "step": step}, model=model_name,
        dataset=EvalDataset(name="emkit questions", samples=len({sample.id for sample in samples})),
        model_generate_config=GenerateConfig(temperature=evaluation.temperature, top_p=evaluation.top_p,
                                             max_tokens=evaluation.max_new_tokens),
        config=EvalConfig(epochs=max((sample.epoch for sample in samples), default=1)), tags=["emkit", config.name],
        metadata={"run_key": run_key, "step": step, "model": str(model), "domain": domain,
                  "em_definition": em.name, "judges": judges})
    return EvalLog(eval=spec, status="success", samples=samples,
                   results=EvalResults(total_samples=len(samples), completed_samples=len(samples), scores=results),
                   stats=EvalStats(started_at=created, completed_at=created))
