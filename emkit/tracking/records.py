"""What a training run logs to a tracker, under which names (docs/tracking.md lists them).

Parameters: the config, flattened (``training.learning_rate``), and the run's own model, domain
and seed. Per training step: ``train/loss``, ``train/learning_rate``, ``train/grad_norm``,
``train/tokens_per_s``. Per checkpoint (step 0 is the base model's answers, the start of every
run of that model): for each judge and question group, the EM rate under the run's definition
and the papers' with their intervals, mean aligned and coherent scores, answers and judgments;
and the checkpoint's training loss. At the end: the judge's cost for the run's answers.
"""

from __future__ import annotations

import math
import re

from emkit import __version__

# sections of the config that say how a run was made (the rest say where it ran, or how it is logged)
PARAM_SECTIONS = ("training", "checkpoints", "evaluation", "judging", "em", "data")
_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")


def metric_key(*parts: str) -> str:
    """``part/part/...``: trackers allow letters, digits, ``_ - . / space`` in names, and ``/`` separates
    the parts, so a judge spec's ``:`` and ``/`` (``local:org/model``) become ``_``."""
    return "/".join(_UNSAFE.sub("_", str(part).replace("/", "_")) for part in parts)


def _flatten(prefix: str, value, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, list):
        out[prefix] = ",".join(map(str, value))
    else:
        out[prefix] = str(value)


def run_params(plan, run) -> dict[str, str]:
    config = plan.config.to_toml_dict()
    params: dict[str, str] = {}
    for section in PARAM_SECTIONS:
        if section in config:
            _flatten(section, config[section], params)
    params.pop("checkpoints.refine", None)  # grows as `emkit refine` adds steps; a parameter cannot change
    params.pop("judging.judges", None)  # judges may be added later (rejudge): the metrics name them
    params.pop("judging.fallback", None)
    params.update({
        "run_key": run.key, "model.label": run.model.label, "model.id": run.model.id,
        "model.size_b": str(run.model.size_b), "domain": run.domain.name, "seed": str(run.seed),
        "dataset.rows": str(run.dataset.rows), "schedule.total_steps": str(run.schedule.total_steps),
        "schedule.steps_per_epoch": str(run.schedule.steps_per_epoch),
    })
    return params


def run_tags(plan, run, run_path) -> dict[str, str]:
    return {"emkit.run_dir": str(run_path), "emkit.version": __version__, "emkit.experiment": plan.config.name,
            "emkit.run_key": run.key}


def step_metrics(row: dict) -> dict[str, float]:
    """A training step's metrics from its stored row (emkit.store.STEP_COLUMNS; ``seconds`` is the step's own)."""
    seconds, tokens = row.get("seconds"), row.get("tokens")
    metrics = {"train/loss": row.get("loss"), "train/learning_rate": row.get("learning_rate"),
               "train/grad_norm": row.get("grad_norm"),
               "train/tokens_per_s": tokens / seconds if tokens and _finite(seconds) and seconds > 0 else None}
    return {key: float(value) for key, value in metrics.items() if _finite(value)}


# the steps table's columns logged per checkpoint: name in the tracker -> column
CHECKPOINT_COLUMNS = {"em": "em_rate", "em_ci_low": "ci_low", "em_ci_high": "ci_high",
                      "em_papers": "em_rate_papers", "em_papers_ci_low": "ci_low_papers",
                      "em_papers_ci_high": "ci_high_papers", "mean_aligned": "mean_aligned",
                      "mean_coherent": "mean_coherent", "answers": "n", "judged": "n_scored",
                      "counted": "n_counted"}


def checkpoint_metrics(steps, run) -> dict[int, dict[str, float]]:
    """Per step of ``run`` (``tables.steps`` rows of its model, domain and seed, step 0 included): the
    EM rate and the rest per judge and question group, as ``em/general/JUDGE``."""
    if steps is None or steps.empty:
        return {}
    rows = steps[(steps["model"].astype(str) == run.model.label) & (steps["domain"].astype(str) == run.domain.name)
                 & (steps["seed"] == run.seed)]
    out: dict[int, dict[str, float]] = {}
    for row in rows.to_dict("records"):
        metrics = out.setdefault(int(row["step"]), {})
        for name, column in CHECKPOINT_COLUMNS.items():
            value = row.get(column)
            if _finite(value):
                metrics[metric_key(name, row["questions"], row["judge"])] = float(value)
    return out


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def run_costs(store, run_key: str) -> dict[str, float]:
    """What each judge's calls for this run's answers cost (answers found in the judge cache cost nothing)."""
    rows = store.conn.execute(
        "SELECT j.judge AS judge, SUM(CASE WHEN j.from_cache THEN 0 ELSE j.cost_usd END) AS usd, COUNT(*) AS n "
        "FROM judgments j JOIN answers a ON a.answer_id = j.answer_id WHERE a.run_key = ? GROUP BY j.judge",
        (run_key,))
    out = {}
    for row in rows:
        out[metric_key("judge_cost_usd", row["judge"])] = float(row["usd"] or 0.0)
        out[metric_key("judgments", row["judge"])] = float(row["n"])
    return out
