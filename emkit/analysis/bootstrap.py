"""Intervals that respect how the answers were sampled: a cluster bootstrap over questions and seeds.

Wilson's interval treats every answer as independent. They are not: the 20 answers of a
checkpoint are 20 samples of a few questions, and a question that draws misaligned answers
draws many; two checkpoints of one run share the seed's whole history. Resampling whole
questions (and, pooled over seeds, whole seeds) keeps that dependence.

The resampling is a Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012): each
cluster gets an independent Poisson(1) weight per draw, which approximates drawing clusters
with replacement and lets one set of weights serve every table. A cluster's weights are seeded
by its name, so the same question has the same weights at every checkpoint and in every run:
a difference between two checkpoints, or two runs asked the same questions, is a *paired*
bootstrap, and every interval is reproducible. A rate is sum(w K) / sum(w N) over the clusters
(K misaligned of N counted).

A rate's interval is not the draws' percentiles: at 0% or 100%, where a base model's EM usually
is, every draw is the same and the percentiles would claim certainty. The draws give the
variance instead, and its ratio to the binomial variance is the design effect (Kish): how many
independent answers the clustered ones are worth, n_eff = n / deff. The interval is Wilson's at
n_eff (Korn & Graubard 1998's interval for proportions from clustered samples), joined with
Wilson's own at n, so it behaves at the edges and is never narrower than Wilson's.

Few clusters need a small-sample correction, or the intervals are too narrow: at 8 questions x 5
samples the uncorrected ones covered 0.89 to 0.93 where they promise 0.95. With G clusters the
bootstrap variance of a mean is (G - 1) / G of the variance's unbiased estimate, and that
estimate has G - 1 degrees of freedom: the variance is scaled by G / (G - 1) and the critical
value is Student's t with G - 1 degrees of freedom instead of the normal 1.96, the usual
correction of cluster-robust variances (Bell & McCaffrey 2002; Cameron & Miller 2015). Pooled
over seeds, seeds and questions are both clusters: the degrees of freedom are Satterthwaite's,
from the variance each alone contributes; with two seeds, one (a seed-to-seed spread seen twice
says almost nothing). A difference between two rates on the same questions comes from the two
rates' own cluster intervals and the correlation of their paired draws (MOVER, Zou & Donner
2008; ``paired_difference_interval``), so it inherits their small-sample correction and stays within
[-1, 1]: ``step_changes`` gives every checkpoint its change from the previous one and from step 0
this way, and `emkit compare` two runs' difference. docs/reliability.md
gives each interval's coverage, measured by the simulation tests in tests/test_interval_coverage.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from emkit.analysis.stats import Z95, wilson_interval

DRAWS = 1000
QUESTION_CLUSTER = ["question_set", "question_id"]


def cluster_weights(names, draws: int = DRAWS) -> np.ndarray:
    """Poisson(1) weights, one row per cluster name, the same for a name wherever it appears."""
    out = np.empty((len(names), draws))
    for i, name in enumerate(names):
        seed = int.from_bytes(hashlib.sha256(str(name).encode()).digest()[:8], "little")
        out[i] = np.random.default_rng(seed).poisson(1.0, draws)
    return out


def cluster_codes(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each row's cluster number, and the clusters' names (their columns' values joined)."""
    grouped = frame.groupby(columns, sort=True, observed=True, dropna=False)
    names = ["\x1f".join(map(str, key if isinstance(key, tuple) else (key,))) for key in grouped.size().index]
    return grouped.ngroup().to_numpy(), names


