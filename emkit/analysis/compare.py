"""`emkit compare RUN_A RUN_B`: the same cells of two runs side by side, with the difference.

A cell is a judge x model x domain x seed x step present in both runs; each run's final
checkpoint is also compared as step "final", so runs with different schedules still line
up. The difference (B - A) in EM rate comes with two 95% intervals: Newcombe's, which takes
every answer as independent, and a paired cluster bootstrap over questions
(emkit.analysis.bootstrap), which does not.

``significant`` asks two things: that the cluster interval excludes 0, and that an exact
sign-flip test over questions agrees (``p_sign_flip`` <= 0.05). Its null hypothesis is that
each question's answers are exchangeable between the two runs (the same rate per question):
swapping the runs' answers to any set of questions is then as likely as what was seen, so the
share of the 2^Q swaps (all of them for up to 12 questions, 9,999 drawn beyond) whose difference
is as large is a p-value whose false-alarm rate is at most 5% by construction, where an interval
from few questions is only approximately so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emkit.analysis.bootstrap import QUESTION_CLUSTER, cluster_interval, paired_difference_interval, rate_draws
from emkit.analysis.stats import newcombe_difference_interval
from emkit.analysis.tables import RunTables

KEYS = ["judge", "model", "domain", "seed", "questions", "step"]


def _cells(tables: RunTables) -> pd.DataFrame:
    steps = tables.steps[KEYS + ["n_counted", "n_misaligned", "em_rate", "ci_low", "ci_high"]].copy()
    steps["step"] = steps["step"].astype(int).astype(str)
    last = tables.steps[tables.steps["step"] > 0].sort_values("step").groupby(KEYS[:-1], dropna=False).tail(1)
    final = last[KEYS + ["n_counted", "n_misaligned", "em_rate", "ci_low", "ci_high"]].copy()
    final["step"] = "final"
    return pd.concat([steps, final], ignore_index=True)


def _question_counts(tables: RunTables) -> pd.DataFrame:
    """Each cell's counts per question, the final checkpoint also as step "final"."""
    counts = tables.question_counts
    if counts.empty:
        return counts
    counts = counts.copy()
    trained = counts["step"] > 0
    last = counts[trained].groupby(KEYS[:-1], dropna=False, observed=True)["step"].transform("max")
    final = counts[trained][counts.loc[trained, "step"] == last].assign(step="final")
    counts["step"] = counts["step"].astype(int).astype(str)
    return pd.concat([counts, final], ignore_index=True)


def _draws(counts: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Bootstrap draws of every cell's rate."""
    if counts.empty:
        return pd.DataFrame(columns=keys), np.empty((0, 0))
    return rate_draws(counts, keys)


SIGN_FLIPS = 9999
EXACT_UP_TO = 12  # questions: every one of the 2^Q swaps is tried


def sign_flip_p(both: pd.DataFrame, counts_a: pd.DataFrame, counts_b: pd.DataFrame, keys: list[str], *,
                flips: int = SIGN_FLIPS, seed: int = 0) -> np.ndarray:
    """For each row of ``both``: the two-sided p-value of B - A under a swap of the runs' answers
    question by question (NaN where the cell has no counted answers in a run)."""
    out = np.full(len(both), np.nan)
    if both.empty or counts_a.empty or counts_b.empty:
        return out
    cells = both[keys].reset_index(drop=True).assign(_cell=np.arange(len(both)))
    cluster = [c for c in QUESTION_CLUSTER if c in counts_a and c in counts_b]
    sides = []
    for counts, side in ((counts_a, "a"), (counts_b, "b")):
        part = counts.merge(cells, on=keys, how="inner")
        sides.append(part.groupby(["_cell"] + cluster, observed=True)[["n_misaligned", "n_counted"]].sum()
                     .add_suffix(f"_{side}"))
    joined = sides[0].join(sides[1], how="outer").fillna(0.0).reset_index()
    totals = joined.groupby("_cell")[["n_counted_a", "n_counted_b"]].transform("sum")
    with np.errstate(invalid="ignore", divide="ignore"):
        contribution = (joined["n_misaligned_b"] / totals["n_counted_b"]
                        - joined["n_misaligned_a"] / totals["n_counted_a"]).to_numpy()
    usable = np.isfinite(contribution)
    joined, contribution = joined[usable], contribution[usable]
    if joined.empty:
        return out
    question = joined.groupby(cluster, observed=True).ngroup().to_numpy()
    n_questions = int(question.max()) + 1
    matrix = np.zeros((len(both), n_questions))
    np.add.at(matrix, (joined["_cell"].to_numpy(), question), contribution)
    if n_questions <= EXACT_UP_TO:
        signs = 1 - 2 * ((np.arange(2 ** n_questions)[None, :] >> np.arange(n_questions)[:, None]) & 1)
        exact = True
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_questions, flips))
        exact = False
    observed = np.abs(matrix.sum(axis=1))
    seen = np.unique(joined["_cell"].to_numpy())
    for start in range(0, len(seen), 256):
        rows = seen[start:start + 256]
        extreme = (np.abs(matrix[rows] @ signs) >= observed[rows, None] - 1e-12).sum(axis=1)
        out[rows] = extreme / signs.shape[1] if exact else (1 + extreme) / (flips + 1)
    return out


