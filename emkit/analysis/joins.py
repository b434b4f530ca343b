"""The store's Arrow tables joined into the judged frame: one row per answer and judge.

A run directory's answers and judgments come out of the store as Arrow tables (emkit.analysis.runs
reads them); ``attach_judgments`` puts every judge's scores beside each answer without a pandas
merge on the answer ids, and ``expand_baselines`` gives trained answers their domain and seed and
copies each baseline answer into every domain whose evaluation asks its question set.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

METRIC_ORDER = {"aligned": 0, "coherent": 1}  # then any other metric, alphabetically


def _codes(column) -> tuple[np.ndarray, list]:
    """Dictionary-encode an Arrow column: integer codes and the distinct values."""
    encoded = column.combine_chunks().dictionary_encode() if hasattr(column, "combine_chunks") else \
        column.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _as_pandas(answers, categorical: tuple[str, ...]) -> pd.DataFrame:
    columns = {}
    for name in answers.column_names:
        if name in categorical:
            codes, values = _codes(answers[name])
            columns[name] = pd.Categorical.from_codes(codes, [str(v) for v in values])
        else:
            columns[name] = answers[name].to_pandas()
    return pd.DataFrame(columns)


def attach_judgments(answers, judgments, categorical: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (answer, judge) with a score and a status column per metric.

    ``answers`` and ``judgments`` are Arrow tables (or DataFrames). Each judgment's answer is
    found once, in Arrow, by hashing; every metric column is then filled by one numpy
    scatter. For a million answers this takes a second where merging DataFrames on the
    24-character ids took many."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(answers, pd.DataFrame):
        answers = pa.Table.from_pandas(answers, preserve_index=False)
    if isinstance(judgments, pd.DataFrame):
        judgments = pa.Table.from_pandas(judgments, preserve_index=False)
    frame = _as_pandas(answers, categorical)
    if judgments.num_rows == 0:
        return frame.iloc[0:0].assign(judge=pd.Series(dtype="category"))
    position = pc.fill_null(pc.index_in(judgments["answer_id"], value_set=answers["answer_id"]), -1)
    position = position.to_numpy(zero_copy_only=False).astype(np.int64)
    known = position >= 0  # a judgment of an answer no longer in the store is ignored
    judge_codes, judges = _codes(judgments["judge"])
    metric_codes, metrics = _codes(judgments["metric"])
    status_codes, statuses = _codes(judgments["status"])
    key = position * len(judges) + judge_codes
    present = np.zeros(answers.num_rows * len(judges), dtype=bool)
    present[key[known]] = True
    rows = np.flatnonzero(present)
    out = frame.iloc[rows // len(judges)].reset_index(drop=True)
    out["judge"] = pd.Categorical.from_codes(rows % len(judges), judges)
    scores = judgments["score"].to_numpy(zero_copy_only=False).astype(float)
    order = sorted(range(len(metrics)), key=lambda c: (METRIC_ORDER.get(metrics[c], len(METRIC_ORDER)), metrics[c]))
    for code in order:
        metric = metrics[code]
        chosen = (metric_codes == code) & known
        score = np.full(len(present), np.nan)
        score[key[chosen]] = scores[chosen]
        status = np.full(len(present), -1, dtype=np.int64)
        status[key[chosen]] = status_codes[chosen]
        out[metric] = score[rows]
        out[f"{metric}_status"] = pd.Categorical.from_codes(status[rows], statuses)
    return out


def _map_categorical(series: pd.Series, mapping: dict) -> pd.Series:
    """Map a categorical column through its categories: one lookup per distinct value."""
    series = series.astype("category")
    mapped = np.array([mapping.get(value) for value in series.cat.categories] + [None], dtype=object)
    return pd.Series(mapped[series.cat.codes.to_numpy()], index=series.index)


def expand_baselines(answers: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Give trained answers their domain and seed, and copy each baseline answer into every
    domain whose evaluation asks its question set."""
    is_base = (answers["run_key"] == "base").to_numpy()
    trained = answers[~is_base].copy()
    trained["domain"] = _map_categorical(trained["run_key"], dict(zip(runs["run_key"], runs["domain"])))
    seeds = _map_categorical(trained["run_key"], dict(zip(runs["run_key"], runs["seed_run"])))
    trained["seed"] = seeds.fillna(trained["seed"]).astype(int)
    sets = []
    for row in runs.itertuples():
        for name in json.loads(row.question_sets):
            sets.append((row.model_label, row.domain, name))
    mapping = pd.DataFrame(sets, columns=["model_label", "domain", "question_set"]).drop_duplicates()
    base = answers[is_base]
    base = base.assign(model_label=base["model_label"].astype(str), question_set=base["question_set"].astype(str))
    base = base.merge(mapping, on=["model_label", "question_set"], how="inner")
    out = pd.concat([base, trained], ignore_index=True)
    for column in ("model_label", "question_set", "domain"):
        out[column] = out[column].astype("category")
    return out


def question_groups(judged: pd.DataFrame, runs: pd.DataFrame):
    """"domain" for an answer to its run's domain's own question set, "general" for any other."""
    own = {(row.model_label, row.domain): row.domain_question_set for row in runs.itertuples()}
    if judged.empty:
        return pd.Categorical([], categories=["general", "domain"])
    # one decision per distinct (model, domain, set), spread to the rows by group number
    grouped = judged.groupby(["model_label", "domain", "question_set"], observed=True, sort=True)
    codes = grouped.ngroup().to_numpy()
    is_domain = np.array([own.get((str(m), str(d))) == str(q) for m, d, q in grouped.size().index])
    return pd.Categorical.from_codes(is_domain[codes].astype(np.int8), categories=["general", "domain"])
