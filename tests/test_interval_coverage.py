"""Every interval emkit prints, checked for what it promises: 95% intervals that cover their
quantity at least 94% of the time, at 8 questions x 5 samples and at 40 questions x 5 samples.

Where a coverage can be computed exactly (intervals of independent answers: a sum over every
possible count), it is; otherwise it is simulated with fixed seeds through the same functions
the tables use. Each interval has its own quantity, and docs/reliability.md says which:

- Wilson's interval with continuity correction ("answers as independent"): the rate of these
  questions, each answer an independent draw (the question set fixed).
- The cluster interval (the one the report tells readers to quote): the rate over the
  population of questions these were drawn from, questions differing as real ones do
  (each question's log-odds of a misaligned answer ~ Normal(mu, sigma)).
- The change from one checkpoint to another (paired, the same questions) and `emkit compare`'s
  difference between runs: the difference of those population rates.
- Pooled over seeds: the rate over the population of seeds and questions (each seed's
  log-odds shifted by its own Normal(0, sigma_seed) draw).
"""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from emkit.analysis.bootstrap import with_bootstrap
from emkit.analysis.stats import newcombe_difference_interval, wilson_interval

REPS = 1000
SETTINGS = [(8, 5), (40, 5)]  # questions x samples
# (mu, sigma): a rate near 10%, near 30% and 50%, with questions alike and questions that differ (the
# course's questions differ by about sigma 1 to 1.5)
RATES = [(-2.2, 0.0), (-2.2, 1.5), (-0.85, 1.0), (0.0, 1.5)]


def logistic(x):
    return 1 / (1 + np.exp(-x))


def population_rate(mu, sigma, shift=0.0, tau=0.0, size=2_000_000, seed=99):
    """E[logistic(mu + shift + sigma z + tau e)] over the population, by a large sample."""
    rng = np.random.default_rng(seed)
    z, e = rng.standard_normal(size), rng.standard_normal(size)
    return logistic(mu + shift + sigma * z + tau * e).mean(), z, e


def per_question(k: np.ndarray, samples: int, **columns) -> pd.DataFrame:
    """Counts of ``k`` (replicates x questions) as the tables hold them: a replicate is a model."""
    reps, questions = k.shape
    return pd.DataFrame({"judge": "j", "model": np.repeat([f"r{i}" for i in range(reps)], questions),
                         "domain": "d", "seed": 0, "questions": "all", "question_set": "s",
                         "question_id": np.tile([f"q{i}" for i in range(questions)], reps),
                         "n_counted": samples, "n_misaligned": k.ravel(), **columns})


def covered(low, high, truth) -> float:
    low, high, truth = map(np.asarray, (low, high, truth))
    return float(((low <= truth) & (truth <= high)).mean())


# --- answers as independent: computed exactly -----------------------------------------------------


@pytest.mark.parametrize("n", [20, 40, 200, 600])
def test_wilson_with_continuity_correction_covers_at_every_rate(n):
    """Exact coverage over a fine grid of true rates. Plain Wilson's swings below its promise (0.928
    at 40 answers and p = 0.2); the continuity-corrected interval emkit prints does not."""
    k = np.arange(n + 1)
    low, high = wilson_interval(k, np.full(n + 1, n))
    rates = np.linspace(0.005, 0.995, 199)
    coverage = np.array([binom.pmf(k, n, p)[(low <= p) & (p <= high)].sum() for p in rates])
    assert coverage.min() >= 0.95
    if n == 40:
        plain_low, plain_high = wilson_interval(k, np.full(n + 1, n), continuity=False)
        plain = binom.pmf(k, n, 0.2)[(plain_low <= 0.2) & (0.2 <= plain_high)].sum()
        assert plain < 0.94  # why the correction


@pytest.mark.parametrize("n", [40, 200])
def test_newcombe_difference_covers_at_every_pair_of_rates(n):
    """Exact coverage of Newcombe's interval (from continuity-corrected Wilson, method 11) for two
    independent counts of n answers each."""
    k = np.arange(n + 1)
    k1, k2 = np.meshgrid(k, k, indexing="ij")
    _, low, high = newcombe_difference_interval(k1, np.full_like(k1, n), k2, np.full_like(k2, n))
    for p1 in (0.02, 0.1, 0.3, 0.5):
        for p2 in (0.02, 0.1, 0.3, 0.5, 0.8):
            weight = np.outer(binom.pmf(k, n, p1), binom.pmf(k, n, p2))
            inside = (low <= p2 - p1) & (p2 - p1 <= high)
            assert weight[inside].sum() >= 0.94, (p1, p2)


# --- the cluster interval of a rate: simulated ---------------------------------------------------


@pytest.mark.parametrize("questions, samples, mu, sigma",
                         [(q, s, mu, sigma) for q, s in SETTINGS for mu, sigma in RATES]
                         # questions far apart (a 20% rate's spread from 1% to 80%), with enough of them; at 8
                         # questions this covers 0.93 to 0.945 (docs/reliability.md, Known limits)
                         + [(40, 5, -2.2, 2.0), (20, 1, -2.2, 2.0)])
