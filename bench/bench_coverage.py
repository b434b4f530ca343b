"""How often each interval emkit prints covers what it estimates, against the uncorrected intervals
of before (a cluster bootstrap without a small-sample correction, plain Wilson), in one run:

    python bench/bench_coverage.py [--reps 2000]

Questions are drawn from a population (each question's log-odds of a misaligned answer ~
Normal(mu, sigma)); docs/reliability.md says which quantity each interval is for. The tests
(tests/test_interval_coverage.py) assert the corrected ones at 1,000 replicates; this prints both
at more, and the change-point family's false alarms per report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from emkit.analysis.bootstrap import cluster_interval, paired_difference_interval, rate_draws
from emkit.analysis.stats import wilson_interval


def logistic(x):
    return 1 / (1 + np.exp(-x))


def frame(k: np.ndarray, samples: int) -> pd.DataFrame:
    reps, questions = k.shape
    return pd.DataFrame({"rep": np.repeat(np.arange(reps), questions), "question_set": "s",
                         "question_id": np.tile([f"q{i}" for i in range(questions)], reps),
                         "n_counted": samples, "n_misaligned": k.ravel()})


def covered(low, high, truth) -> float:
    return float(((np.asarray(low) <= truth) & (truth <= np.asarray(high))).mean())


def rates(reps: int, rng) -> list[str]:
    lines = []
    population = rng.standard_normal(2_000_000)
    for questions, samples in ((8, 5), (40, 5)):
        for mu, sigma in ((-2.2, 0.0), (-2.2, 1.5), (-0.85, 1.0), (0.0, 1.5)):
            truth = logistic(mu + sigma * population).mean()
            p = logistic(mu + sigma * rng.standard_normal((reps, questions)))
            k = rng.binomial(samples, p)
            groups, draws = rate_draws(frame(k, samples), ["rep"])
            old = cluster_interval(groups["_k"], groups["_n"], draws)  # no correction: z, variance as drawn
            new = cluster_interval(groups["_k"], groups["_n"], draws, groups["_questions"])
            plain = wilson_interval(k.sum(1), np.full(reps, questions * samples), continuity=False)
            corrected = wilson_interval(k.sum(1), np.full(reps, questions * samples))
            fixed = p.mean(axis=1)
            lines.append(f"rate {questions:>2} q x {samples} s, rate {truth:4.0%}, sigma {sigma:3.1f}: cluster "
                         f"{covered(*old[:2], truth):.3f} -> {covered(*new[:2], truth):.3f}; answers as independent "
                         f"(these questions' rate) Wilson {covered(*plain, fixed):.3f} -> with correction "
                         f"{covered(*corrected, fixed):.3f}")
    return lines


def differences(reps: int, rng) -> list[str]:
    lines = []
    zz, ee = rng.standard_normal(2_000_000), rng.standard_normal(2_000_000)
    for questions, samples in ((8, 5), (40, 5)):
        for mu, sigma, shift, tau in ((-2.2, 1.0, 0.0, 0.5), (-0.85, 1.0, 0.0, 0.5), (-1.0, 0.0, 0.0, 0.0),
                                      (-2.2, 1.0, 1.0, 0.5), (-4.0, 1.0, 5.5, 0.5)):
            truth = (logistic(mu + shift + sigma * zz + tau * ee) - logistic(mu + sigma * zz)).mean()
            z, e = rng.standard_normal((reps, questions)), rng.standard_normal((reps, questions))
            ka = rng.binomial(samples, logistic(mu + sigma * z))
            kb = rng.binomial(samples, logistic(mu + shift + sigma * z + tau * e))
            groups_a, draws_a = rate_draws(frame(ka, samples), ["rep"])
            groups_b, draws_b = rate_draws(frame(kb, samples), ["rep"])
            with np.errstate(invalid="ignore"):
                old_low, old_high = np.nanpercentile(draws_b - draws_a, [2.5, 97.5], axis=1)
            sides = []
            for groups, draws in ((groups_a, draws_a), (groups_b, draws_b)):
                low, high, _ = cluster_interval(groups["_k"], groups["_n"], draws, groups["_questions"])
                sides += [groups["_k"] / groups["_n"], low, high]
            new = paired_difference_interval(*sides, draws_a, draws_b)
            lines.append(f"change {questions:>2} q x {samples} s, true change {truth:+.2f}: paired cluster "
                         f"{covered(old_low, old_high, truth):.3f} -> {covered(*new, truth):.3f}; called a change "
                         f"{np.mean((old_low > 0) | (old_high < 0)):.3f} -> {np.mean((new[0] > 0) | (new[1] < 0)):.3f}")
    return lines


def change_points(reports: int) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_emergence import KEYS, trajectory  # the tests' own flat trajectories

    from emkit.analysis.changepoints import report_change_points

    with_a_change = unadjusted = 0
    for report in range(reports):
        frames = [trajectory([0.15] * 7, spread=1.5, seed=1000 * report + i).assign(model=f"m{i}") for i in range(6)]
        found = report_change_points([(pd.concat(frames, ignore_index=True), KEYS, False, "run")], permutations=199)
        with_a_change += bool(found["significant"].any())
        unadjusted += bool((found["p_value"] <= 0.05).any())
    return (f"reports of 6 flat trajectories calling a change: {unadjusted / reports:.3f} tested one by one -> "
            f"{with_a_change / reports:.3f} as one family (Benjamini-Hochberg), {reports} reports")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--reports", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    started = time.time()
    for line in rates(args.reps, rng) + differences(args.reps, rng) + [change_points(args.reports)]:
        print(line)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
