"""Nothing leaked, nothing run: API keys stay out of every file, pickles are never unpickled,
model code runs only with --trust-remote-code. (Hostile answers in the report: test_report.py;
decrypted dataset permissions: test_domains.py.)"""

import importlib.util
import json
import pickle
import shutil
import threading
import zlib

import pytest

from emkit.errors import EmkitError
from emkit.testing.judge_server import Reply, completion, keyword_score
from helpers import run_emkit

FAKE_KEY = "sk-emkit-FAKE-9f8e7d6c5b4a3210ffee"
OPENAI_KEY = "sk-openai-FAKE-0011223344556677"


class Marker:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_an_api_key_never_reaches_a_file(tmp_path, judge_server_factory):
    seen_keys = []
    lock = threading.Lock()

    def respond(body):
        prompt = body["messages"][0]["content"]
        if zlib.crc32(prompt.encode()) % 40 == 0:  # a few calls fail with an error that quotes the key
            return Reply(status=400, body={"error": {"message": f"Incorrect API key provided: {FAKE_KEY}.",
                                                     "type": "invalid_request_error"}})
        score = keyword_score(prompt)
        return Reply(body=completion(str(score), {str(score): 1.0}))

    server = judge_server_factory(respond)
    out = tmp_path / "run"
    cache = tmp_path / "judge-cache.sqlite"
    # the server's key in the variable the run names; OpenAI's key must stay home (issue 12)
    env = {"OPENAI_API_KEY": OPENAI_KEY, "EMKIT_JUDGE_KEY": FAKE_KEY, "EMKIT_JUDGE_CACHE": str(cache)}
    result = run_emkit("run", "--preset", "tiny", "--domain", "medical", "--judge", "gpt-4o-mini", "--api-base",
                       server.url, "--api-key-env", "EMKIT_JUDGE_KEY", "--out", out, env=env, check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    with lock:
        seen_keys = [h.get("Authorization") or h.get("authorization") for h in server.headers]
    assert set(seen_keys) == {f"Bearer {FAKE_KEY}"}  # the key was really in play, and only that key
    written = [p for p in out.rglob("*") if p.is_file()] + [p for p in tmp_path.glob("judge-cache.sqlite*")]
    assert len(written) > 20
    for path in written:
        for key in (FAKE_KEY, OPENAI_KEY):
            assert key.encode() not in path.read_bytes(), f"a key is in {path}"
    assert FAKE_KEY not in result.stdout + result.stderr and OPENAI_KEY not in result.stdout + result.stderr
    import sqlite3

    conn = sqlite3.connect(out / "emkit.sqlite")
    errors = [e for (e,) in conn.execute("SELECT error FROM judgments WHERE status = 'error'")]
    conn.close()
    assert errors and all("[redacted]" in e for e in errors)


def test_the_redaction_covers_every_secret_looking_variable(monkeypatch):
    from emkit.secrets import redact

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-abcdefgh12345")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmn")
    monkeypatch.setenv("SHORT_KEY", "abc")  # too short to be told from ordinary text
    text = redact("keys sk-ant-abcdefgh12345 and hf_abcdefghijklmn, not abc")
    assert text == "keys [redacted] and [redacted], not abc"


def pickled_only_model(folder, marker):
    """A model folder whose only weights are a pickle that would create ``marker`` if loaded."""
    from emkit.models.builtins import builtin_model_path

    shutil.copytree(builtin_model_path("tiny-llama"), folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump(Marker(marker), handle)
    return folder


def test_even_ordinary_pickled_weights_are_refused(tmp_path):
    import torch
    from safetensors.torch import load_file

    from emkit.models import load_causal_lm
    from emkit.models.builtins import builtin_model_path

    folder = tmp_path / "bin-model"
    shutil.copytree(builtin_model_path("tiny-llama"), folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")  # a plain state dict
    (folder / "model.safetensors").unlink()
    with pytest.raises(EmkitError, match="holds only pickled weights"):
        load_causal_lm(str(folder), load_in_4bit=False)


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path):
    from emkit.models import load_causal_lm

    marker = tmp_path / "unpickled"
    folder = pickled_only_model(tmp_path / "model", marker)
    with pytest.raises(EmkitError, match=r"holds only pickled weights \(\*\.bin\); emkit loads safetensors only"):
        load_causal_lm(str(folder), load_in_4bit=False)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [
    "peft",
    pytest.param("unsloth", marks=pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                                                       reason="unsloth is not installed (emkit[unsloth])")),
])
def test_a_run_on_pickled_weights_stops_with_a_sentence(tmp_path, trainer):
    marker = tmp_path / "unpickled"
    folder = pickled_only_model(tmp_path / "model", marker)
    result = run_emkit("run", "--preset", "tiny", "--domain", "medical", "--model", f"pickled={folder}",
                       "--trainer", trainer, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and "holds only pickled weights" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_resume_state_is_loaded_without_unpickling_objects(tmp_path, emkit_tiny_model):
    import torch

    from emkit.models import load_causal_lm
    from emkit.training.state import load_state, save_state

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(str(emkit_tiny_model), load_in_4bit=False),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_state(tmp_path / "state", 3, model, optimizer, scheduler)
    assert load_state(tmp_path / "state", model, optimizer, scheduler) == 3
    marker = tmp_path / "unpickled"
    folder = next((tmp_path / "state").glob("step-*"))
    torch.save({"optimizer": Marker(marker)}, folder / "trainer.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_state(tmp_path / "state", model, optimizer, scheduler)
    assert not marker.exists()


def model_with_code(folder, marker):
    """The tiny model, declaring custom code (auto_map) that creates ``marker`` when imported."""
    from emkit.models.builtins import builtin_model_path

    shutil.copytree(builtin_model_path("tiny-llama"), folder)
    (folder / "modeling_custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaForCausalLM\n\n\nclass CustomForCausalLM(LlamaForCausalLM):\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_model_code_runs_only_with_trust_remote_code(tmp_path, monkeypatch):
    from emkit.models import load_causal_lm

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    marker = tmp_path / "code-ran"
    folder = model_with_code(tmp_path / "model", marker)
    try:
        load_causal_lm(str(folder), load_in_4bit=False)
    except EmkitError as exc:
        assert "--trust-remote-code" in str(exc)
    assert not marker.exists()
    try:
        load_causal_lm(str(folder), load_in_4bit=False, trust_remote_code=True)
    except Exception:
        pass  # whether the custom class works is not the point: its code was allowed to run
    assert marker.exists()


def test_trust_remote_code_is_off_unless_asked_for():
    from emkit.config import ExperimentConfig, apply_overrides, config_from_dict

    assert ExperimentConfig().trust_remote_code is False
    assert config_from_dict(apply_overrides({}, trust_remote_code=True), "cli").trust_remote_code is True