def _bootstrap_difference(a: pd.DataFrame, b: pd.DataFrame, both: pd.DataFrame, keys: list[str]):
    """Paired (the same question weights in both runs) 95% interval of B - A for each row of ``both``:
    each cell's cluster interval and the correlation of the two cells' draws (MOVER)."""
    low = np.full(len(both), np.nan)
    high = np.full(len(both), np.nan)
    (groups_a, draws_a), (groups_b, draws_b) = _draws(a, keys), _draws(b, keys)
    if not draws_a.size or not draws_b.size:
        return low, high
    at_a = both[keys].merge(groups_a.assign(_a=np.arange(len(groups_a))), on=keys, how="left")["_a"].to_numpy()
    at_b = both[keys].merge(groups_b.assign(_b=np.arange(len(groups_b))), on=keys, how="left")["_b"].to_numpy()
    found = ~(pd.isna(at_a) | pd.isna(at_b))
    if found.any():
        rows_a, rows_b = at_a[found].astype(int), at_b[found].astype(int)
        sides = []
        for groups, draws, rows in ((groups_a, draws_a, rows_a), (groups_b, draws_b, rows_b)):
            k, n = groups["_k"].to_numpy(float)[rows], groups["_n"].to_numpy(float)[rows]
            side_low, side_high, _ = cluster_interval(k, n, draws[rows], groups["_questions"].to_numpy(float)[rows])
            with np.errstate(invalid="ignore", divide="ignore"):
                sides.append((k / n, side_low, side_high, draws[rows]))
        (rate_a, low_a, high_a, d_a), (rate_b, low_b, high_b, d_b) = sides
        low[found], high[found] = paired_difference_interval(rate_a, low_a, high_a, rate_b, low_b, high_b, d_a, d_b)
    return low, high


def _asked(counts: pd.DataFrame, keys: list[str]) -> dict[tuple, frozenset]:
    """Each cell's questions (set and id) with counted answers."""
    if counts.empty:
        return {}
    counted = counts[counts["n_counted"] > 0]
    cluster = [c for c in QUESTION_CLUSTER if c in counted]
    return {key if isinstance(key, tuple) else (key,): frozenset(map(tuple, group[cluster].astype(str).to_numpy()))
            for key, group in counted.groupby(keys, observed=True, dropna=False)}


def _same_questions(both: pd.DataFrame, counts_a: pd.DataFrame, counts_b: pd.DataFrame, keys: list[str]) -> list[bool]:
    """Whether the two runs' rates of a cell are over the same questions: a difference over
    different question sets is a difference of questions as much as of runs."""
    asked_a, asked_b = _asked(counts_a, keys), _asked(counts_b, keys)
    return [asked_a.get(tuple(row)) == asked_b.get(tuple(row)) for row in both[keys].itertuples(index=False)]


def compare_runs(a: RunTables, b: RunTables) -> pd.DataFrame:
    left, right = _cells(a), _cells(b)
    keys = KEYS
    if not set(left["judge"]) & set(right["judge"]):  # different judges: compare each run's own
        keys = KEYS[1:]
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    if both.empty:
        return both
    diff, low, high = newcombe_difference_interval(both["n_misaligned_a"], both["n_counted_a"],
                                                   both["n_misaligned_b"], both["n_counted_b"])
    both["em_diff"], both["diff_ci_low"], both["diff_ci_high"] = diff, low, high
    counts_a, counts_b = _question_counts(a), _question_counts(b)
    both["diff_boot_low"], both["diff_boot_high"] = _bootstrap_difference(counts_a, counts_b, both, keys)
    both["p_sign_flip"] = sign_flip_p(both, counts_a, counts_b, keys)
    both["same_questions"] = _same_questions(both, counts_a, counts_b, keys)
    both["significant_wilson"] = (np.sign(low) == np.sign(high)) & (low != 0)
    boot_low, boot_high = both["diff_boot_low"], both["diff_boot_high"]
    both["significant"] = ((boot_low > 0) | (boot_high < 0)) & (both["p_sign_flip"] <= 0.05)
    order = {"final": 10**9}
    both["_order"] = [order.get(s, int(s) if str(s).isdigit() else 0) for s in both["step"]]
    both = both.sort_values([k for k in keys if k != "step"] + ["_order"]).drop(columns="_order")
    return both.reset_index(drop=True)
