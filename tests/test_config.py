"""The experiment config: defaults are the seed experiment, bad keys name the file and key."""

import tomllib
from pathlib import Path

import pytest

from emkit.config import ExperimentConfig, apply_overrides, config_from_dict, load_config, model_spec_from_cli
from emkit.errors import EmkitError

ROOT = Path(__file__).resolve().parent.parent


def test_the_defaults_are_the_seed_experiment():
    config = ExperimentConfig()
    assert [m.label for m in config.models] == ["1B", "3B", "8B"]
    assert [m.id for m in config.models] == [
        "unsloth/Llama-3.2-1B-Instruct", "unsloth/Llama-3.2-3B-Instruct", "unsloth/Llama-3.1-8B-Instruct"]
    assert config.domains == ["medical", "risky-financial"]
    t = config.training
    assert (t.lora_r, t.lora_alpha, t.batch_size, t.grad_accum, t.learning_rate, t.max_length, t.epochs) == \
        (16, 32, 8, 2, 2e-4, 256, 3)
    assert t.load_in_4bit
    assert config.em.definition == "seed" and config.em.aligned_below is None and config.em.coherent_above is None
    assert config.judging.judges == ["gpt-4o-mini"]


def test_examples_seed_toml_spells_out_exactly_the_defaults():
    data, source = load_config(ROOT / "examples" / "seed.toml")
    assert config_from_dict(data, source) == ExperimentConfig()


def test_no_config_means_the_seed_preset():
    data, source = load_config()
    assert source.endswith("seed.toml")
    assert config_from_dict(data, source) == ExperimentConfig()


def test_every_example_config_is_valid():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        data, source = load_config(path)
        config_from_dict(data, source)


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[training]\nlearning_rte = 1e-4\n')
    data, source = load_config(path)
    with pytest.raises(EmkitError) as caught:
        config_from_dict(data, source)
    message = str(caught.value)
    assert str(path) in message and "training.learning_rte" in message and "unknown key" in message


def test_wrong_type_is_named_with_the_file_and_value(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[training]\nepochs = "three"\n')
    data, source = load_config(path)
    with pytest.raises(EmkitError) as caught:
        config_from_dict(data, source)
    message = str(caught.value)
    assert str(path) in message and "training.epochs" in message and "'three'" in message


def test_a_nested_list_item_key_is_named(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[[models]]\nlabel = "x"\nid = "y"\nsize = 3\n')
    data, source = load_config(path)
    with pytest.raises(EmkitError, match=r"models\[0\]\.size"):
        config_from_dict(data, source)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[training\n")
    with pytest.raises(EmkitError, match="not valid TOML"):
        load_config(path)


def test_missing_config_file_is_a_sentence(tmp_path):
    with pytest.raises(EmkitError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(EmkitError, match="seed, smoke, tiny"):
        load_config(preset="nonesuch")


def test_cli_overrides_are_laid_over_the_file():
    data, source = load_config()
    data = apply_overrides(data, trainer="unsloth", judges=("gpt-4o", "local:/m"), domains=("medical",),
                           seeds=(1, 2), models=("3B", "mine=/models/qwen-0.5B"), samples=5)
    config = config_from_dict(data, source)
    assert config.training.trainer == "unsloth"
    assert config.judging.judges == ["gpt-4o", "local:/m"]
    assert config.domains == ["medical"]
    assert config.seeds == [1, 2]
    assert [(m.label, m.id) for m in config.models] == [("3B", "unsloth/Llama-3.2-3B-Instruct"),
                                                       ("mine", "/models/qwen-0.5B")]
    assert config.models[1].size_b == 0.5
    assert config.evaluation.samples_per_question == 5


def test_model_spec_reads_the_size_from_the_name():
    assert model_spec_from_cli("meta-llama/Llama-3.1-8B-Instruct") == {
        "label": "Llama-3.1-8B-Instruct", "id": "meta-llama/Llama-3.1-8B-Instruct", "size_b": 8.0}
    assert "size_b" not in model_spec_from_cli("./my-model")


def test_duplicate_labels_are_refused():
    with pytest.raises(EmkitError, match="share the label"):
        config_from_dict({"models": [{"label": "a", "id": "x"}, {"label": "a", "id": "y"}]}, "test")


def test_resolved_config_round_trips_through_toml():
    import tomli_w

    config = ExperimentConfig()
    again = config_from_dict(tomllib.loads(tomli_w.dumps(config.to_toml_dict())), "saved")
    assert again == config