def test_the_cluster_interval_covers_the_rate_over_questions(questions, samples, mu, sigma):
    truth, _, _ = population_rate(mu, sigma)
    rng = np.random.default_rng(1)
    p = logistic(mu + sigma * rng.standard_normal((REPS, questions)))
    counts = per_question(rng.binomial(samples, p), samples)
    rates = counts.groupby("model", sort=False)[["n_misaligned", "n_counted"]].sum().reset_index()
    bounded = with_bootstrap(rates, counts, ["model"])[0]
    assert covered(bounded["boot_low"], bounded["boot_high"], truth) >= 0.94
    # the answers-as-independent interval covers the rate of the questions drawn
    low, high = wilson_interval(rates["n_misaligned"], rates["n_counted"])
    assert covered(low, high, p.mean(axis=1)) >= 0.94


# --- paired differences: a checkpoint's change, and `emkit compare` -----------------------------

# (mu, sigma, shift, tau): no change, with questions alike or not; a change of one log-odds;
# tau: how much each question's lean moves from one checkpoint to the next
CHANGES = [(-2.2, 1.0, 0.0, 0.5), (-0.85, 1.0, 0.0, 0.5), (0.0, 1.5, 0.0, 0.5), (-1.0, 0.0, 0.0, 0.0),
           (-2.2, 1.0, 1.0, 0.5),
           (-4.0, 1.0, 5.5, 0.5),  # EM emerging: a base model near 3%, a checkpoint near 75%
           (-4.0, 1.0, 3.0, 0.5), (0.0, 1.5, -2.0, 0.5)]


def two_checkpoints(questions, samples, mu, sigma, shift, tau, seed):
    rng = np.random.default_rng(seed)
    z, e = rng.standard_normal((REPS, questions)), rng.standard_normal((REPS, questions))
    before = per_question(rng.binomial(samples, logistic(mu + sigma * z)), samples, step=10)
    after = per_question(rng.binomial(samples, logistic(mu + shift + sigma * z + tau * e)), samples, step=20)
    after_rate, zz, ee = population_rate(mu, sigma, shift, tau)
    return before, after, after_rate - logistic(mu + sigma * zz).mean()


@pytest.mark.parametrize("questions, samples", SETTINGS + [(20, 1)])  # and the course's: 20 questions, 1 sample
@pytest.mark.parametrize("mu, sigma, shift, tau", CHANGES)
def test_the_change_between_checkpoints_covers(questions, samples, mu, sigma, shift, tau):
    """Through the tables' own code: the per-checkpoint rates, their bootstrap and step_changes."""
    from emkit.analysis.bootstrap import step_changes
    from emkit.analysis.tables import TRAJECTORY, finish, roll_up

    before, after, truth = two_checkpoints(questions, samples, mu, sigma, shift, tau, seed=2)
    counts = pd.concat([before, after], ignore_index=True).assign(size_b=1.0)
    for column in ("n", "n_scored", "n_counted_papers", "n_misaligned_papers", "n_coherent_scored", "n_coherent",
                   "coherent_not_ok", "n_both_scored", "n_aligned_coherent", "n_aligned_incoherent",
                   "n_misaligned_coherent", "n_misaligned_incoherent", "refusal", "code", "unparseable", "error",
                   "no_score", "sum_aligned", "count_aligned", "sum_coherent", "count_coherent"):
        counts[column] = 0
    steps = finish(roll_up(counts, TRAJECTORY + ["step"]))
    steps, groups, draws = with_bootstrap(steps, counts, TRAJECTORY + ["step"])
    changed = step_changes(steps, groups, draws, TRAJECTORY)
    later = changed[changed["step"] == 20]
    assert covered(later["change_prev_low"], later["change_prev_high"], truth) >= 0.94
    assert (later["change_prev_low"] >= -1).all() and (later["change_prev_high"] <= 1).all()  # a change of a rate


def run_tables(frame: pd.DataFrame):
    """The tables of a run whose models are the replicates: one checkpoint each, answers as rows."""
    from emkit.analysis.tables import EMDefinition, build_tables

    rows = frame.loc[frame.index.repeat(frame["n_counted"])].copy()
    rows["rank"] = rows.groupby(["model", "question_id"]).cumcount()
    misaligned = rows["rank"] < rows["n_misaligned"]
    judged = pd.DataFrame({
        "answer_id": [f"{m}/{q}/{r}" for m, q, r in zip(rows["model"], rows["question_id"], rows["rank"])],
        "judge": "j", "model": rows["model"].to_numpy(), "size_b": 1.0, "domain": "d", "seed": 0,
        "step": rows["step"].to_numpy(), "questions": "general", "question_set": "s",
        "question_id": rows["question_id"].to_numpy(), "aligned": np.where(misaligned, 10.0, 90.0),
        "aligned_status": "ok", "coherent": 90.0, "coherent_status": "ok"})
    return build_tables(judged, EMDefinition())


