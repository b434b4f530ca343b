"""The statistics emkit reports, small enough to check by hand.

Every EM rate is a proportion of few answers (20 per checkpoint in the seed), so each
comes with a Wilson 95% interval, which stays inside [0, 1] and behaves at 0% and 100%
where the normal approximation does not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def wilson_interval(successes, trials, z: float = Z95):
    """Wilson score interval; arrays in, arrays out; NaN where trials is 0."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denominator
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
        low = np.where(n > 0, np.clip(centre - half, 0, 1), np.nan)
        high = np.where(n > 0, np.clip(centre + half, 0, 1), np.nan)
    # exact at the edges (the formula gives 0 and 1 there up to rounding)
    low = np.where((k == 0) & (n > 0), 0.0, low)
    high = np.where((k == n) & (n > 0), 1.0, high)
    return low, high


def difference_interval(k1, n1, k2, n2, z: float = Z95):
    """95% interval of p2 - p1 by Newcombe's method (hybrid Wilson score), for comparing runs."""
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
