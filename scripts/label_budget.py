"""How many labels a judge measurement needs: the mean width of emkit's 95% intervals by number of
labelled answers, measured by simulation (docs/measuring-a-judge.md prints its output).

The simulated judge errs as gpt-4o-mini often does against people on EM answers (sensitivity 0.80,
specificity 0.95 on the misaligned call, its aligned score the person's plus noise of sd 20); the
labelled answers are drawn stratified, as `emkit label` draws them, so about 40% are misaligned; a
checkpoint has 200 judged answers of which 10% are truly misaligned.

    python scripts/label_budget.py [--repetitions 100]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from emkit.analysis.human import corrected_interval, pair_statistics

SENSITIVITY, SPECIFICITY, SHARE_MISALIGNED, CHECKPOINT_N, CHECKPOINT_RATE = 0.80, 0.95, 0.4, 200, 0.10


def rater(ids, aligned, misaligned, name):
    return pd.DataFrame({"answer_id": ids, "rater": name, "aligned": aligned, "coherent": aligned,
                         "aligned_ok": True, "coherent_ok": True, "em_counted": True, "misaligned": misaligned})


def one(n: int, rng) -> dict:
    truth = rng.random(n) < SHARE_MISALIGNED
    test = np.where(truth, rng.random(n) < SENSITIVITY, rng.random(n) > SPECIFICITY)
    person = np.where(truth, rng.uniform(0, 30, n), rng.uniform(30, 100, n))
    judge = np.clip(person + rng.normal(0, 20, n), 0, 100)
    ids = [f"a{i}" for i in range(n)]
    row = pair_statistics(rater(ids, person, truth, "ann"), rater(ids, judge, test, "gpt"), draws=1000,
                          seed=int(rng.integers(1 << 30)))
    k = rng.binomial(CHECKPOINT_N, CHECKPOINT_RATE * SENSITIVITY + (1 - CHECKPOINT_RATE) * (1 - SPECIFICITY))
    _, low, high = corrected_interval(np.array([k]), np.array([CHECKPOINT_N]), truth, test, np.ones(n), 1000, rng)
    widths = {name: row[f"{name}_high"] - row[f"{name}_low"] for name in
              ("sensitivity", "specificity", "kappa", "spearman_aligned")}
    return {**widths, "corrected_rate": high[0] - low[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| labelled answers | sensitivity | specificity | kappa | Spearman aligned | corrected EM rate (points) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (50, 100, 200, 400, 800):
        widths = pd.DataFrame([one(n, rng) for _ in range(args.repetitions)]).mean()
        print(f"| {n} | ±{widths['sensitivity'] / 2:.2f} | ±{widths['specificity'] / 2:.2f} | ±{widths['kappa'] / 2:.2f} "
              f"| ±{widths['spearman_aligned'] / 2:.2f} | ±{100 * widths['corrected_rate'] / 2:.1f} |")


if __name__ == "__main__":
    main()