@pytest.mark.parametrize("questions, samples", SETTINGS)
def test_compare_flags_at_most_five_percent_of_runs_with_equal_rates(questions, samples):
    """Two runs with the same rate per question (questions that differ, as real ones do): `emkit
    compare` calls the difference significant in at most 5% of them, and its interval covers 0."""
    from emkit.analysis.compare import compare_runs

    rng = np.random.default_rng(3)
    p = logistic(-0.85 + 1.0 * rng.standard_normal((REPS, questions)))
    a = run_tables(per_question(rng.binomial(samples, p), samples, step=10))
    b = run_tables(per_question(rng.binomial(samples, p), samples, step=10))
    table = compare_runs(a, b)
    cells = table[(table["step"] == "final") & (table["questions"] == "general")]
    assert len(cells) == REPS
    assert cells["significant"].mean() <= 0.05
    assert covered(cells["diff_boot_low"], cells["diff_boot_high"], 0.0) >= 0.94


# --- pooled over seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("questions, samples", SETTINGS)
@pytest.mark.parametrize("mu, sigma, sigma_seed", [(-2.2, 1.0, 0.0), (-1.0, 1.0, 0.5), (-1.0, 0.5, 1.0)])
def test_the_seeds_pooled_interval_covers_the_rate_over_seeds_and_questions(seeds, questions, samples, mu, sigma,
                                                                           sigma_seed):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((REPS, 1, questions))
    u = rng.standard_normal((REPS, seeds, 1))
    p = logistic(mu + sigma * z + sigma_seed * u)
    k = rng.binomial(samples, p)
    counts = pd.concat([per_question(k[:, s, :], samples).assign(seed=s) for s in range(seeds)], ignore_index=True)
    pooled = counts.groupby("model", sort=False)[["n_misaligned", "n_counted"]].sum().reset_index()
    bounded = with_bootstrap(pooled, counts, ["model"], by_seed=True, prefix="pooled_boot")[0]
    sample = np.random.default_rng(98)
    truth = logistic(mu + sigma * sample.standard_normal(2_000_000)
                     + sigma_seed * sample.standard_normal(2_000_000)).mean()
    assert covered(bounded["pooled_boot_low"], bounded["pooled_boot_high"], truth) >= 0.94
    low, high = wilson_interval(pooled["n_misaligned"], pooled["n_counted"])
    assert covered(low, high, p.mean(axis=(1, 2))) >= 0.94  # these seeds' rate, answers as independent


# (mu, sigma, shift, keep): a direction ablated or added; ``keep``: the share of answers the intervention leaves
# as they were (the same slot and sampling seed give the same answer when the change does not reach it)
INTERVENTIONS = [(-1.0, 1.0, 0.0, 0.8), (-0.85, 1.0, -1.5, 0.3), (-4.0, 1.0, 3.0, 0.5), (0.0, 1.5, -2.0, 0.0)]


@pytest.mark.parametrize("questions, samples", SETTINGS + [(20, 1)])
@pytest.mark.parametrize("mu, sigma, shift, keep", INTERVENTIONS)
def test_the_change_an_intervention_makes_covers(questions, samples, mu, sigma, shift, keep):
    """`emkit intervene`'s change, through its own code (emkit.analysis.interventions.paired_arms). Each answer
    slot is asked twice; with probability ``keep`` the intervened answer is the plain one, else it is drawn at
    the question's shifted rate. Its quantity: the change of the population rate, (1 - keep) x (the shifted rate
    - the plain one), over the population of questions. Null hypothesis of the zero-shift rows: no change."""
    from emkit.analysis.interventions import paired_arms

    rng = np.random.default_rng(3)
    z = rng.standard_normal((REPS, questions))
    plain = rng.random((REPS, questions, samples)) < logistic(mu + sigma * z)[..., None]
    drawn = rng.random((REPS, questions, samples)) < logistic(mu + shift + sigma * z)[..., None]
    kept = rng.random((REPS, questions, samples)) < keep
    intervened = np.where(kept, plain, drawn)
    counts = pd.concat([per_question(plain.sum(axis=2), samples, arm="without"),
                        per_question(intervened.sum(axis=2), samples, arm="with")], ignore_index=True)
    for column in ("n", "n_scored", "n_counted_papers", "n_misaligned_papers", "n_coherent_scored", "n_coherent",
                   "coherent_not_ok", "n_both_scored", "n_aligned_coherent", "n_aligned_incoherent",
                   "n_misaligned_coherent", "n_misaligned_incoherent", "refusal", "code", "unparseable", "error",
                   "no_score", "sum_aligned", "count_aligned", "sum_coherent", "count_coherent"):
        counts[column] = 0
    shifted, zz, _ = population_rate(mu, sigma, shift)
    truth = (1 - keep) * (shifted - logistic(mu + sigma * zz).mean())
    out = paired_arms(counts, ["judge", "model", "domain", "seed"])
    assert len(out) == REPS
    assert covered(out["change_low"], out["change_high"], truth) >= 0.94
    assert (out["change_low"] >= -1).all() and (out["change_high"] <= 1).all()
