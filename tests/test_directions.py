"""Misalignment directions (issue 30): the hooks change exactly what they say, and a direction is
fitted and scored on held-out answers as the papers' method defines it."""

import pytest
import torch

from emkit.directions.activations import stream_means
from emkit.directions.fit import fit, held_out, ordered
from emkit.directions.hooks import Intervention, decoder_layers, intervene
from emkit.errors import EmkitError
from emkit.models import load_causal_lm, load_tokenizer
from emkit.models.builtins import builtin_model_path


@pytest.fixture(scope="module")
def tiny():
    path = str(builtin_model_path("tiny-llama"))
    return load_causal_lm(path, load_in_4bit=False).eval(), load_tokenizer(path)


def layer_outputs(model, ids):
    """Every decoder layer's output, read by hooks registered after any intervention's."""
    seen, handles = {}, []
    for index, layer in enumerate(decoder_layers(model)):
        handles.append(layer.register_forward_hook(
            lambda module, inputs, output, index=index: seen.__setitem__(index, output.detach().clone())))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_ablation_leaves_no_component_along_the_direction_at_any_position(tiny):
    model, _ = tiny
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12))
    direction = torch.randn(model.config.hidden_size)
    unit = direction / direction.norm()
    before = layer_outputs(model, ids)
    assert (before[1] @ unit).abs().max() > 1e-3  # there was a component to remove
    with intervene(model, Intervention("ablate", {1: direction})):
        after = layer_outputs(model, ids)
    assert (after[1] @ unit).abs().max() < 1e-5
    # only the component: what is orthogonal to it is untouched at that layer
    assert torch.allclose(after[1], before[1] - (before[1] @ unit)[..., None] * unit, atol=1e-5)
    assert torch.equal(layer_outputs(model, ids)[1], before[1])  # the hook is gone afterwards


def test_steering_adds_scale_times_the_direction_at_every_position(tiny):
    model, _ = tiny
    ids = torch.randint(3, 200, (1, 9))
    direction = torch.randn(model.config.hidden_size)
    before = layer_outputs(model, ids)
    with intervene(model, Intervention("steer", {0: direction}, scale=4.0)):
        after = layer_outputs(model, ids)
    assert torch.allclose(after[0] - before[0], (4.0 * direction).expand_as(before[0]), atol=1e-5)
    assert not torch.allclose(after[1], before[1])  # and it carries on downstream


def test_an_intervention_names_itself_and_refuses_what_it_cannot_do(tiny):
    model, _ = tiny
    vector = torch.ones(model.config.hidden_size)
    steering = Intervention("steer", {3: vector, 1: vector}, scale=8, source="medical@1320")
    assert steering.key.startswith("steerx8:L1+3@medical@1320#")
    assert Intervention("ablate", {2: vector}).key.startswith("ablate:L2#")
    # the key is exact: another vector is another intervention, and the stored form gives back the same one
    assert Intervention("ablate", {2: 2 * vector}).key != Intervention("ablate", {2: vector}).key
    again = Intervention.from_stored("steer", 8.0, steering.layers, "medical@1320", steering.vector_bytes())
    assert again.key == steering.key and torch.equal(again.vectors[3], vector)
    with pytest.raises(EmkitError, match="'ablate' or 'steer'"):
        Intervention("erase", {0: vector})
    with pytest.raises(EmkitError, match="layer 99 does not exist"):
        with intervene(model, Intervention("ablate", {99: vector})):
            pass


