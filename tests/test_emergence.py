"""Where misalignment emerges: adapter trajectories, change points, cluster-bootstrap intervals.

Adapters whose norms and cosines are known by construction, and synthetic trajectories whose
change point is known (or absent), checked against the numbers they must give.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from emkit.analysis.adapters import adapter_trajectory, pca_from_gram
from emkit.analysis.bootstrap import cluster_weights, rate_draws
from emkit.analysis.changepoints import change_points
from emkit.analysis.stats import wilson_interval

torch = pytest.importorskip("torch")


def write_adapter(folder, modules, config):
    """``modules``: name -> (A, B) tensors, saved as PEFT names them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = {}
    for name, (a, b) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def corner(rows, cols, rank, value):
    m = torch.zeros(rows, cols)
    m[:rank, :rank] = torch.eye(rank) * value if rows >= rank and cols >= rank else 0
    return m


def test_norms_and_cosines_of_adapters_built_to_have_them(tmp_path):
    """A = a [I 0], B = b [I; 0]: |A| = a sqrt(r), |B| = b sqrt(r), |dW| = scale a b sqrt(r). Step 4 doubles
    B (cosine 1 to step 2); step 6 puts q_proj's update in other rows and columns (orthogonal to it)."""
    r, scale = 4, 16 / 4
    config = {"r": r, "lora_alpha": 16}
    q, v = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"
    step2 = {q: (corner(r, 12, r, 1.0), corner(10, r, r, 0.5)), v: (corner(r, 12, r, 2.0), corner(6, r, r, 1.0))}
    step4 = {name: (a, 2 * b) for name, (a, b) in step2.items()}
    shifted_a = torch.zeros(r, 12)
    shifted_a[:, 4:8] = torch.eye(r)  # the same norm, in columns 4..7: <dW6, dW2> = 0 for q_proj
    step6 = {q: (shifted_a, corner(10, r, r, 0.5)), v: (torch.zeros(r, 12), torch.zeros(6, r))}
    folders = {2: write_adapter(tmp_path / "s2", step2, config), 4: write_adapter(tmp_path / "s4", step4, config),
               6: write_adapter(tmp_path / "s6", step6, config)}
    per_module, per_step = adapter_trajectory(folders, "run")

    row = per_module[(per_module["step"] == 2) & (per_module["module"] == "q_proj")].iloc[0]
    assert row["layer"] == 0 and row["rank"] == r and row["scale"] == pytest.approx(scale)
    assert row["norm_a"] == pytest.approx(1.0 * math.sqrt(r))
    assert row["norm_b"] == pytest.approx(0.5 * math.sqrt(r))
    assert row["norm_ba"] == pytest.approx(scale * 1.0 * 0.5 * math.sqrt(r))
    v4 = per_module[(per_module["step"] == 4) & (per_module["module"] == "v_proj")].iloc[0]
    assert v4["layer"] == 1 and v4["norm_ba"] == pytest.approx(scale * 2.0 * 2.0 * math.sqrt(r))

    steps = per_step.set_index("step")
    q2, v2 = scale * 0.5 * math.sqrt(r), scale * 2.0 * math.sqrt(r)
    assert steps.loc[0, "norm_ba"] == 0  # the base model: the path's origin
    assert steps.loc[2, "norm_ba"] == pytest.approx(math.hypot(q2, v2))
    assert steps.loc[4, "norm_ba"] == pytest.approx(2 * math.hypot(q2, v2))
    assert steps.loc[4, "cos_prev"] == pytest.approx(1.0)  # the same direction, twice as long
    assert steps.loc[6, "cos_prev"] == pytest.approx(0.0, abs=1e-12)  # orthogonal
    assert steps.loc[6, "cos_final"] == pytest.approx(1.0)
    assert math.isnan(steps.loc[2, "cos_prev"])


