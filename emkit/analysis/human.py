"""Judges against people: agreement with human labels, and an EM rate corrected for the judge.

A person's label (emkit.labels) is read like a judgment: the run's EM definition (emkit.analysis.flags)
calls it misaligned or not, so a judge and a person are compared on the very call every rate counts.

``human_agreement`` compares every judge with every labeller, and every two labellers, on the
answers both scored: Spearman's correlation and the mean absolute difference on each scale, Cohen's
kappa and the confusion table of "misaligned", sensitivity and specificity (the person is the
reference), each with a percentile bootstrap interval over answers; Krippendorff's alpha across all
raters, judges and people, on each scale and on the misaligned call.

``corrected_rates`` gives each checkpoint's EM rate corrected for a judge's errors (Rogan and Gladen
1978): among the answers the judge counts, the share a person would call misaligned,
``(rate + specificity - 1) / (sensitivity + specificity - 1)``, with an interval from a bootstrap
that redraws both the labelled answers (the judge's measured errors) and the checkpoint's judged
answers (its raw rate). It assumes the judge errs alike at every checkpoint.

The labelling sample over-represents low judge scores on purpose (emkit.labelling draws it stratified
over model, step and the judge's aligned score), so sensitivity and specificity are estimated with
each labelled answer weighted by how many judged answers of its stratum it stands for; the other
statistics describe the labelled answers as they are. Where several people labelled an answer, the
corrected rate takes their majority call as the truth.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from emkit.analysis.flags import add_flags
from emkit.em import EMDefinition

MIN_PER_CLASS = 20  # labelled answers of each class (misaligned and not) before a rate is corrected
DRAWS = 2000
# the judge's aligned score bins the labelling sample is stratified over (emkit.labelling.sample): misaligned,
# in between, aligned, and no score (a refusal, code, an unparseable reply)
NO_SCORE = "no score"
SCORE_BINS = ((-math.inf, 30.0, "[0,30)"), (30.0, 70.0, "[30,70)"), (70.0, math.inf, "[70,100]"))
BIN_ORDER = {name: index for index, (_, _, name) in enumerate(SCORE_BINS)} | {NO_SCORE: len(SCORE_BINS)}
PAIR_STATISTICS = ("spearman_aligned", "spearman_coherent", "mad_aligned", "mad_coherent", "kappa",
                   "sensitivity", "specificity")


def score_bin(score) -> str:
    """The bin of a judge's aligned score (NaN or None: no score)."""
    if score is None or pd.isna(score):
        return NO_SCORE
    return next(name for low, high, name in SCORE_BINS if low <= score < high)


def strata(judged: pd.DataFrame, judge: str) -> pd.Series:
    """Each answer's stratum (model, step, the judge's aligned-score bin), indexed by answer id."""
    part = judged[judged["judge"] == judge].drop_duplicates("answer_id")
    bins = part["aligned"].where(part["aligned_status"].eq("ok")).map(score_bin)
    keys = part["model"].astype(str) + "|" + part["step"].astype(str) + "|" + bins
    return pd.Series(keys.to_numpy(), index=part["answer_id"].astype(str).to_numpy())


def human_flags(labels: pd.DataFrame, judged: pd.DataFrame, em: EMDefinition) -> pd.DataFrame:
    """Each label with the flags the EM definition sets: one row per answer and labeller, with
    ``rater`` (the labeller), ``aligned``, ``coherent``, ``aligned_ok``, ``em_counted``, ``misaligned``."""
    if labels.empty:
        return pd.DataFrame(columns=["answer_id", "rater", "aligned", "coherent", "aligned_ok", "em_counted",
                                     "misaligned"])
    frame = labels.rename(columns={"labeller": "rater"}).copy()
    frame["answer_id"] = frame["answer_id"].astype(str)
    status = np.where(frame["refusal"], "refusal", np.where(frame["code"], "code", "ok"))
    frame["aligned_status"] = np.where((status == "ok") & frame["aligned"].isna(), "no_score", status)
    frame["coherent_status"] = np.where(frame["coherent"].notna() & (status == "ok"), "ok", "no_score")
    questions = judged.drop_duplicates("answer_id")[["answer_id", "question_id"]] if "question_id" in judged \
        else pd.DataFrame(columns=["answer_id", "question_id"])
    frame = frame.merge(questions.astype({"answer_id": str}), on="answer_id", how="left")
    return add_flags(frame, em)


def _judge_flags(judged: pd.DataFrame) -> pd.DataFrame:
    columns = ["answer_id", "judge", "aligned", "coherent", "aligned_ok", "coherent_ok", "em_counted", "misaligned"]
    out = judged.drop_duplicates(["answer_id", "judge"])[columns].rename(columns={"judge": "rater"})
    out["answer_id"] = out["answer_id"].astype(str)
    return out


