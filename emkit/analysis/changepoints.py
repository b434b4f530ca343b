"""Where EM jumps: change points in an EM trajectory, each with a permutation test.

A trajectory is the EM rate at each checkpoint of a run (step 0 is the base model), made of
whole answers: K misaligned of N counted at each step. A change point splits the steps into
a before and an after whose rates differ; the best split is the one with the largest
binomial likelihood ratio against one rate for all steps. Segments are found by binary
segmentation (split, then look inside each side), the search that ruptures' ``Binseg`` runs;
it is written here because a trajectory is a handful of steps of weighted binomial counts,
not the long signal of equally weighted points ruptures' costs expect.

Is the jump real? Under "no change" the answers to one question are exchangeable across
steps, so the test permutes each question's answers over the steps (a stratified permutation:
a question that draws misaligned answers at every step stays one) and asks how often the best
split of the permuted trajectory is as strong as the one found; searching for the best split
is part of the statistic, so the p-value pays for having looked. Each question's permuted
counts are drawn directly (a multivariate hypergeometric, one step at a time), not by shuffling.

How sure is the location? A cluster bootstrap over questions (emkit.analysis.bootstrap's
weights) finds the best split again in each draw; ``support`` is the share that put it at the
same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from emkit.analysis.bootstrap import QUESTION_CLUSTER, cluster_codes, cluster_weights

PERMUTATIONS = 999
ALPHA = 0.05
MAX_CHANGES = 2


def _loglik(k, n):
    """Binomial log-likelihood at the segment's own rate (0 log 0 = 0); arrays in, arrays out."""
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        a = np.where(k > 0, k * np.log(np.where(p > 0, p, 1)), 0.0)
        b = np.where(n - k > 0, (n - k) * np.log(np.where(p < 1, 1 - p, 1)), 0.0)
    return np.where(n > 0, a + b, 0.0)


