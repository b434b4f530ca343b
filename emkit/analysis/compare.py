"""`emkit compare RUN_A RUN_B`: the same cells of two runs side by side, with the difference.

A cell is a judge x model x domain x seed x step present in both runs; each run's final
checkpoint is also compared as step "final", so runs with different schedules still line
up. The difference (B - A) in EM rate comes with a Newcombe 95% interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    both["significant"] = (np.sign(low) == np.sign(high)) & (low != 0)
    order = {"final": 10**9}
    both["_order"] = [order.get(s, int(s) if str(s).isdigit() else 0) for s in both["step"]]
    both = both.sort_values([k for k in keys if k != "step"] + ["_order"]).drop(columns="_order")
    return both.reset_index(drop=True)