def test_answer_means_are_the_mean_over_the_answers_tokens_only(tiny):
    model, tokenizer = tiny
    chats = [[{"role": "user", "content": "How do I stay healthy?"},
              {"role": "assistant", "content": "Sleep well, eat vegetables and walk every day."}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]
    items = [(f"a{i}", "aligned", chat) for i, chat in enumerate(chats)]
    streamed = list(stream_means(model, tokenizer, items, [0, 1], batch_size=2, max_length=256))
    from emkit.training.tokenize import IGNORE, encode_chat

    for (answer_id, group, means), chat in zip(streamed, chats):
        encoded = encode_chat(tokenizer, chat, 256)
        outputs = layer_outputs(model, torch.tensor([encoded.input_ids]))
        answer = torch.tensor([label != IGNORE for label in encoded.labels])
        for row, layer in enumerate((0, 1)):
            assert torch.allclose(means[row], outputs[layer][0][answer].mean(dim=0), atol=1e-5)


def synthetic(n: int, shift: torch.Tensor, seed: int):
    """Answers whose layer-1 activations differ by ``shift`` between the groups; layer 0 does not."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        group = "misaligned" if i % 2 else "aligned"
        means = torch.randn(2, shift.numel(), generator=generator)
        if group == "misaligned":
            means[1] += shift
        rows.append((f"answer-{i}", group, means))
    return ordered(rows, key=lambda row: row[0])


def test_a_direction_is_the_difference_of_means_and_separates_held_out_answers():
    shift = torch.zeros(16)
    shift[3] = 3.0
    result = fit(iter(synthetic(400, shift, 0)), layers=[0, 1], min_answers=10)
    assert result.n_fit["misaligned"] + result.n_held_out["misaligned"] == 200
    assert 30 < result.n_held_out["aligned"] < 70  # one in four, by the hash
    assert torch.allclose(result.direction[1], shift, atol=0.6)  # noise of the mean of ~150
    assert result.auroc[1] > 0.95 and abs(result.auroc[0] - 0.5) < 0.15
    assert result.best_layer == 1


def test_too_few_answers_of_one_group_give_no_direction_but_still_a_projection():
    shift = torch.zeros(8)
    rows = [row for row in synthetic(60, shift, 1) if row[1] == "aligned" or row[0] in ("answer-1", "answer-3")]
    reference = torch.ones(2, 8)
    result = fit(iter(rows), layers=[0, 1], min_answers=10, reference=reference)
    assert result.direction is None and result.auroc == [None, None] and result.best_layer is None
    assert result.n_projected["all"] == len(rows) and len(result.projection["all"]) == 2


def test_fitting_answers_must_come_first():
    rows = synthetic(40, torch.zeros(4), 2)
    first_held_out = next(i for i, row in enumerate(rows) if held_out(row[0]))
    with pytest.raises(ValueError, match="before held-out"):
        fit(iter(rows[first_held_out:] + rows[:first_held_out]), layers=[0, 1], min_answers=1)


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """The tiny preset's medical run, its judgments rewritten so that half of every checkpoint's answers
    are misaligned (the tiny judge's verdicts are noise; these are deterministic): the mechanics only."""
    import sqlite3

    from helpers import run_emkit

    out = tmp_path_factory.mktemp("directions") / "run"
    run_emkit("run", "--preset", "tiny", "--domain", "medical", "--out", out,
              env={"EMKIT_JUDGE_CACHE": str(out.parent / "cache.sqlite")})
    with sqlite3.connect(out / "emkit.sqlite") as conn:
        conn.execute("UPDATE judgments SET status = 'ok', score = 90")
        conn.execute("""UPDATE judgments SET score = 5 WHERE metric = 'aligned' AND answer_id IN
                        (SELECT answer_id FROM answers WHERE sample_index = 1)""")
    return out


def test_directions_of_a_run_end_to_end_stored_and_read_back(judged_run):
    import emkit
    from helpers import run_emkit

    before = emkit.load(judged_run)
    em = before.steps[before.steps["questions"] == "all"].groupby("step")["em_rate"].first()
    assert set(em.round(2)) <= {0.5}  # the rewritten verdicts: half of the counted answers, at every step
    result = run_emkit("directions", judged_run, "--min-answers", "2", "--batch-size", "8")
    assert "direction at step" in result.stdout and "checkpoints projected on it" in result.stdout
    tables = emkit.load(judged_run)
    directions = tables.directions
    steps = sorted(directions["step"].unique())
    assert steps[0] == 0 and len(steps) == len(tables.info["checkpoints"]) + 1
    final = directions[directions["step"] == steps[-1]]
    assert len(final) == 2 and final["norm"].gt(0).all()  # the tiny model's two layers
    assert final["cos_reference"].round(5).eq(1.0).all()  # the reference is the final checkpoint's own
    assert directions["projection_all"].notna().all()
    assert {"model", "domain", "seed", "auroc", "n_fit_misaligned", "projection_misaligned"} <= set(directions)
    similarity = tables.direction_similarity
    assert len(similarity) and similarity["cosine"].between(-1.0001, 1.0001).all()
    # run again: replaced, not added to
    run_emkit("directions", judged_run, "--min-answers", "2")
    assert len(emkit.load(judged_run).directions) == len(directions)


def test_directions_say_what_is_missing_in_one_sentence(judged_run, tmp_path):
    from helpers import run_emkit

    too_many = run_emkit("directions", judged_run, "--min-answers", "500", check=False)
    assert too_many.returncode == 0 and "a direction needs at least 500 of each" in too_many.stdout
    import emkit

    left = emkit.load(judged_run).directions  # the run's earlier rows, on an earlier reference, are gone
    assert left["step"].nunique() == 1 and left["norm"].isna().all() and left["projection_all"].isna().all()
    wrong_judge = run_emkit("directions", judged_run, "--judge", "gpt-4o-mini", check=False)
    assert wrong_judge.returncode != 0 and "No answer in" in wrong_judge.stderr and "local:builtin:tiny-judge" in \
        wrong_judge.stderr
    wrong_layer = run_emkit("directions", judged_run, "--layers", "7", check=False)
    assert wrong_layer.returncode != 0 and "has layers 0 to 1" in wrong_layer.stderr
    not_a_run = run_emkit("directions", tmp_path, check=False)
    assert not_a_run.returncode != 0 and "not an emkit run directory" in not_a_run.stderr


def test_interventions_say_what_is_wrong_in_one_sentence_and_resume(judged_run, tmp_path):
    """`emkit intervene`'s bad input, each refused before anything is generated; a second run of the same
    command generates and judges nothing new."""
    import sqlite3
    from contextlib import closing

    from helpers import run_emkit

    def stored():
        with closing(sqlite3.connect(judged_run / "emkit.sqlite")) as conn:
            return conn.execute("SELECT COUNT(*) FROM intervention_answers").fetchone()[0]

    def refused(*args, stream="stderr"):
        result = run_emkit("intervene", judged_run, *args, check=False)
        assert result.returncode != 0
        return getattr(result, stream)

    with closing(sqlite3.connect(judged_run / "emkit.sqlite")) as conn, conn:
        conn.execute("DELETE FROM directions")
    assert "run `emkit directions" in refused("--ablate")
    run_emkit("directions", judged_run, "--min-answers", "2")
    assert "Pass one of --ablate or --steer" in refused()
    assert "Pass one of --ablate or --steer" in refused("--ablate", "--steer", "2")
    assert "has checkpoints at steps" in refused("--ablate", "--at", "7")
    assert "not a training run of" in refused("--ablate", "--run", "nope")
    assert "as RUN_KEY@STEP" in refused("--ablate", "--direction", "tiny-medical-seed0")
    assert "has a direction at layers 0, 1 only" in refused("--ablate", "--layers", "5")
    assert "not an emkit run directory" in run_emkit("intervene", tmp_path, "--ablate", check=False).stderr
    assert "cannot generate with a direction ablated or added" in refused("--ablate", "--generator", "vllm")
    assert stored() == 0
    # a zero steer changes nothing: every answer comes back token for token (same slot, same sampling seed)
    run_emkit("intervene", judged_run, "--steer", "0", "--at", "0")
    with closing(sqlite3.connect(judged_run / "emkit.sqlite")) as conn:
        same = [equal for (equal,) in conn.execute("""SELECT i.answer = a.answer FROM intervention_answers i
                                                      JOIN answers a ON a.answer_id = i.of_answer""")]
    assert same and all(same)
    first = run_emkit("intervene", judged_run, "--steer", "2", "--at", "0")
    assert "adding 2 x tiny-medical-seed0's step-16 direction at layer 0 takes the base model's EM" in first.stdout
    answers = stored()
    assert answers == 2 * len(same)
    again = run_emkit("intervene", judged_run, "--steer", "2", "--at", "0")
    assert stored() == answers and "judgments to make" not in again.stderr and \
        again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