def split_statistics(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The likelihood ratio of every split (after position i, i = 0..T-2) of trajectories ``k`` and
    ``n`` (... x T): a last axis of steps, any leading axes (permutations, draws)."""
    ck, cn = np.cumsum(k, axis=-1), np.cumsum(n, axis=-1)
    total_k, total_n = ck[..., -1:], cn[..., -1:]
    left = _loglik(ck[..., :-1], cn[..., :-1])
    right = _loglik(total_k - ck[..., :-1], total_n - cn[..., :-1])
    return 2 * (left + right - _loglik(total_k, total_n))


def permuted_counts(k: np.ndarray, n: np.ndarray, permutations: int, rng) -> np.ndarray:
    """Misaligned counts per step (permutations x T) after permuting each stratum's answers over the
    steps. ``k`` and ``n``: strata x T."""
    k, n = np.rint(k).astype(np.int64), np.rint(n).astype(np.int64)
    remaining_k = np.broadcast_to(k.sum(axis=1), (permutations, len(k))).copy()
    remaining_n = np.broadcast_to(n.sum(axis=1), (permutations, len(k))).copy()
    out = np.zeros((permutations, k.shape[1]))
    for t in range(k.shape[1]):
        take = np.broadcast_to(n[:, t], remaining_n.shape)
        if t == k.shape[1] - 1:
            drawn = remaining_k
        else:  # this step's share of the stratum's misaligned answers still to place
            drawn = rng.hypergeometric(remaining_k, remaining_n - remaining_k, take)
        out[:, t] = drawn.sum(axis=1)
        remaining_k = remaining_k - drawn
        remaining_n = remaining_n - take
    return out


@dataclass
class Change:
    index: int  # the last step before the change (position in the trajectory)
    statistic: float
    p_value: float
    support: float


def best_change(k: np.ndarray, n: np.ndarray, *, permutations: int = PERMUTATIONS, seed: int = 0,
                weights: np.ndarray | None = None) -> Change | None:
    """The strongest split of one trajectory: ``k``, ``n`` are strata x T counts (a stratum is one
    question, or a seed x question). ``weights`` (strata x draws) are the bootstrap weights for the
    location's support. None with fewer than two steps that have counted answers."""
    total_k, total_n = k.sum(axis=0), n.sum(axis=0)
    if (total_n > 0).sum() < 2 or total_k.sum() == 0 or total_k.sum() == total_n.sum():
        return None  # no answers to split, or every answer alike: no change can be seen
    stats = split_statistics(total_k, total_n)
    index = int(np.argmax(stats))
    rng = np.random.default_rng(seed)
    null = split_statistics(permuted_counts(k, n, permutations, rng), np.broadcast_to(total_n, (permutations,
                                                                                                len(total_n))))
    p_value = (1 + int((null.max(axis=1) >= stats[index] - 1e-9).sum())) / (permutations + 1)
    support = float("nan")
    if weights is not None and len(weights):
        draws_k, draws_n = weights.T @ k, weights.T @ n  # draws x T
        support = float(np.mean(np.argmax(split_statistics(draws_k, draws_n), axis=1) == index))
    return Change(index, float(stats[index]), p_value, support)


def find_changes(k: np.ndarray, n: np.ndarray, *, alpha: float = ALPHA, max_changes: int = MAX_CHANGES,
                 permutations: int = PERMUTATIONS, weights=None, seed: int = 0) -> list[Change]:
    """Binary segmentation: the strongest split, tested; if it is significant, the same inside each
    side, until ``max_changes`` are found or no split is significant. The first change is always
    returned (so the report can say how unsure it is); the others only when significant."""
    found: list[Change] = []
    segments = [(0, k.shape[1])]
    while segments and len(found) < max_changes:
        start, end = segments.pop(0)
        if end - start < 2:
            continue
        change = best_change(k[:, start:end], n[:, start:end], permutations=permutations, weights=weights,
                             seed=seed + start)
        if change is None:
            continue
        change.index += start
        if change.p_value > alpha:
            if not found:
                found.append(change)
            continue
        found.append(change)
        segments += [(start, change.index + 1), (change.index + 1, end)]
    return sorted(found, key=lambda c: c.index)


def _trajectory_matrix(frame: pd.DataFrame, stratum: list[str]):
    steps = np.sort(frame["step"].unique())
    s_codes, s_names = cluster_codes(frame, stratum)
    t_codes = np.searchsorted(steps, frame["step"].to_numpy())
    shape = (len(s_names), len(steps))
    k = np.zeros(shape)
    n = np.zeros(shape)
    np.add.at(k, (s_codes, t_codes), frame["n_misaligned"].to_numpy(float))
    np.add.at(n, (s_codes, t_codes), frame["n_counted"].to_numpy(float))
    return steps, k, n, list(s_names)


def change_points(per_question: pd.DataFrame, keys: list[str], *, by_seed: bool = False,
                  permutations: int = PERMUTATIONS, alpha: float = ALPHA,
                  max_changes: int = MAX_CHANGES) -> pd.DataFrame:
    """One row per change found in each trajectory of ``keys`` (a run: judge, model, domain, seed,
    questions; pooled over seeds: the same without seed and ``by_seed``). ``per_question`` has
    n_counted and n_misaligned per step and question (and seed)."""
    rows = []
    stratum = (["seed"] if by_seed else []) + [c for c in QUESTION_CLUSTER if c in per_question]
    for key, frame in per_question.groupby(keys, dropna=False, sort=True, observed=True):
        steps, k, n, names = _trajectory_matrix(frame, stratum)
        if len(steps) < 2:
            continue
        # the location's support resamples questions only: the seeds of a pooled trajectory are few
        question_names = ["question\x1f" + name.split("\x1f", 1)[1] if by_seed else "question\x1f" + name
                          for name in names]
        weights = cluster_weights(question_names, 200)
        changes = find_changes(k, n, alpha=alpha, max_changes=max_changes, permutations=permutations,
                               weights=weights)
        bounds = [-1] + [c.index for c in changes] + [len(steps) - 1]
        for i, change in enumerate(changes):
            # each side runs to the neighbouring change, or to the trajectory's end
            before = _rate(k, n, slice(bounds[i] + 1, change.index + 1))
            after = _rate(k, n, slice(change.index + 1, bounds[i + 2] + 1))
            rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                         "step_before": int(steps[change.index]), "step_after": int(steps[change.index + 1]),
                         "em_before": before, "em_after": after, "jump": after - before,
                         "statistic": change.statistic, "p_value": change.p_value,
                         "significant": change.p_value <= alpha, "support": change.support,
                         "n_steps": len(steps), "permutations": permutations})
    columns = keys + ["step_before", "step_after", "em_before", "em_after", "jump", "statistic", "p_value",
                      "significant", "support", "n_steps", "permutations"]
    return pd.DataFrame(rows, columns=columns)


def _rate(k, n, part: slice) -> float:
    counted = n[:, part].sum()
    return float(k[:, part].sum() / counted) if counted else float("nan")
