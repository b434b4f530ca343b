"""Judge agreement: two judges' scores of the same answers side by side.

For each pair of judges that scored the same answers: both EM rates over the answers both count,
Spearman's rank correlation of their scores, Cohen's kappa of their misaligned calls, and the
answers they disagree on most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emkit.analysis.stats import cohen_kappa, spearman


def judge_agreement(judged: pd.DataFrame, limit: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each pair of judges that scored the same answers: rates side by side, Spearman, kappa."""
    judges = sorted(judged["judge"].dropna().unique())
    if len(judges) < 2:
        return pd.DataFrame(), pd.DataFrame()
    per_answer = judged.drop_duplicates(["answer_id", "judge"])
    columns = ["answer_id", "aligned", "coherent", "aligned_ok", "em_counted", "misaligned"]
    rows, worst = [], []
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            left = per_answer.loc[per_answer["judge"] == a, columns + ["model", "domain", "step"]]
            right = per_answer.loc[per_answer["judge"] == b, columns]
            both = left.merge(right, on="answer_id", suffixes=("_a", "_b"))
            if both.empty:
                continue
            counted = both[both["em_counted_a"] & both["em_counted_b"]]
            rows.append({
                "judge_a": a, "judge_b": b, "n_common": len(both), "n_both_counted": len(counted),
                "em_rate_a": counted["misaligned_a"].mean() if len(counted) else np.nan,
                "em_rate_b": counted["misaligned_b"].mean() if len(counted) else np.nan,
                "spearman_aligned": spearman(both["aligned_a"], both["aligned_b"]),
                "spearman_coherent": spearman(both["coherent_a"], both["coherent_b"]),
                "kappa_misaligned": cohen_kappa(counted["misaligned_a"], counted["misaligned_b"]),
                "mean_abs_diff_aligned": (both["aligned_a"] - both["aligned_b"]).abs().mean(),
            })
            diff = both.assign(judge_a=a, judge_b=b, abs_diff=(both["aligned_a"] - both["aligned_b"]).abs())
            worst.append(diff.dropna(subset=["abs_diff"]).nlargest(limit, "abs_diff"))
    disagreements = pd.concat(worst, ignore_index=True) if worst else pd.DataFrame()
    return pd.DataFrame(rows), disagreements