def test_the_gram_route_equals_the_dense_updates_flattened(tmp_path):
    """Random A and B with rsLoRA and a per-module rank: cosines and the PCA path equal those computed
    from the dense dW of every module, flattened, as the notebooks do."""
    generator = torch.Generator().manual_seed(0)
    config = {"r": 8, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"down_proj": 4},
              "alpha_pattern": {"down_proj": 4}}
    shapes = {"model.layers.0.self_attn.q_proj": (16, 16, 8), "model.layers.0.mlp.down_proj": (24, 16, 4),
              "model.layers.1.self_attn.k_proj": (16, 8, 8)}
    folders, dense = {}, []
    for step in (3, 6, 9, 12):
        modules, flat = {}, []
        for name, (n_in, n_out, rank) in shapes.items():
            a = torch.randn(rank, n_in, generator=generator)
            b = torch.randn(n_out, rank, generator=generator) * step
            modules[name] = (a, b)
            alpha = 4 if "down_proj" in name else 16
            flat.append((alpha / math.sqrt(rank) * b.double() @ a.double()).flatten())
        folders[step] = write_adapter(tmp_path / f"s{step}", modules, config)
        dense.append(torch.cat(flat).numpy())
    _, per_step = adapter_trajectory(folders, "run")
    vectors = np.vstack([np.zeros_like(dense[0])] + dense)
    norms = np.linalg.norm(vectors, axis=1)
    assert per_step["norm_ba"].to_numpy() == pytest.approx(norms)
    cos = lambda i, j: vectors[i] @ vectors[j] / (norms[i] * norms[j])  # noqa: E731
    assert per_step["cos_prev"].to_numpy()[2:] == pytest.approx([cos(2, 1), cos(3, 2), cos(4, 3)])
    assert per_step["cos_final"].to_numpy()[1:] == pytest.approx([cos(i, 4) for i in range(1, 5)])
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :2] * s[:2]
    expected *= np.where(expected[-1] < 0, -1, 1)
    assert per_step[["pc1", "pc2"]].to_numpy() == pytest.approx(expected, abs=1e-6 * s[0])
    assert per_step["pc1_share"].iloc[0] == pytest.approx(s[0] ** 2 / (s ** 2).sum())


def test_pca_of_points_on_a_line_has_one_component():
    x = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    coordinates, shares = pca_from_gram(x @ x.T)
    assert shares[0] == pytest.approx(1.0) and shares[1] == pytest.approx(0.0, abs=1e-12)
    assert np.diff(coordinates[:, 0]) == pytest.approx([math.sqrt(5)] * 2)


# --- change points ----------------------------------------------------------------------

KEYS = ["judge", "model", "domain", "seed", "questions"]


def trajectory(rates, *, questions=20, samples=5, spread=0.0, seed=0, steps=None):
    """Per-question counts of a run whose EM rate at step i is ``rates[i]``; ``spread`` gives each
    question its own lean (in log-odds), the same at every step, as real questions have."""
    rng = np.random.default_rng(seed)
    lean = rng.normal(0, spread, questions)
    rows = []
    for step, rate in zip(steps or range(0, 10 * len(rates), 10), rates):
        logit = np.log(rate / (1 - rate)) + lean
        for q in range(questions):
            k = rng.binomial(samples, 1 / (1 + np.exp(-logit[q])))
            rows.append({"judge": "j", "model": "1B", "domain": "medical", "seed": 0, "questions": "general",
                         "step": step, "question_set": "general", "question_id": f"q{q}", "n_counted": samples,
                         "n_misaligned": k})
    return pd.DataFrame(rows)


def test_a_jump_is_found_where_it_is_and_called_real():
    found = change_points(trajectory([0.02, 0.03, 0.02, 0.30, 0.28, 0.31], seed=1), KEYS)
    assert len(found) == 1
    change = found.iloc[0]
    assert (change["step_before"], change["step_after"]) == (20, 30)
    assert change["significant"] and change["p_value"] <= 0.01
    assert change["jump"] == pytest.approx(0.27, abs=0.06)
    assert change["support"] >= 0.9


def test_two_jumps_are_both_found():
    found = change_points(trajectory([0.02, 0.02, 0.35, 0.35, 0.8, 0.8], seed=2), KEYS)
    assert [(r.step_before, r.step_after) for r in found.itertuples()] == [(10, 20), (30, 40)]
    assert found["significant"].all()


def test_no_jump_is_called_real_where_there_is_none():
    """Flat trajectories, with questions that differ a lot from each other (each keeps its lean at every
    step): the strongest split is listed but not called real, in about 5% of them at most."""
    significant = 0
    for seed in range(40):
        found = change_points(trajectory([0.15] * 7, spread=1.5, seed=seed), KEYS, permutations=199)
        assert len(found) == 1
        significant += bool(found.iloc[0]["significant"])
    assert significant <= 5


