"""A checkpoint's direction, fitted from its answers' mean activations as they stream past.

Every answer is seen once. Answers are split by a hash of their id into a fitting part (3 of
4) and a held-out part (1 of 4), and the fitting answers come first: their activations are
summed per group, so when the first held-out answer arrives the direction is known (the mean
of the misaligned minus the mean of the aligned, per layer) and each held-out answer is scored
by its projection on it. The held-out scores give the AUROC: the chance that a misaligned
answer projects further along the direction than an aligned one (0.5: the direction tells
them apart no better than a coin). Memory: two sums and a few floats per held-out answer.

Projections on a reference direction (the run's chosen one, from another checkpoint or
another run) are taken of every answer, misaligned, aligned or neither, so a checkpoint with
too few answers of one group for a direction of its own still has a place on the timeline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

GROUPS = ("misaligned", "aligned")


def held_out(answer_id: str) -> bool:
    """One answer in four, by a hash of its id: the same answers whatever else was stored."""
    return hashlib.sha256(answer_id.encode()).digest()[0] % 4 == 0


@dataclass
class Fitted:
    """What one checkpoint's answers give, per layer (``layers`` in order)."""

    layers: list[int]
    n_fit: dict  # group -> answers the direction was fitted on
    n_held_out: dict  # group -> held-out answers scored
    direction: object | None  # [layers, hidden] float32 tensor, or None with too few answers
    auroc: list[float | None]  # per layer; None without held-out answers of both groups
    projection: dict = field(default_factory=dict)  # group ("all" too) -> [layers] mean projection on the reference
    n_projected: dict = field(default_factory=dict)  # group -> answers projected

    @property
    def norm(self) -> list[float] | None:
        return None if self.direction is None else [float(v) for v in self.direction.norm(dim=1)]

    @property
    def best_layer(self) -> int | None:
        scored = [(a, layer) for a, layer in zip(self.auroc, self.layers) if a is not None]
        return max(scored, key=lambda pair: pair[0])[1] if scored else None


def auroc(positive, negative) -> float | None:
    """P(a positive scores above a negative) + half the ties: the Mann-Whitney U over n1 n2."""
    if not len(positive) or not len(negative):
        return None
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(positive, negative).statistic) / (len(positive) * len(negative))


def fit(stream, layers: list[int], min_answers: int, reference=None) -> Fitted:
    """``stream`` yields (answer_id, group, means) in the order of ``ordered`` (fitting answers
    first): ``group`` is "misaligned", "aligned" or anything else (projected, never fitted),
    ``means`` a [len(layers), hidden] tensor. ``reference``: a direction of that shape to project on.
    A direction is fitted only from at least ``min_answers`` fitting answers of each group."""
    sums, n_fit, scores = {}, {g: 0 for g in GROUPS}, {g: [] for g in GROUPS}
    projected_sum, n_projected = {}, {}
    unit_reference = None if reference is None else reference / reference.norm(dim=1, keepdim=True).clamp(min=1e-12)
    direction = unit = None
    fitting_done = False
    for answer_id, group, means in stream:
        means = means.float()
        if unit_reference is not None:
            along = (means * unit_reference).sum(dim=1)
            for key in ("all", group):
                projected_sum[key] = projected_sum.get(key, 0) + along
                n_projected[key] = n_projected.get(key, 0) + 1
        if group not in GROUPS:
            continue
        if not held_out(answer_id):
            if fitting_done:
                raise ValueError("fitting answers must come before held-out ones (see ordered())")
            sums[group] = sums.get(group, 0) + means
            n_fit[group] += 1
            continue
        if not fitting_done:
            fitting_done = True
            direction, unit = _direction(sums, n_fit, min_answers)
        if unit is not None:
            scores[group].append((means * unit).sum(dim=1))
    if not fitting_done:
        direction, unit = _direction(sums, n_fit, min_answers)
    per_layer = [auroc([float(s[i]) for s in scores["misaligned"]], [float(s[i]) for s in scores["aligned"]])
                 if unit is not None else None for i in range(len(layers))]
    return Fitted(list(layers), n_fit, {g: len(scores[g]) for g in GROUPS},
                  direction, per_layer,
                  {key: (total / n_projected[key]).tolist() for key, total in projected_sum.items()}, n_projected)


def _direction(sums: dict, counts: dict, min_answers: int):
    if any(counts[g] < max(1, min_answers) for g in GROUPS):
        return None, None
    direction = sums["misaligned"] / counts["misaligned"] - sums["aligned"] / counts["aligned"]
    return direction, direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)


def ordered(answers: list, key=lambda a: a, length=lambda a: 0) -> list:
    """Fitting answers first, then held-out ones (the order ``fit`` needs), each part by ``length``
    so that a batch's rows are of similar lengths."""
    return sorted(answers, key=lambda a: (held_out(key(a)), length(a)))
