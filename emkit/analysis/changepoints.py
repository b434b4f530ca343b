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

A report tests many trajectories (every run x question group x judge, and each pooled over
seeds), and at alpha = 0.05 each, a report of 18 flat trajectories would call at least one
change more often than not. The strongest splits of all the report's trajectories are one
family, corrected by Benjamini & Hochberg (1995): the null hypothesis of each is "this
trajectory's EM rate is the same at every step" (each question's answers exchangeable over the
steps), and ``significant`` means its BH-adjusted p (``p_adjusted``) is at most alpha. Where no
trajectory changes, the chance of calling any change is at most alpha (BH controls the
family-wise error under the complete null); where some do, at most alpha of the changes called
are expected to be false. A further change inside a significant trajectory (binary segmentation)
is tested at the level its parent passed, alpha x R / m (R of the m trajectories significant),
as in Yekutieli's (2008) hierarchical testing. A permutation p-value cannot go below
1 / (permutations + 1), so a trajectory near the BH threshold is tested again with enough
permutations to pass it.
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
    permutations: int = 0  # when it took more than the default


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


@dataclass
class _Trajectory:
    scope: str
    key: dict
    steps: np.ndarray
    k: np.ndarray
    n: np.ndarray
    weights: np.ndarray
    first: Change


def _trajectories(per_question: pd.DataFrame, keys: list[str], by_seed: bool, scope: str,
                  permutations: int) -> list[_Trajectory]:
    out = []
    stratum = (["seed"] if by_seed else []) + [c for c in QUESTION_CLUSTER if c in per_question]
    for key, frame in per_question.groupby(keys, dropna=False, sort=True, observed=True):
        steps, k, n, names = _trajectory_matrix(frame, stratum)
        if len(steps) < 2:
            continue
        # the location's support resamples questions only: the seeds of a pooled trajectory are few
        question_names = ["question\x1f" + name.split("\x1f", 1)[1] if by_seed else "question\x1f" + name
                          for name in names]
        weights = cluster_weights(question_names, 200)
        first = best_change(k, n, permutations=permutations, weights=weights)
        if first is not None:
            out.append(_Trajectory(scope, dict(zip(keys, key if isinstance(key, tuple) else (key,))), steps, k, n,
                                   weights, first))
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values (the smallest false discovery rate at which each is rejected)."""
    p = np.asarray(p_values, float)
    if not len(p):
        return p
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def report_change_points(families, *, permutations: int = PERMUTATIONS, alpha: float = ALPHA,
                         max_changes: int = MAX_CHANGES) -> pd.DataFrame:
    """The change points of every trajectory of a report, tested as one family (BH). ``families``:
    (per_question, keys, by_seed, scope) for each kind of trajectory: per run (judge, model, domain,
    seed, questions) and pooled over seeds (the same without seed, ``by_seed``). ``per_question``
    has n_counted and n_misaligned per step and question (and seed). One row per change: the
    strongest split of every trajectory, and further ones inside a significant trajectory."""
    trajectories = [t for frame, keys, by_seed, scope in families
                    for t in _trajectories(frame, keys, by_seed, scope, permutations)]
    m = len(trajectories)
    if m:
        # a p-value at the permutation floor cannot pass alpha / m: test those again with more
        needed = int(np.ceil(10 * m / alpha))
        for t in trajectories:
            if needed > permutations and t.first.p_value <= min(1.0, 2 * alpha):
                again = best_change(t.k, t.n, permutations=needed, weights=t.weights)
                t.first.p_value, t.first.permutations = again.p_value, needed
    adjusted = benjamini_hochberg([t.first.p_value for t in trajectories])
    passed = int((adjusted <= alpha).sum())
    level = alpha * passed / m if m else 0.0  # the BH threshold the significant trajectories passed
    rows = []
    for t, first_adjusted in zip(trajectories, adjusted):
        changes = [(t.first, first_adjusted)]
        if first_adjusted <= alpha and max_changes > 1:
            for change in _segment(t, level, max_changes - 1, permutations):
                changes.append((change, min(1.0, change.p_value * m / max(passed, 1))))
        changes.sort(key=lambda pair: pair[0].index)
        bounds = [-1] + [c.index for c, _ in changes] + [len(t.steps) - 1]
        for i, (change, p_adjusted) in enumerate(changes):
            # each side runs to the neighbouring change, or to the trajectory's end
            before = _rate(t.k, t.n, slice(bounds[i] + 1, change.index + 1))
            after = _rate(t.k, t.n, slice(change.index + 1, bounds[i + 2] + 1))
            rows.append({**t.key, "scope": t.scope,
                         "step_before": int(t.steps[change.index]), "step_after": int(t.steps[change.index + 1]),
                         "em_before": before, "em_after": after, "jump": after - before,
                         "statistic": change.statistic, "p_value": change.p_value, "p_adjusted": p_adjusted,
                         "significant": bool(p_adjusted <= alpha), "support": change.support,
                         "n_steps": len(t.steps), "permutations": change.permutations or permutations,
                         "trajectories_tested": m})
    keys = list(dict.fromkeys(k for family in families for k in family[1]))
    return pd.DataFrame(rows, columns=keys + CHANGE_COLUMNS)


CHANGE_COLUMNS = ["scope", "step_before", "step_after", "em_before", "em_after", "jump", "statistic", "p_value",
                  "p_adjusted", "significant", "support", "n_steps", "permutations", "trajectories_tested"]


def _segment(t: _Trajectory, level: float, budget: int, permutations: int) -> list[Change]:
    """Binary segmentation inside a significant trajectory: the strongest split on each side of
    the first change, kept when its p is at most ``level``, and so on, ``budget`` more at most."""
    found: list[Change] = []
    segments = [(0, t.first.index + 1), (t.first.index + 1, len(t.steps))]
    while segments and len(found) < budget:
        start, end = segments.pop(0)
        if end - start < 2:
            continue
        change = best_change(t.k[:, start:end], t.n[:, start:end], permutations=permutations,
                             weights=t.weights, seed=start)
        if change is None or change.p_value > level:
            continue
        change.index += start
        found.append(change)
        segments += [(start, change.index + 1), (change.index + 1, end)]
    return found


def change_points(per_question: pd.DataFrame, keys: list[str], *, by_seed: bool = False,
                  permutations: int = PERMUTATIONS, alpha: float = ALPHA,
                  max_changes: int = MAX_CHANGES) -> pd.DataFrame:
    """The change points of the trajectories of ``keys`` as a family of their own (a report tests
    all of its trajectories together: report_change_points)."""
    found = report_change_points([(per_question, keys, by_seed, "seeds pooled" if by_seed else "run")],
                                 permutations=permutations, alpha=alpha, max_changes=max_changes)
    return found[keys + [c for c in CHANGE_COLUMNS if c != "scope"]]


def _rate(k, n, part: slice) -> float:
    counted = n[:, part].sum()
    return float(k[:, part].sum() / counted) if counted else float("nan")