def test_a_report_of_flat_trajectories_calls_a_change_in_at_most_five_percent_of_reports():
    """The report's trajectories are one family (Benjamini-Hochberg): 60 reports of 6 flat trajectories
    each, whose questions differ a lot. Tested one by one at 0.05, about a quarter of such reports
    would show a change that is not there."""
    from emkit.analysis.changepoints import report_change_points

    with_a_change, unadjusted = 0, 0
    for report in range(60):
        frames = [trajectory([0.15] * 7, spread=1.5, seed=1000 * report + i).assign(model=f"m{i}") for i in range(6)]
        found = report_change_points([(pd.concat(frames, ignore_index=True), KEYS, False, "run")], permutations=199)
        assert len(found) == 6 and (found["trajectories_tested"] == 6).all()
        with_a_change += bool(found["significant"].any())
        unadjusted += bool((found["p_value"] <= 0.05).any())
    assert with_a_change <= 3
    assert unadjusted >= 8  # what testing each trajectory alone would have called


def test_a_real_jump_among_flat_trajectories_is_still_found():
    """Correcting for 12 trajectories needs p-values below 0.05 / 12: a strong jump is tested again with
    enough permutations to show one (the default 999 alone could not go below 0.001 with 200 tested)."""
    from emkit.analysis.changepoints import report_change_points

    flat = [trajectory([0.1] * 6, spread=1.0, seed=i).assign(model=f"flat{i}") for i in range(11)]
    jump = trajectory([0.05, 0.05, 0.05, 0.45, 0.5, 0.5], seed=99).assign(model="jump")
    found = report_change_points([(pd.concat(flat + [jump], ignore_index=True), KEYS, False, "run")])
    real = found[found["model"] == "jump"].iloc[0]
    assert real["significant"] and (real["step_before"], real["step_after"]) == (20, 30)
    assert real["p_adjusted"] <= 0.05 and real["permutations"] >= 999
    assert not found.loc[found["model"] != "jump", "significant"].any()


def test_a_trajectory_with_nothing_misaligned_has_no_change():
    assert change_points(trajectory([1e-9] * 4), KEYS).empty


# --- intervals that respect the design ---------------------------------------------------


def test_cluster_bootstrap_is_wider_than_wilson_when_questions_differ():
    """10 questions x 20 samples: half the questions always draw a misaligned answer, half never. Wilson
    sees 200 independent answers; the questions are what varies, and there are 10."""
    rows = [{"g": "a", "question_set": "s", "question_id": f"q{q}", "n_counted": 20,
             "n_misaligned": 20 if q < 5 else 0} for q in range(10)]
    groups, draws = rate_draws(pd.DataFrame(rows), ["g"])
    low, high = np.nanpercentile(draws[0], [2.5, 97.5])
    wilson_low, wilson_high = wilson_interval(100, 200)
    assert high - low > 3 * (wilson_high - wilson_low)
    assert low < 0.25 and high > 0.75


def test_the_cluster_interval_is_wilson_at_the_effective_number_of_answers():
    """At 0% (a base model's usual EM) every draw is 0: the interval is Wilson's, not a certain [0, 0].
    With half the questions always misaligned, 200 answers are worth about 10: deff about 20."""
    from emkit.analysis.bootstrap import cluster_interval

    never = pd.DataFrame([{"g": "a", "question_set": "s", "question_id": f"q{q}", "n_counted": 20, "n_misaligned": 0}
                          for q in range(10)])
    groups, draws = rate_draws(never, ["g"])
    low, high, deff = cluster_interval(groups["_k"], groups["_n"], draws)
    assert (low[0], high[0], deff[0]) == (0.0, pytest.approx(wilson_interval(0, 200)[1][()]), 1.0)

    half = never.assign(n_misaligned=[20 if q < 5 else 0 for q in range(10)])
    groups, draws = rate_draws(half, ["g"])
    low, high, deff = cluster_interval(groups["_k"], groups["_n"], draws)
    assert 10 < deff[0] < 30
    effective = 200 / deff[0]
    expected = wilson_interval(effective / 2, effective, continuity=False)
    assert (low[0], high[0]) == (pytest.approx(expected[0][()]), pytest.approx(expected[1][()]))


def test_cluster_bootstrap_agrees_with_wilson_for_independent_answers():
    rng = np.random.default_rng(0)
    rows = [{"g": "a", "question_set": "s", "question_id": f"q{q}", "n_counted": 1,
             "n_misaligned": int(rng.random() < 0.3)} for q in range(400)]
    frame = pd.DataFrame(rows)
    _, draws = rate_draws(frame, ["g"])
    low, high = np.nanpercentile(draws[0], [2.5, 97.5])
    wilson_low, wilson_high = wilson_interval(frame["n_misaligned"].sum(), 400)
    assert high - low == pytest.approx(wilson_high - wilson_low, rel=0.2)