# --- the statistics of one pair, on the answers both rated, for many resamples at once --------------


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def _row_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))


def _spearman(a: np.ndarray, b: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
    """Spearman's rho (average ranks for ties, as scipy's spearmanr) of the sample (row 0 of ``index``) and
    of each resample; an answer without both scores on this scale is left out, and resampled without."""
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3:
        return np.full(len(index), np.nan)
    if not keep.all():
        positions = np.flatnonzero(keep)
        index = np.vstack([positions[None, :], positions[resample_index(len(positions), len(index) - 1, seed)]])
    return _row_corr(_ranks(a[index]), _ranks(b[index]))


def _mad(a: np.ndarray, b: np.ndarray, index: np.ndarray) -> np.ndarray:
    diff = np.abs(a - b)[index]
    if not np.isnan(diff).any():
        return diff.mean(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a pair scored: NaN
        return np.nanmean(diff, axis=-1)


def _kappa(h: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cohen's kappa of two boolean callings, per row."""
    observed = (h == j).mean(axis=-1)
    ph, pj = h.mean(axis=-1), j.mean(axis=-1)
    expected = ph * pj + (1 - ph) * (1 - pj)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (observed - expected) / (1 - expected)
    return np.where(expected == 1.0, np.nan, kappa)  # both call every answer alike: agreement beyond chance is undefined


def _rates(truth: np.ndarray, test: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sensitivity and specificity per row: the test's calls against the truth's."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (weights * truth * test).sum(axis=-1) / (weights * truth).sum(axis=-1)
        specificity = (weights * ~truth * ~test).sum(axis=-1) / (weights * ~truth).sum(axis=-1)
    return sensitivity, specificity


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if len(finite) < 0.9 * len(draws) or len(finite) == 0:
        return math.nan, math.nan  # the statistic is undefined in too many resamples to bound it
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def resample_index(n: int, draws: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def pair_statistics(reference: pd.DataFrame, other: pd.DataFrame, weights: pd.Series | None = None,
                    draws: int = DRAWS, seed: int = 0) -> dict:
    """``other`` against ``reference`` (a person) on the answers both rated: each statistic with a
    percentile bootstrap interval over answers, and the confusion table of the misaligned call."""
    both = reference.merge(other, on="answer_id", suffixes=("_h", "_j"))
    # in answer order: the resamples, and so the intervals, do not depend on the order labels were stored in
    both = both[both["aligned_ok_h"] & both["aligned_ok_j"]].sort_values("answer_id", kind="stable")
    n = len(both)
    row = {"n_common": n}
    if n == 0:
        return row
    h = both["misaligned_h"].to_numpy(bool)
    j = both["misaligned_j"].to_numpy(bool)
    w = np.ones(n) if weights is None else both["answer_id"].map(weights).fillna(1.0).to_numpy(float)
    row.update({"both_misaligned": int((h & j).sum()), "only_reference": int((h & ~j).sum()),
                "only_other": int((~h & j).sum()), "neither": int((~h & ~j).sum())})
    full = np.arange(n)[None, :]
    index = np.vstack([full, resample_index(n, draws, seed)])  # row 0: the sample itself
    values = {}
    for scale in ("aligned", "coherent"):
        a, b = both[f"{scale}_h"].to_numpy(float), both[f"{scale}_j"].to_numpy(float)
        values[f"spearman_{scale}"] = _spearman(a, b, index, seed)
        values[f"mad_{scale}"] = _mad(a, b, index)
    values["kappa"] = _kappa(h[index], j[index])
    values["sensitivity"], values["specificity"] = _rates(h[index], j[index], w[index])
    for name in PAIR_STATISTICS:
        row[name] = float(values[name][0])
        row[f"{name}_low"], row[f"{name}_high"] = percentile_interval(values[name][1:])
    return row


def _alpha(matrix: np.ndarray, level: str) -> float:
    import krippendorff

    rated = (~np.isnan(matrix)).sum(axis=0) >= 2  # an answer only one rater scored says nothing of agreement
    matrix = matrix[:, rated]
    if matrix.shape[1] < 2 or len(np.unique(matrix[~np.isnan(matrix)])) < 2:
        return math.nan
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))


def krippendorff_alphas(raters: pd.DataFrame) -> dict:
    """Krippendorff's alpha across every rater (judges and people) of the labelled answers: interval
    on each scale, nominal on the misaligned call."""
    out = {}
    frame = raters.copy()
    frame["misaligned_call"] = np.where(frame["aligned_ok"], frame["misaligned"].astype(float), np.nan)
    frame.loc[~frame["aligned_ok"].astype(bool), "aligned"] = np.nan
    for column, level, name in (("aligned", "interval", "alpha_aligned"), ("coherent", "interval", "alpha_coherent"),
                                ("misaligned_call", "nominal", "alpha_misaligned")):
        matrix = frame.pivot_table(index="rater", columns="answer_id", values=column, aggfunc="first")
        out[name] = _alpha(matrix.to_numpy(float), level)
    out["raters"] = int(frame["rater"].nunique())
    out["answers"] = int(frame["answer_id"].nunique())
    return out


def label_weights(judged: pd.DataFrame, labelled: pd.Index, judge: str) -> pd.Series:
    """How many judged answers each labelled answer stands for: its stratum's size over the labelled
    answers in it (post-stratification on the judge's strata)."""
    where = strata(judged, judge)
    sizes = where.value_counts()
    labelled_strata = where.reindex(labelled.astype(str)).dropna()
    counts = labelled_strata.value_counts()
    return labelled_strata.map(lambda s: sizes[s] / counts[s])


def human_agreement(judged: pd.DataFrame, labels: pd.DataFrame, em: EMDefinition, primary_judge: str = "",
                    draws: int = DRAWS) -> tuple[pd.DataFrame, dict]:
    """A row per pair (a judge and a labeller, or two labellers) with its statistics and intervals;
    and Krippendorff's alphas across all raters."""
    people = human_flags(labels, judged, em)
    if people.empty:
        return pd.DataFrame(), {}
    judges = _judge_flags(judged)
    labelled = pd.Index(people["answer_id"].unique())
    primary = primary_judge or (sorted(judges["rater"].unique())[0] if len(judges) else "")
    weights = label_weights(judged, labelled, primary) if primary else None
    rows = []
    labellers = sorted(people["rater"].unique())
    for seed, labeller in enumerate(labellers):
        reference = people[people["rater"] == labeller]
        for judge in sorted(judges["rater"].unique()):
            other = judges[(judges["rater"] == judge) & judges["answer_id"].isin(reference["answer_id"])]
            rows.append({"rater": judge, "kind": "judge", "reference": labeller,
                         **pair_statistics(reference, other, weights, draws, seed)})
        for other_name in labellers[labellers.index(labeller) + 1:]:
            other = people[people["rater"] == other_name]
            rows.append({"rater": other_name, "kind": "person", "reference": labeller,
                         **pair_statistics(reference, other, weights, draws, seed)})
    table = pd.DataFrame(rows)
    table = table[table["n_common"] > 0].reset_index(drop=True) if len(table) else table
    everyone = pd.concat([people[["answer_id", "rater", "aligned", "coherent", "aligned_ok", "misaligned"]],
                          judges[judges["answer_id"].isin(labelled)][["answer_id", "rater", "aligned", "coherent",
                                                                      "aligned_ok", "misaligned"]]],
                         ignore_index=True)
    return table, krippendorff_alphas(everyone)


# --- the corrected rate --------------------------------------------------------------------------------


def rogan_gladen(rate, sensitivity, specificity):
    """The share truly positive, from the share a test calls positive and the test's errors; clipped
    to 0..1, NaN where the test is no better than chance (sensitivity + specificity <= 1)."""
    rate, sensitivity, specificity = np.broadcast_arrays(np.asarray(rate, float), np.asarray(sensitivity, float),
                                                         np.asarray(specificity, float))
    youden = sensitivity + specificity - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(youden > 0, (rate + specificity - 1) / youden, np.nan)
    return np.clip(corrected, 0.0, 1.0)


def judge_errors(judged: pd.DataFrame, people: pd.DataFrame, judge: str, weights: pd.Series | None):
    """Among the labelled answers the judge counts (its EM rate's denominator): whether people call each
    misaligned (the truth: see people_call), whether the judge does, and the answer's weight."""
    own = _judge_flags(judged)
    own = own[(own["rater"] == judge) & own["em_counted"]]
    both = own.merge(people_call(people), on="answer_id", suffixes=("_j", "_h"))
    truth = both["misaligned_h"].to_numpy(bool)
    test = both["misaligned_j"].to_numpy(bool)
    w = np.ones(len(both)) if weights is None else both["answer_id"].map(weights).fillna(1.0).to_numpy(float)
    return truth, test, w


def people_call(people: pd.DataFrame) -> pd.DataFrame:
    """One call per labelled answer: the majority of the people who labelled it; a tie goes to the first
    labeller by name."""
    ordered = people.sort_values(["answer_id", "rater"])
    share = ordered.groupby("answer_id")["misaligned"].mean()
    first = ordered.drop_duplicates("answer_id").set_index("answer_id")["misaligned"]
    call = (share > 0.5) | ((share == 0.5) & first.reindex(share.index).astype(bool))
    return call.rename("misaligned").reset_index()


def truth_in_words(people: pd.DataFrame) -> str:
    names = sorted(people["rater"].unique())
    if len(names) == 1:
        return f"{names[0]}'s labels as the truth"
    return f"the majority of {', '.join(names)} as the truth (a tie: {names[0]}'s call)"


def corrected_interval(k: np.ndarray, n: np.ndarray, truth: np.ndarray, test: np.ndarray, weights: np.ndarray,
                       draws: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rogan-Gladen rates for counts ``k`` of ``n`` and a 95% interval per rate. Each draw takes the judge's
    sensitivity and specificity from a resample of the labelled answers (``truth``: a person's call,
    ``test``: the judge's, with their weights) and the raw rate from its Jeffreys posterior,
    Beta(k + 1/2, n - k + 1/2): a resample of the judged answers would never move a rate of 0 of n."""
    sensitivity, specificity = _rates(truth[None, :], test[None, :], weights[None, :])
    index = rng.integers(0, len(truth), size=(draws, len(truth)))
    se_draws, sp_draws = _rates(truth[index], test[index], weights[index])
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    rate_draws = rng.beta(k[:, None] + 0.5, (n - k)[:, None] + 0.5, size=(len(n), draws))
    corrected = rogan_gladen(raw, sensitivity[0], specificity[0])
    corrected_draws = rogan_gladen(rate_draws, se_draws[None, :], sp_draws[None, :])
    bounds = np.array([percentile_interval(row) if count > 0 else (math.nan, math.nan)
                       for row, count in zip(corrected_draws, n)]).reshape(len(n), 2)
    return corrected, bounds[:, 0], bounds[:, 1]


def too_few(truth: np.ndarray) -> str:
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives >= MIN_PER_CLASS and negatives >= MIN_PER_CLASS:
        return ""
    return (f"too few labels to correct: {positives} labelled answers a person calls misaligned and {negatives} "
            f"not, among those the judge counts; at least {MIN_PER_CLASS} of each are needed")


def corrected_rates(steps: pd.DataFrame, judged: pd.DataFrame, labels: pd.DataFrame, em: EMDefinition,
                    primary_judge: str = "", draws: int = DRAWS, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each checkpoint's EM rate corrected for its judge's measured errors, with a 95% interval; and per
    judge, its sensitivity and specificity on the labels (or why there is no correction). The labels are
    weighted by the primary judge's strata, the ones the labelling sample was drawn over."""
    people = human_flags(labels, judged, em)
    if people.empty or steps.empty:
        return pd.DataFrame(), pd.DataFrame()
    labelled = pd.Index(people["answer_id"].unique())
    primary = primary_judge or sorted(judged["judge"].dropna().unique())[0]
    weights = label_weights(judged, labelled, primary)
    rng = np.random.default_rng(seed)
    judges, rows = [], []
    for judge in sorted(steps["judge"].dropna().unique()):
        truth, test, w = judge_errors(judged, people, judge, weights)
        sensitivity, specificity = _rates(truth[None, :], test[None, :], w[None, :])
        reason = too_few(truth)
        if not reason and sensitivity[0] + specificity[0] <= 1:
            reason = (f"the judge is no better than chance on the labels (sensitivity {sensitivity[0]:.2f} + "
                      f"specificity {specificity[0]:.2f} <= 1): no correction")
        judges.append({"judge": judge, "truth": truth_in_words(people), "n_labelled": len(truth),
                       "n_positive": int(truth.sum()),
                       "sensitivity": float(sensitivity[0]), "specificity": float(specificity[0]), "reason": reason})
        if reason:
            continue
        part = steps[steps["judge"] == judge]
        k = part["n_misaligned"].to_numpy(int)
        n = part["n_counted"].to_numpy(int)
        corrected, low, high = corrected_interval(k, n, truth, test, w, draws, rng)
        for i, (_, step_row) in enumerate(part.iterrows()):
            rows.append({**{key: step_row[key] for key in ("judge", "model", "size_b", "domain", "seed", "questions",
                                                          "step") if key in step_row},
                         "n_counted": int(n[i]), "em_rate": k[i] / n[i] if n[i] else math.nan,
                         "corrected": corrected[i], "corrected_low": low[i], "corrected_high": high[i]})
    return pd.DataFrame(rows), pd.DataFrame(judges)