def rate_draws(per_question: pd.DataFrame, keys: list[str], *, by_seed: bool = False,
               draws: int = DRAWS) -> tuple[pd.DataFrame, np.ndarray]:
    """The groups of ``keys`` (a frame, one row each) and their bootstrap draws of the EM rate
    (groups x draws). ``per_question`` has n_counted and n_misaligned per question (and seed).
    With ``by_seed`` the seeds are resampled too: a cluster is a seed x question cell weighted by
    the seed's weight times the question's. The groups carry ``_k`` and ``_n`` (the counts),
    ``_questions`` and ``_seeds`` (how many of each have counted answers: the small-sample
    correction's G) and ``_df`` (its degrees of freedom)."""
    if per_question.empty:
        return pd.DataFrame(columns=keys + ["_k", "_n", "_questions", "_seeds", "_df"]), np.empty((0, draws))
    grouped = per_question.groupby(keys, dropna=False, sort=True, observed=True)
    group = grouped.ngroup().to_numpy()
    groups = grouped.size().reset_index()[keys]
    q_code, q_names = cluster_codes(per_question, [c for c in QUESTION_CLUSTER if c in per_question])
    weights = cluster_weights([f"question\x1f{n}" for n in q_names], draws)
    if by_seed:
        s_code, s_names = cluster_codes(per_question, ["seed"])
        seed_weights = cluster_weights([f"seed\x1f{n}" for n in s_names], draws)
    else:
        s_code, seed_weights = np.zeros(len(per_question), dtype=int), np.ones((1, draws))
    n_seeds, n_questions = len(seed_weights), len(weights)
    cell = (group * n_seeds + s_code) * n_questions + q_code
    size = len(groups) * n_seeds * n_questions
    k = np.bincount(cell, per_question["n_misaligned"].to_numpy(float), size).reshape(len(groups), n_seeds,
                                                                                         n_questions)
    n = np.bincount(cell, per_question["n_counted"].to_numpy(float), size).reshape(len(groups), n_seeds,
                                                                                      n_questions)
    rates = _weighted_rates(k, n, seed_weights, weights)
    questions = (n.sum(axis=1) > 0).sum(axis=1)
    seeds = (n.sum(axis=2) > 0).sum(axis=1)
    df = np.maximum(questions - 1, 1).astype(float)
    if by_seed:
        # Satterthwaite's degrees of freedom from what seeds alone and questions alone contribute
        by_seeds = _variance(_weighted_rates(k, n, seed_weights, np.ones_like(weights)), seeds)
        by_questions = _variance(_weighted_rates(k, n, np.ones_like(seed_weights), weights), questions)
        with np.errstate(invalid="ignore", divide="ignore"):
            satterthwaite = (by_seeds + by_questions) ** 2 / (
                by_seeds ** 2 / np.maximum(seeds - 1, 1) + by_questions ** 2 / np.maximum(questions - 1, 1))
        bounded = np.clip(np.nan_to_num(satterthwaite, nan=1.0), 1, np.maximum(seeds * questions - 1, 1))
        df = np.where(seeds > 2, bounded, np.where(seeds == 2, 1.0, df))
    groups = groups.assign(_k=k.sum(axis=(1, 2)), _n=n.sum(axis=(1, 2)), _questions=questions, _seeds=seeds, _df=df)
    return groups, rates