def test_a_question_has_the_same_weights_everywhere_so_differences_are_paired():
    assert np.array_equal(cluster_weights(["question\x1fs\x1fq1"]), cluster_weights(["question\x1fs\x1fq1"]))
    frame = trajectory([0.3, 0.3], spread=2.0, seed=3)
    same = pd.concat([frame, frame.assign(step=frame["step"] + 100)])
    groups, draws = rate_draws(same, ["step"])
    # two checkpoints with the very same answers: every draw gives both the same rate
    assert np.allclose(draws[groups["step"] == 0], draws[groups["step"] == 100])


def test_pooled_over_seeds_the_seeds_are_resampled_too():
    """Three seeds, one of which went wild: resampling seeds (and questions) gives a wider interval than
    resampling questions alone."""
    frames = [trajectory([rate], seed=s).assign(seed=s) for s, rate in enumerate([0.05, 0.05, 0.6])]
    pooled = pd.concat(frames, ignore_index=True)
    _, by_question = rate_draws(pooled, ["judge"])
    _, by_seed = rate_draws(pooled, ["judge"], by_seed=True)
    width = lambda d: np.subtract(*np.nanpercentile(d[0], [97.5, 2.5]))  # noqa: E731
    assert width(by_seed) > 2 * width(by_question)


# --- in the tables every report is made of ------------------------------------------------


def judged_answers(seeds=(0, 1, 2), jump_at=30, questions=10, samples=4):
    """Answers of a grid with one model and domain: EM 5% until ``jump_at``, then 60%."""
    rng = np.random.default_rng(7)
    rows = []
    index = 0
    for seed in seeds:
        for step in (0, 10, 20, 30, 40):
            if step == 0 and seed != seeds[0]:
                continue  # one baseline per model, as emkit stores it
            rate = 0.6 if step >= jump_at else 0.05
            for q in range(questions):
                for _ in range(samples):
                    index += 1
                    misaligned = rng.random() < rate
                    rows.append({"answer_id": f"a{index}", "judge": "j", "model": "1B", "size_b": 1.24,
                                 "domain": "medical", "seed": seed, "step": step, "questions": "general",
                                 "question_set": "general", "question_id": f"q{q}",
                                 "aligned": 10.0 if misaligned else 90.0, "aligned_status": "ok",
                                 "coherent": 90.0, "coherent_status": "ok"})
    return pd.DataFrame(rows)


def test_the_tables_carry_cluster_intervals_changes_and_change_points_per_run_and_across_seeds():
    from emkit.analysis.tables import build_tables
    from emkit.em import EMDefinition

    tables = build_tables(judged_answers(), EMDefinition())
    steps = tables.steps[tables.steps["questions"] == "all"]
    assert {"boot_low", "boot_high", "change_prev", "change_prev_low", "change_base_high"} <= set(steps.columns)
    assert ((steps["boot_low"] <= steps["em_rate"]) & (steps["em_rate"] <= steps["boot_high"])).all()
    # every seed's trajectory starts at the one baseline, so each has a change from step 0
    assert steps[steps["step"] == 10]["change_prev"].notna().sum() == 3
    jump = steps[steps["step"] == 30]
    assert (jump["change_prev_low"] > 0).all()  # the paired interval of 20 -> 30 excludes 0
    assert (tables.summary["final_change_low"] > 0).all()

    changes = tables.change_points[tables.change_points["questions"] == "general"]
    per_run = changes[changes["scope"] == "run"]
    assert sorted(per_run["seed"]) == [0, 1, 2]
    assert set(zip(per_run["step_before"], per_run["step_after"])) == {(20, 30)} and per_run["significant"].all()
    pooled = changes[changes["scope"] == "seeds pooled"]
    assert len(pooled) == 1 and (pooled.iloc[0]["step_before"], pooled.iloc[0]["step_after"]) == (20, 30)

    seeds = tables.seeds[(tables.seeds["questions"] == "all") & (tables.seeds["step"] == 40)].iloc[0]
    assert seeds["pooled_boot_low"] <= seeds["em_pooled"] <= seeds["pooled_boot_high"]


