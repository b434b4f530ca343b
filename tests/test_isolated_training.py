"""Trainers that patch their process train in a spawned child, and generation never runs through
their patches (issue 12). A stand-in for Unsloth, a trainer plugin that replaces
LlamaForCausalLM.forward for its whole process as Unsloth does, runs on any machine; the real
Unsloth is tested the same way in test_unsloth.py where it is installed."""

import json
import sqlite3
import tomllib

import pytest
import tomli_w

from emkit.config import preset_path
from helpers import run_emkit
from plugin_fixtures import make_plugin

PATCHING_TRAINER = '''
import json, os, sys
from emkit import hookimpl
from emkit.default_plugins.hf_generator import HFGenerator
from emkit.default_plugins.peft_trainer import PeftTrainer


class PatchingTrainer(PeftTrainer):
    """PEFT training, after patching LlamaForCausalLM.forward for the whole process."""
    name = "patching"
    description = "test: patches transformers like Unsloth"
    isolated = os.environ.get("PATCHING_ISOLATED", "1") == "1"

    def train(self, job, on_checkpoint, progress):
        import transformers.models.llama.modeling_llama as llama
        original = llama.LlamaForCausalLM.forward

        def patched_forward(self, *args, **kwargs):
            return original(self, *args, **kwargs)

        patched_forward.__module__ = "unsloth.models.llama"  # where Unsloth's forwards come from
        llama.LlamaForCausalLM.forward = patched_forward
        super().train(job, on_checkpoint, progress)


class WatchingGenerator(HFGenerator):
    """The hf generator, writing down what in its process is patched before it generates."""
    name = "hf-watch"
    description = "test"

    def generate(self, job, on_answer, progress):
        from emkit.training.isolated import patched_by_unsloth
        with open(os.environ["WATCH_FILE"], "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "patched": patched_by_unsloth()}) + "\\n")
        super().generate(job, on_answer, progress)


@hookimpl
def register_trainers(register):
    register(PatchingTrainer())


@hookimpl
def register_generators(register):
    register(WatchingGenerator())
'''


def watched_run(tmp_path, trainer, isolated="1", check=True):
    site = make_plugin(tmp_path / "site", "emkit-patching", "emkit_patching", PATCHING_TRAINER)
    data = tomllib.loads(preset_path("tiny").read_text())
    data.update(domains=["medical"], checkpoints={"steps": [2, 4]})
    data["training"].update(trainer=trainer, epochs=1)
    data["evaluation"].update(generator="hf-watch", samples_per_question=1)
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(data))
    watch = tmp_path / "watch.jsonl"
    result = run_emkit("run", "--config", config, "--out", tmp_path / "run", check=check,
                       env={"PYTHONPATH": str(site), "WATCH_FILE": str(watch), "PATCHING_ISOLATED": isolated,
                            "EMKIT_JUDGE_CACHE": str(tmp_path / "judge.sqlite")})
    seen = [json.loads(line) for line in watch.read_text().splitlines()] if watch.exists() else []
    return result, seen


@pytest.mark.slow
def test_a_patching_trainer_trains_in_a_child_and_generation_sees_no_patch(tmp_path):
    result, seen = watched_run(tmp_path, "patching")
    assert "done: 2 new checkpoints, 60 new answers" in result.stderr
    assert seen and all(s["patched"] == [] for s in seen), seen
    assert "checkpoint tiny-medical-seed0 step 2 saved" in result.stderr  # the child's log lines come through
    assert "train tiny-medical-seed0: 4/4 steps" in result.stderr  # and so does its progress
    with sqlite3.connect(tmp_path / "run" / "emkit.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 2
        base = json.loads(conn.execute("SELECT base_weights FROM training_runs").fetchone()[0])
    from emkit.models.builtins import builtin_version

    assert base["source"].endswith(f"tiny-llama-v{builtin_version('tiny-llama')}") and base["quantization"] is None


@pytest.mark.slow
def test_the_watch_sees_a_patch_when_the_trainer_runs_in_process(tmp_path):
    """The check above can fail: in process, the patch is there when generation starts."""
    result, seen = watched_run(tmp_path, "patching", isolated="0")
    assert seen and seen[0]["patched"] == ["LlamaForCausalLM.forward from unsloth.models.llama"]


def test_a_trainer_process_that_dies_is_one_sentence_and_keeps_its_checkpoints(tmp_path, monkeypatch):
    from emkit.errors import EmkitError
    from emkit.training.isolated import train_in_child

    site = make_plugin(tmp_path / "site", "emkit-dying", "emkit_dying", '''
import os
from emkit import hookimpl

class DyingTrainer:
    name = "dying"
    description = "test"
    isolated = True

    def train(self, job, on_checkpoint, progress):
        on_checkpoint(1, job.adapter_path(1), {"train_loss": 1.0})
        os._exit(9)  # killed (out of memory, say) after its first checkpoint

@hookimpl
def register_trainers(register):
    register(DyingTrainer())
''')
    monkeypatch.syspath_prepend(str(site))  # a spawned child starts with its parent's sys.path
    from emkit.interfaces import TrainingJob

    job = TrainingJob(run_key="r", model_id="m", model_label="m", dataset_path=tmp_path, chats=[], settings=None,
                      seed=0, steps_per_epoch=2, total_steps=2, checkpoint_steps=[1, 2], adapters_dir=tmp_path / "a",
                      state_dir=tmp_path / "s")
    stored = []
    with pytest.raises(EmkitError, match=r"The dying trainer's process ended \(exit code 9\) before finishing run r; "
                                         r"the checkpoints it saved are kept"):
        train_in_child("dying", job, lambda step, path, metrics: stored.append(step), None)
    assert stored == [1]
