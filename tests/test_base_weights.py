"""Adapters are evaluated on exactly the base weights they were trained on (issue 12): the base a
trainer loaded is read off the model, recorded per run, loaded again for generation, and every
mismatch is refused with a sentence. Real 4-bit models (bitsandbytes NF4 runs on the CPU too)."""

import shutil
import sqlite3

import pytest

from emkit.models.base_weights import BaseWeights, base_for_model, configured_base, loaded_base, record_base
from emkit.errors import EmkitError
from emkit.models import load_base_model, load_causal_lm
from emkit.store import Store


@pytest.fixture(scope="module")
def four_bit(tmp_path_factory):
    """The tiny model quantised on load, and a copy saved pre-quantised (as unsloth/...-bnb-4bit is)."""
    from emkit.models.builtins import builtin_model_path

    source = str(builtin_model_path("tiny-llama"))
    model = load_causal_lm(source, load_in_4bit=True)
    folder = tmp_path_factory.mktemp("prequantized") / "tiny-bnb-4bit"
    model.save_pretrained(folder)
    shutil.copy(builtin_model_path("tiny-llama") / "tokenizer_config.json", folder)
    return source, model, str(folder)


def test_a_model_quantised_on_load_is_recorded_with_its_quantisation(four_bit):
    source, model, _ = four_bit
    base = loaded_base(model, source)
    assert base.source == source and not base.prequantized
    assert base.quantization == {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                 "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    assert BaseWeights.from_json(base.to_json()) == base
    assert "(4-bit nf4, quantised on load)" in base.describe()


def test_generation_loads_the_same_weights_as_training(four_bit):
    import torch

    source, model, _ = four_bit
    again = load_base_model(loaded_base(model, source))
    tokens = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.inference_mode():
        assert torch.equal(model(tokens).logits, again(tokens).logits)
    plain = load_causal_lm(source, load_in_4bit=False)  # what generation loaded before: not the same weights
    with torch.inference_mode():
        assert not torch.allclose(model(tokens).logits, plain(tokens).logits)


def test_a_prequantised_repository_is_loaded_with_its_own_quantisation(four_bit):
    """Unsloth's bnb-4bit repositories: the quantisation is in the repository's config.json, and
    loading must not override it (an explicit quantization_config=None used to)."""
    import torch

    source, model, folder = four_bit
    loaded = load_causal_lm(folder, load_in_4bit=False)
    base = loaded_base(loaded, folder)
    assert base.prequantized and base.quantization["bnb_4bit_quant_type"] == "nf4"
    assert "pre-quantised repository" in base.describe()
    again = load_base_model(base)
    tokens = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.inference_mode():
        assert torch.equal(loaded(tokens).logits, again(tokens).logits)
        assert torch.equal(model(tokens).logits, again(tokens).logits)


def store_with_runs(tmp_path, bases: dict[str, BaseWeights | None]) -> Store:
    store = Store(tmp_path / "emkit.sqlite")
    for run_key, base in bases.items():
        store.conn.execute(
            """INSERT INTO training_runs (run_key, model_label, domain, seed, trainer, steps_per_epoch, total_steps,
               checkpoint_steps, question_sets, created_at, base_weights) VALUES (?, '1B', 'medical', 0, 'unsloth',
               1, 1, '[1]', '[]', 'now', ?)""", (run_key, base.to_json() if base else None))
    return store


UNSLOTH_REPO = BaseWeights("unsloth/llama-3.2-1b-instruct-unsloth-bnb-4bit",
                           {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                            "llm_int8_skip_modules": ["lm_head", "model.layers.0.mlp", "model.layers.15.mlp"]},
                           prequantized=True, revision="0123456789abcdef")


def test_generation_takes_the_recorded_base_not_the_configured_one(tmp_path):
    store = store_with_runs(tmp_path, {"1B-medical-seed0": UNSLOTH_REPO, "1B-financial-seed0": UNSLOTH_REPO})
    default = configured_base("meta-llama/Llama-3.2-1B-Instruct", True)
    assert base_for_model(store, "1B", default, None) == UNSLOTH_REPO
    assert base_for_model(store, "8B", default, None) == default  # nothing recorded: emkit's own loader
    assert UNSLOTH_REPO.describe() == ("unsloth/llama-3.2-1b-instruct-unsloth-bnb-4bit@0123456789 (4-bit nf4, "
                                       "pre-quantised repository, 3 modules kept in 16-bit)")


def test_runs_of_one_model_on_different_bases_are_refused(tmp_path):
    other = BaseWeights("meta-llama/Llama-3.2-1B-Instruct", UNSLOTH_REPO.quantization, revision="fedcba")
    store = store_with_runs(tmp_path, {"1B-financial-seed0": UNSLOTH_REPO, "1B-medical-seed0": other})
    with pytest.raises(EmkitError, match=r"Runs 1B-financial-seed0 and 1B-medical-seed0 of model '1B' were trained "
                                         r"on different base weights"):
        base_for_model(store, "1B", configured_base("x", True), None)


def test_evaluating_on_other_weights_than_trained_is_refused(tmp_path):
    store = store_with_runs(tmp_path, {"1B-medical-seed0": UNSLOTH_REPO})
    with pytest.raises(EmkitError, match=r"evaluation.load_in_4bit = false, but the adapters of '1B' were trained on "
                                         r"unsloth/.*remove evaluation.load_in_4bit"):
        base_for_model(store, "1B", configured_base("x", False), False)


def test_a_local_model_folder_changed_since_training_is_refused(tmp_path):
    from emkit.models import model_fingerprint
    from emkit.models.builtins import builtin_model_path

    folder = tmp_path / "model"
    shutil.copytree(builtin_model_path("tiny-llama"), folder)
    base = BaseWeights(str(folder), None, fingerprint=model_fingerprint(str(folder)))
    store = store_with_runs(tmp_path, {"1B-medical-seed0": base})
    assert base_for_model(store, "1B", configured_base(str(folder), False), None) == base
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes() + b"\0")
    with pytest.raises(EmkitError, match=r"The weights in .*/model have changed since run 1B-medical-seed0 was trained"):
        base_for_model(store, "1B", configured_base(str(folder), False), None)


