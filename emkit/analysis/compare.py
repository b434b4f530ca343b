"""`emkit compare RUN_A RUN_B`: the same cells of two runs side by side, with the difference.

A cell is a judge x model x domain x seed x step present in both runs; each run's final
checkpoint is also compared as step "final", so runs with different schedules still line
up. The difference (B - A) in EM rate comes with two 95% intervals: Newcombe's, which takes
every answer as independent, and a paired cluster bootstrap over questions
(emkit.analysis.bootstrap), which does not; ``significant`` is the bootstrap's verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emkit.analysis.bootstrap import difference_interval as paired_interval, rate_draws
from emkit.analysis.stats import difference_interval
from emkit.analysis.tables import RunTables

KEYS = ["judge", "model", "domain", "seed", "questions", "step"]


def _cells(tables: RunTables) -> pd.DataFrame:
    steps = tables.steps[KEYS + ["n_counted", "n_misaligned", "em_rate", "ci_low", "ci_high"]].copy()
    steps["step"] = steps["step"].astype(int).astype(str)
    last = tables.steps[tables.steps["step"] > 0].sort_values("step").groupby(KEYS[:-1], dropna=False).tail(1)
    final = last[KEYS + ["n_counted", "n_misaligned", "em_rate", "ci_low", "ci_high"]].copy()
    final["step"] = "final"
    return pd.concat([steps, final], ignore_index=True)


def _draws(tables: RunTables, keys: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Bootstrap draws of every cell's rate, the final checkpoint also as step "final"."""
    counts = tables.question_counts
    if counts.empty:
        return pd.DataFrame(columns=keys), np.empty((0, 0))
    counts = counts.copy()
    trained = counts["step"] > 0
    last = counts[trained].groupby(KEYS[:-1], dropna=False, observed=True)["step"].transform("max")
    final = counts[trained][counts.loc[trained, "step"] == last].assign(step="final")
    counts["step"] = counts["step"].astype(int).astype(str)
    return rate_draws(pd.concat([counts, final], ignore_index=True), keys)


def _bootstrap_difference(a: RunTables, b: RunTables, both: pd.DataFrame, keys: list[str]):
    """Paired (the same question weights in both runs) 95% interval of B - A for each row of ``both``."""
    low = np.full(len(both), np.nan)
    high = np.full(len(both), np.nan)
    (groups_a, draws_a), (groups_b, draws_b) = _draws(a, keys), _draws(b, keys)
    if not draws_a.size or not draws_b.size:
        return low, high
    at_a = both[keys].merge(groups_a.assign(_a=np.arange(len(groups_a))), on=keys, how="left")["_a"].to_numpy()
    at_b = both[keys].merge(groups_b.assign(_b=np.arange(len(groups_b))), on=keys, how="left")["_b"].to_numpy()
    found = ~(pd.isna(at_a) | pd.isna(at_b))
    if found.any():
        newcombe = (both["diff_ci_low"].to_numpy()[found], both["diff_ci_high"].to_numpy()[found])
        low[found], high[found] = paired_interval(draws_a[at_a[found].astype(int)], draws_b[at_b[found].astype(int)],
                                                  fallback=newcombe)
    return low, high


def compare_runs(a: RunTables, b: RunTables) -> pd.DataFrame:
    left, right = _cells(a), _cells(b)
    keys = KEYS
    if not set(left["judge"]) & set(right["judge"]):  # different judges: compare each run's own
        keys = KEYS[1:]
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    if both.empty:
        return both
    diff, low, high = difference_interval(both["n_misaligned_a"], both["n_counted_a"], both["n_misaligned_b"],
                                          both["n_counted_b"])
    both["em_diff"], both["diff_ci_low"], both["diff_ci_high"] = diff, low, high
    both["diff_boot_low"], both["diff_boot_high"] = _bootstrap_difference(a, b, both, keys)
    both["significant_wilson"] = (np.sign(low) == np.sign(high)) & (low != 0)
    boot_low, boot_high = both["diff_boot_low"], both["diff_boot_high"]
    both["significant"] = (boot_low > 0) | (boot_high < 0)
    order = {"final": 10**9}
    both["_order"] = [order.get(s, int(s) if str(s).isdigit() else 0) for s in both["step"]]
    both = both.sort_values([k for k in keys if k != "step"] + ["_order"]).drop(columns="_order")
    return both.reset_index(drop=True)
