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
n_eff, with deff at least 1 (Korn & Graubard 1998's interval for proportions from clustered
samples), so it behaves at the edges, and is never narrower than Wilson's. A difference between
two rates is the percentile interval of the paired draws' differences, since a difference has
no edge to stick to; where the draws do not vary at all it falls back to Newcombe's.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

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
    the seed's weight times the question's."""
    if per_question.empty:
        return pd.DataFrame(columns=keys), np.empty((0, draws))
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
    # sum over seeds s and questions q of w_s w_q K[g, s, q], for every draw b
    numerator = np.einsum("gsq,sb,qb->gb", k, seed_weights, weights, optimize=True)
    denominator = np.einsum("gsq,sb,qb->gb", n, seed_weights, weights, optimize=True)
    groups = groups.assign(_k=k.sum(axis=(1, 2)), _n=n.sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return groups, numerator / np.where(denominator > 0, denominator, np.nan)


def percentile_interval(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of each row; NaN where no draw has a rate."""
    if draws.size == 0:
        return np.empty(len(draws)), np.empty(len(draws))
    with np.errstate(invalid="ignore"), _quiet_all_nan():
        low, high = np.nanpercentile(draws, [2.5, 97.5], axis=1)
    return low, high


class _quiet_all_nan:
    """np.nanpercentile warns for a row with no rate (a checkpoint with nothing counted): that
    row's interval is NaN, which is the answer."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def design_effect(k, n, draws: np.ndarray) -> np.ndarray:
    """The bootstrap variance of each rate over the binomial variance of as many independent
    answers; at least 1, and 1 where the rate is 0 or 1 (no variance to compare)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_all_nan():
        p = k / n
        binomial = p * (1 - p) / n
        observed = np.nanvar(draws, axis=1, ddof=1) if draws.size else np.full(len(k), np.nan)
        deff = np.where(binomial > 0, observed / binomial, 1.0)
    return np.where(np.isfinite(deff), np.maximum(deff, 1.0), 1.0)


def cluster_interval(k, n, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wilson's interval at the effective number of answers n / deff; also deff."""
    from emkit.analysis.stats import wilson_interval

    deff = design_effect(k, n, draws)
    n_eff = np.asarray(n, float) / deff
    low, high = wilson_interval(np.asarray(k, float) / deff, n_eff)
    return low, high, deff


def with_bootstrap(frame: pd.DataFrame, per_question: pd.DataFrame, keys: list[str], *, by_seed: bool = False,
                   prefix: str = "boot") -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """``frame`` with ``{prefix}_low``, ``{prefix}_high`` and ``{prefix}_deff`` (the design effect) for each
    of its ``keys`` groups; also the groups and draws, for differences."""
    groups, draws = rate_draws(per_question, keys, by_seed=by_seed)
    if len(groups):
        low, high, deff = cluster_interval(groups["_k"], groups["_n"], draws)
    else:
        low = high = deff = np.empty(0)
    bounds = groups.drop(columns=["_k", "_n"], errors="ignore").assign(
        **{f"{prefix}_low": low, f"{prefix}_high": high, f"{prefix}_deff": deff})
    out = frame.drop(columns=[f"{prefix}_low", f"{prefix}_high", f"{prefix}_deff"], errors="ignore")
    return out.merge(bounds, on=keys, how="left"), groups, draws


def difference_interval(draws_a: np.ndarray, draws_b: np.ndarray, fallback=None) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of b - a from paired draws (rows aligned). ``fallback`` (low, high): used for rows
    whose draws do not vary (both rates stuck at 0% or 100%), where percentiles would claim certainty."""
    low, high = percentile_interval(np.asarray(draws_b) - np.asarray(draws_a))
    if fallback is not None:
        stuck = ~(high > low)
        low = np.where(stuck, fallback[0], low)
        high = np.where(stuck, fallback[1], high)
    return low, high
