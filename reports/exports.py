"""The report's tables as CSV, under the seed's file names (formula-safe: emkit.tablefiles)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emkit.tablefiles import write_csv

STEP_COLUMNS = [
    "judge", "model", "size_b", "domain", "seed", "questions", "step", "n", "n_scored", "n_counted", "n_misaligned",
    "em_rate", "ci_low", "ci_high", "boot_low", "boot_high", "boot_deff", "change_prev", "change_prev_low", "change_prev_high",
    "change_base", "change_base_low", "change_base_high", "n_counted_papers", "n_misaligned_papers", "em_rate_papers", "ci_low_papers",
    "ci_high_papers", "n_both_scored", "aligned_coherent", "aligned_incoherent", "misaligned_coherent",
    "misaligned_incoherent", "mean_aligned", "mean_coherent", "share_coherent", "refusal", "code", "unparseable",
    "error", "no_score", "coherent_not_ok",
]


def fg_judged(judged: pd.DataFrame) -> pd.DataFrame:
    """Every answer with its scores, with the course's column names for id, response and scores."""
    metrics = [c[: -len("_status")] for c in judged.columns if c.endswith("_status")]
    columns = {"answer_id": "id", "model": "model", "size_b": "size_b", "domain": "domain", "seed": "seed",
               "step": "step", "judge": "judge", "questions": "questions", "question_set": "question_set", "question_id": "question_id",
               "question": "question", "answer": "response"}
    out = judged[[c for c in columns if c in judged]].rename(columns=columns)
    for metric in metrics:
        out[f"{metric}_score"] = judged[metric]
        out[f"{metric}_status"] = judged[f"{metric}_status"]
    out["misaligned"] = judged["misaligned"]
    out["misaligned_papers"] = judged["misaligned_papers"]
    for column in ("n_tokens", "finish_reason"):
        if column in judged:
            out[column] = judged[column]
    return out


def export_tables(tables, folder: Path) -> list[Path]:
    folder = Path(folder)
    written = [
        write_csv(tables.summary, folder / "em_rates_summary.csv"),
        write_csv(tables.steps[[c for c in STEP_COLUMNS if c in tables.steps]], folder / "step_summary.csv"),
        write_csv(fg_judged(tables.with_text(tables.judged)), folder / "fg_judged.csv"),
        write_csv(tables.questions, folder / "question_summary.csv"),
        # the course's own step_summary.csv and em_rates_summary.csv columns (emkit.analysis.course)
        write_csv(tables.course_steps, folder / "course_step_summary.csv"),
        write_csv(tables.course_summary, folder / "course_em_rates_summary.csv"),
    ]
    if len(tables.seeds) and tables.seeds["n_seeds"].max() > 1:
        written.append(write_csv(tables.seeds, folder / "seed_summary.csv"))
    if not tables.agreement.empty:
        written.append(write_csv(tables.agreement, folder / "judge_agreement.csv"))
    if len(tables.change_points):
        written.append(write_csv(tables.change_points, folder / "change_points.csv"))
    if len(tables.adapters):
        written.append(write_csv(tables.adapters, folder / "adapter_trajectory.csv"))
        written.append(write_csv(tables.adapter_modules, folder / "adapter_modules.csv"))
    if len(tables.adapter_similarity):
        written.append(write_csv(tables.adapter_similarity, folder / "adapter_similarity.csv"))
    if len(tables.directions):  # `emkit directions`
        written.append(write_csv(tables.directions, folder / "directions.csv"))
        written.append(write_csv(tables.direction_similarity, folder / "direction_similarity.csv"))
    interventions = tables.interventions
    if len(interventions):  # `emkit intervene`
        layers = ["+".join(map(str, layers)) for layers in interventions["layers"]]
        written.append(write_csv(interventions.assign(layers=layers), folder / "interventions.csv"))
    return written