def test_a_resume_that_loads_another_base_is_refused(tmp_path):
    store = store_with_runs(tmp_path, {"1B-medical-seed0": None})
    record_base(store, "1B-medical-seed0", UNSLOTH_REPO)
    record_base(store, "1B-medical-seed0", UNSLOTH_REPO)  # the same again: fine
    moved = BaseWeights(UNSLOTH_REPO.source, UNSLOTH_REPO.quantization, True, revision="9999999999")
    with pytest.raises(EmkitError, match=r"Run 1B-medical-seed0 started training on .*@0123456789.* and now loaded "
                                         r".*@9999999999"):
        record_base(store, "1B-medical-seed0", moved)
    with sqlite3.connect(tmp_path / "emkit.sqlite") as conn:
        assert BaseWeights.from_json(conn.execute("SELECT base_weights FROM training_runs").fetchone()[0]) == UNSLOTH_REPO


def test_loading_a_4bit_model_offline_prints_no_notices_of_faster_kernels_it_did_without(tmp_path):
    """bitsandbytes asks the kernels hub for a CPU matmul on every import, torchao tries extensions
    built for other CUDA versions: each logs a warning emkit's user can do nothing about."""
    import os
    import subprocess
    import sys

    from emkit.models.builtins import builtin_model_path

    script = ("from emkit.logs import setup_console; setup_console()\n"
              "from emkit.models import load_causal_lm\n"
              f"load_causal_lm({str(builtin_model_path('tiny-llama'))!r}, load_in_4bit=True)\n"
              "import logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another warning')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Failed to load" not in result.stderr and "kernels" not in result.stderr, result.stderr
    assert "Enum subclass" not in result.stderr
    assert "another warning" in result.stderr  # only those notices are kept back
