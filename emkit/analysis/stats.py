"""The statistics emkit reports, small enough to check by hand.

Every EM rate is a proportion of few answers (20 per checkpoint in the seed), so each comes
with Wilson's score interval, which stays inside [0, 1] and behaves at 0% and 100% where the
normal approximation does not, with the continuity correction (Newcombe 1998, method 4): plain
Wilson's coverage swings with n and p below its promise (0.928 at 40 answers and p = 0.2, 0.905
near 0), the corrected interval's stays at or above 0.95 at every p (n = 20 to 2,000; computed
exactly in tests/test_interval_coverage.py), for 4 to 12% more width. A difference of two rates
is Newcombe's hybrid score interval built from the same corrected intervals (method 11:
``newcombe_difference_interval``). Judge agreement is Cohen's kappa and Spearman's correlation.
Every interval here is closed-form; the cluster bootstrap's are in emkit.analysis.bootstrap.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def wilson_interval(successes, trials, z=Z95, continuity: bool = True):
    """Wilson's score interval, with the continuity correction unless ``continuity`` is False;
    arrays in, arrays out (``z`` too); NaN where trials is 0. Counts need not be whole (an
    effective number of answers)."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = np.asarray(z, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        if continuity:  # Newcombe (1998), method 4
            q = 1 - p
            root_low = np.sqrt(np.maximum(z * z - 2 - 1 / n + 4 * p * (n * q + 1), 0))
            root_high = np.sqrt(np.maximum(z * z + 2 - 1 / n + 4 * p * (n * q - 1), 0))
            low = (2 * n * p + z * z - 1 - z * root_low) / (2 * (n + z * z))
            high = (2 * n * p + z * z + 1 + z * root_high) / (2 * (n + z * z))
        else:
            denominator = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / denominator
            half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
            low, high = centre - half, centre + half
        low = np.where(n > 0, np.clip(low, 0, 1), np.nan)
        high = np.where(n > 0, np.clip(high, 0, 1), np.nan)
    # exact at the edges (the formula gives 0 and 1 there up to rounding)
    low = np.where((k == 0) & (n > 0), 0.0, low)
    high = np.where((k == n) & (n > 0), 1.0, high)
    return low, high


def newcombe_difference_interval(k1, n1, k2, n2, z: float = Z95):
    """p2 - p1 and its 95% interval for two independent proportions (k1 of n1, k2 of n2), by
    Newcombe's hybrid score method from continuity-corrected Wilson intervals (Newcombe 1998,
    method 11): every answer taken as independent. Two rates over the same questions are not;
    their paired interval is emkit.analysis.bootstrap.paired_difference_interval."""
    p1 = np.asarray(k1, float) / np.asarray(n1, float)
    p2 = np.asarray(k2, float) / np.asarray(n2, float)
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    diff = p2 - p1
    low = diff - np.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = diff + np.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return diff, low, high


def cohen_kappa(a, b) -> float:
    """Agreement of two boolean labelings beyond chance; NaN when undefined."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if len(a) == 0:
        return math.nan
    observed = float(np.mean(a == b))
    pa, pb = float(np.mean(a)), float(np.mean(b))
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else math.nan
    return (observed - expected) / (1 - expected)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or no spread."""
    frame = pd.DataFrame({"x": x, "y": y}).dropna()
    if len(frame) < 3:
        return math.nan
    rx = frame["x"].rank(method="average")
    ry = frame["y"].rank(method="average")
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