def _weighted_rates(k: np.ndarray, n: np.ndarray, seed_weights: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum over seeds s and questions q of w_s w_q K[g, s, q] / the same of N, for every draw b."""
    numerator = np.einsum("gsq,sb,qb->gb", k, seed_weights, weights, optimize=True)
    denominator = np.einsum("gsq,sb,qb->gb", n, seed_weights, weights, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / np.where(denominator > 0, denominator, np.nan)


def _variance(draws: np.ndarray, clusters) -> np.ndarray:
    """The draws' variance, scaled by G / (G - 1) for G clusters: a bootstrap over few clusters
    underestimates the variance by (G - 1) / G."""
    clusters = np.asarray(clusters, float)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_all_nan():
        observed = np.nanvar(draws, axis=1, ddof=1) if draws.size and draws.shape[1] > 1 else \
            np.full(len(draws), np.nan)
    finite = np.isfinite(clusters) & (clusters > 1)
    return observed * np.where(finite, clusters / np.where(finite, clusters - 1, 1.0), 1.0)


def critical_value(df) -> np.ndarray:
    """Student's t for a two-sided 95% interval with ``df`` degrees of freedom."""
    from scipy.stats import t

    return t.ppf(0.975, np.maximum(np.asarray(df, float), 1.0))


class _quiet_all_nan:
    """np.nanpercentile warns for a row with no rate (a checkpoint with nothing counted): that
    row's interval is NaN, which is the answer."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Degrees of freedom <= 0", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def design_effect(k, n, variance) -> np.ndarray:
    """The (corrected) bootstrap variance of each rate over the binomial variance of as many
    independent answers; 1 where the rate is 0 or 1 (no variance to compare)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        binomial = p * (1 - p) / n
        deff = np.where(binomial > 0, np.asarray(variance, float) / binomial, 1.0)
    return np.where(np.isfinite(deff) & (deff > 0), deff, 1.0)


def cluster_interval(k, n, draws: np.ndarray, clusters=None, df=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wilson's interval at the effective number of answers n / deff, with Student's t on ``df``
    degrees of freedom (default: clusters - 1) as its critical value, joined with Wilson's at n;
    also deff (at least 1). ``clusters``: how many questions (G); default: the draws' groups
    taken as having many."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    clusters = np.full(len(k), np.inf) if clusters is None else np.asarray(clusters, float)
    df = np.maximum(clusters - 1, 1) if df is None else np.asarray(df, float)
    deff = design_effect(k, n, _variance(draws, clusters))
    crit = np.where(np.isfinite(df), critical_value(np.where(np.isfinite(df), df, 1.0)), Z95)
    low, high = wilson_interval(k / deff, n / deff, crit, continuity=False)
    plain_low, plain_high = wilson_interval(k, n)  # continuity-corrected: the answers-as-independent interval
    return np.fmin(low, plain_low), np.fmax(high, plain_high), np.maximum(deff, 1.0)


def with_bootstrap(frame: pd.DataFrame, per_question: pd.DataFrame, keys: list[str], *, by_seed: bool = False,
                   prefix: str = "boot") -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """``frame`` with ``{prefix}_low``, ``{prefix}_high`` and ``{prefix}_deff`` (the design effect) for each
    of its ``keys`` groups; also the groups and draws, for differences."""
    groups, draws = rate_draws(per_question, keys, by_seed=by_seed)
    if len(groups):
        # pooled over seeds, the scarcer of seeds and questions sets the correction: G / (G - 1) is
        # the larger of S / (S - 1) and Q / (Q - 1)
        clusters = np.minimum(groups["_seeds"], groups["_questions"]) if by_seed else groups["_questions"]
        low, high, deff = cluster_interval(groups["_k"], groups["_n"], draws, clusters, groups["_df"])
    else:
        low = high = deff = np.empty(0)
    bounds = groups.drop(columns=["_k", "_n", "_questions", "_seeds", "_df"], errors="ignore").assign(
        **{f"{prefix}_low": low, f"{prefix}_high": high, f"{prefix}_deff": deff})
    out = frame.drop(columns=[f"{prefix}_low", f"{prefix}_high", f"{prefix}_deff"], errors="ignore")
    return out.merge(bounds, on=keys, how="left"), groups, draws


def paired_difference_interval(rate_a, low_a, high_a, rate_b, low_b, high_b, draws_a: np.ndarray,
                               draws_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of b - a for two rates measured on the same questions, by MOVER (Zou & Donner
    2008: Newcombe's square-and-add of each rate's own interval, extended to correlated rates):
    each side's distance to its own cluster interval, joined with the correlation of the paired
    bootstrap draws. It inherits the rates' small-sample correction and their behaviour at 0% and
    100%, so it stays within [-1, 1] where estimate +- t x sd would not (a base model at 0% and a
    checkpoint at 85%)."""
    a, b = np.asarray(rate_a, float), np.asarray(rate_b, float)
    low_a, high_a = np.asarray(low_a, float), np.asarray(high_a, float)
    low_b, high_b = np.asarray(low_b, float), np.asarray(high_b, float)
    r = _row_correlation(np.asarray(draws_a, float), np.asarray(draws_b, float), len(a))
    down_b, up_a = b - low_b, high_a - a
    up_b, down_a = high_b - b, a - low_a
    difference = b - a
    low = difference - np.sqrt(np.maximum(down_b ** 2 - 2 * r * down_b * up_a + up_a ** 2, 0))
    high = difference + np.sqrt(np.maximum(up_b ** 2 - 2 * r * up_b * down_a + down_a ** 2, 0))
    return low, high


def _row_correlation(draws_a: np.ndarray, draws_b: np.ndarray, rows: int) -> np.ndarray:
    """The correlation of each row's paired draws; 0 where a side does not vary (or has no draws)."""
    if draws_a.size == 0 or draws_b.size == 0:
        return np.zeros(rows)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_all_nan():
        da = draws_a - np.nanmean(draws_a, axis=1, keepdims=True)
        db = draws_b - np.nanmean(draws_b, axis=1, keepdims=True)
        r = np.nanmean(da * db, axis=1) / np.sqrt(np.nanmean(da * da, axis=1) * np.nanmean(db * db, axis=1))
    return np.clip(np.where(np.isfinite(r), r, 0.0), -1.0, 1.0)


def step_changes(steps: pd.DataFrame, groups: pd.DataFrame, draws: np.ndarray, trajectory: list[str]) -> pd.DataFrame:
    """Each checkpoint's change in EM rate from the previous one and from step 0 of its trajectory
    (the rows of one ``trajectory`` key, over the steps), with paired intervals: each rate's cluster
    interval and the correlation of their draws over the same question weights
    (paired_difference_interval). ``steps`` has ``em_rate``, ``boot_low`` and ``boot_high``;
    ``groups`` and ``draws`` are with_bootstrap's, over ``trajectory + ["step"]``."""
    keys = trajectory + ["step"]
    out = steps.merge(groups[keys].assign(_draw=np.arange(len(groups))), on=keys, how="left")
    out = out.sort_values(keys).reset_index(drop=True)
    along = out.groupby(trajectory, dropna=False, sort=False, observed=True)
    columns = ["_draw", "em_rate", "boot_low", "boot_high"]
    for name, other in (("prev", along[columns].shift(1)), ("base", along[columns].transform("first"))):
        valid = (other["_draw"].notna() & out["_draw"].notna() & (out["step"] > 0) & out["em_rate"].notna()
                 & other["em_rate"].notna()).to_numpy()
        low = np.full(len(out), np.nan)
        high = np.full(len(out), np.nan)
        if valid.any() and draws.size:
            mine, theirs = out[valid], other[valid]
            low[valid], high[valid] = paired_difference_interval(
                theirs["em_rate"], theirs["boot_low"], theirs["boot_high"], mine["em_rate"], mine["boot_low"],
                mine["boot_high"], draws[theirs["_draw"].astype(int).to_numpy()],
                draws[mine["_draw"].astype(int).to_numpy()])
        out[f"change_{name}"] = np.where(valid, out["em_rate"] - other["em_rate"], np.nan)
        out[f"change_{name}_low"], out[f"change_{name}_high"] = low, high
    return out.drop(columns=["_draw"])