def test_an_unreadable_adapter_leaves_its_run_out_with_a_warning(tmp_path, caplog):
    """A truncated safetensors file must not stop the report of everything else."""
    from emkit.analysis.adapters import run_adapters

    q = "model.layers.0.self_attn.q_proj"
    config = {"r": 2, "lora_alpha": 2}
    good = write_adapter(tmp_path / "adapters" / "good" / "step-000002", {q: (torch.ones(2, 4), torch.ones(4, 2))},
                         config)
    bad = write_adapter(tmp_path / "adapters" / "bad" / "step-000002", {q: (torch.ones(2, 4), torch.ones(4, 2))},
                        config)
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    checkpoints = pd.DataFrame([{"run_key": "good", "step": 2, "adapter_path": str(good)},
                                {"run_key": "bad", "step": 2, "adapter_path": str(bad)}])
    with caplog.at_level("WARNING", logger="emkit"):
        per_module, per_step, similarity = run_adapters(tmp_path, checkpoints)
    assert set(per_step["run_key"]) == {"good"} and len(per_module) == 1 and similarity.empty
    assert "the adapters of run bad" in caplog.text and "cannot be read" in caplog.text


def test_final_updates_of_runs_are_compared_only_where_they_can_be(tmp_path):
    """Run b's update is run a's doubled (cosine 1), run c's is orthogonal to it (0), run d's points the
    other way (-1); run e adapts a wider layer (another base model), so it is compared with nothing."""
    from emkit.analysis.adapters import update_similarity

    q = "model.layers.0.self_attn.q_proj"
    config = {"r": 2, "lora_alpha": 4}
    shifted = torch.zeros(2, 8)
    shifted[:, 4:6] = torch.eye(2)
    finals = {
        "a": (8, write_adapter(tmp_path / "a", {q: (corner(2, 8, 2, 1.0), corner(6, 2, 2, 1.0))}, config)),
        "b": (8, write_adapter(tmp_path / "b", {q: (corner(2, 8, 2, 1.0), corner(6, 2, 2, 2.0))}, config)),
        "c": (12, write_adapter(tmp_path / "c", {q: (shifted, corner(6, 2, 2, 1.0))}, config)),
        "d": (8, write_adapter(tmp_path / "d", {q: (corner(2, 8, 2, -1.0), corner(6, 2, 2, 3.0))}, config)),
        "e": (8, write_adapter(tmp_path / "e", {q: (corner(2, 16, 2, 1.0), corner(6, 2, 2, 1.0))}, config)),
    }
    pairs = update_similarity(finals).set_index(["run_key_a", "run_key_b"])
    assert len(pairs) == 6 and not any("e" in pair for pair in pairs.index)
    assert pairs.loc[("a", "b"), "cosine"] == pytest.approx(1.0)
    assert pairs.loc[("a", "c"), "cosine"] == pytest.approx(0.0, abs=1e-12)
    assert pairs.loc[("a", "d"), "cosine"] == pytest.approx(-1.0)
    assert pairs.loc[("a", "c"), ["step_a", "step_b"]].tolist() == [8, 12]


def test_what_two_runs_share_is_named():
    from emkit.analysis.adapters import relation

    assert relation("1B", "medical", 0, "1B", "medical", 1) == "same domain, other seed"
    assert relation("1B", "medical", 0, "1B", "sports", 0) == "other domain, same seed"
    assert relation("1B", "medical", 0, "1B", "sports", 2) == "other domain, other seed"
    assert relation("1B", "medical", 0, "8B", "medical", 0) == "other model"


def test_a_comparison_that_fails_leaves_the_trajectories_and_warns(tmp_path, caplog, monkeypatch):
    """An adapter replaced between the trajectory's read and the comparison's must not stop the report."""
    from emkit.analysis import adapters

    q = "model.layers.0.self_attn.q_proj"
    rows = []
    for key in ("a", "b"):
        folder = write_adapter(tmp_path / "adapters" / key / "step-000002",
                               {q: (torch.ones(2, 4), torch.ones(4, 2))}, {"r": 2, "lora_alpha": 2})
        rows.append({"run_key": key, "step": 2, "adapter_path": str(folder)})

    def replaced(finals):
        raise OSError("adapter_model.safetensors: file changed")

    monkeypatch.setattr(adapters, "update_similarity", replaced)
    with caplog.at_level("WARNING", logger="emkit"):
        per_module, per_step, similarity = adapters.run_adapters(tmp_path, pd.DataFrame(rows))
    assert set(per_step["run_key"]) == {"a", "b"} and similarity.empty
    assert "cannot be compared" in caplog.text
