"""Misalignment directions as tables: what `emkit directions` stored, per checkpoint and layer.

A row per training run, step, judge and layer: how many answers the direction was fitted on
and scored on, its norm and held-out AUROC (empty where there were too few answers of a
group), its cosine to the run's reference direction (the final checkpoint's, at the same
layer), and the mean projection of the checkpoint's answers on that reference, all of them and
by group. ``similarity``: the cosine between the directions of every two (run, step) of one
model at each layer, the question of whether the medical run's direction is the financial
run's. Only directions of one model are compared: two models' residual streams are different
spaces, even at equal widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emkit.analysis.store_reader import StoreReader

COLUMNS = ["run_key", "step", "judge", "layer", "n_fit_misaligned", "n_fit_aligned", "n_held_misaligned",
           "n_held_aligned", "norm", "auroc", "reference", "cos_reference", "projection_all",
           "projection_misaligned", "projection_aligned", "projection_other"]
SIMILARITY_COLUMNS = ["judge", "layer", "run_key_a", "step_a", "run_key_b", "step_b", "cosine"]


def read_directions(store_path: Path, models: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(directions, similarity) of a run's store, ``models`` naming each run_key's model; empty frames
    where none were found."""
    empty = (pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=SIMILARITY_COLUMNS))
    with StoreReader(store_path) as reader:
        if "directions" not in reader.tables:
            return empty
        found = reader.frame("""SELECT run_key, step, judge, layer, n_fit_misaligned, n_fit_aligned, n_held_misaligned,
                                       n_held_aligned, norm, auroc, vector FROM directions""")
        projected = reader.frame("SELECT run_key, step, judge, reference, layer, answers, projection "
                                 "FROM direction_projections")
    if found.empty:
        return empty
    vectors = {(r.run_key, r.step, r.judge, r.layer): np.frombuffer(r.vector, dtype=np.float32)
               for r in found.itertuples() if r.vector is not None}
    wide = (projected.pivot_table(index=["run_key", "step", "judge", "reference", "layer"], columns="answers",
                                  values="projection", aggfunc="first").add_prefix("projection_").reset_index()
            if len(projected) else pd.DataFrame(columns=["run_key", "step", "judge", "reference", "layer"]))
    table = found.drop(columns="vector").merge(wide, on=["run_key", "step", "judge", "layer"], how="left")
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    table["cos_reference"] = [_cosine(vectors.get((r.run_key, r.step, r.judge, r.layer)),
                                      _reference_vector(vectors, r.reference, r.judge, r.layer))
                              for r in table.itertuples()]
    table = table[COLUMNS].sort_values(["run_key", "judge", "step", "layer"]).reset_index(drop=True)
    return table, similarity(vectors, models)


def _reference_vector(vectors: dict, reference, judge: str, layer: int):
    if not isinstance(reference, str) or "@" not in reference:
        return None
    run_key, step = reference.rsplit("@", 1)
    return vectors.get((run_key, int(step), judge, layer))


def _cosine(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denominator) if denominator else float("nan")


def similarity(vectors: dict, models: dict) -> pd.DataFrame:
    """The cosine of every two directions of one model (``models``: run_key -> model) at the same judge
    and layer."""
    rows = []
    keys = sorted(vectors)
    for i, (run_a, step_a, judge, layer) in enumerate(keys):
        for run_b, step_b, judge_b, layer_b in keys[i + 1:]:
            a, b = vectors[(run_a, step_a, judge, layer)], vectors[(run_b, step_b, judge_b, layer_b)]
            same_model = models.get(run_a) is not None and models.get(run_a) == models.get(run_b)
            if judge_b == judge and layer_b == layer and same_model and a.shape == b.shape:
                rows.append((judge, layer, run_a, step_a, run_b, step_b, _cosine(a, b)))
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)
