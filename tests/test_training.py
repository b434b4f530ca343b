"""LoRA training on a real tiny Llama: answer-only labels, exact checkpoint steps, QLoRA, resume."""

import json
import math

import pytest

from emkit.config import TrainingSettings
from emkit.datasets import load_chats
from emkit.default_plugins.domains import DOMAINS
from emkit.default_plugins.peft_trainer import PeftTrainer
from emkit.interfaces import TrainingJob
from emkit.models import load_tokenizer
from emkit.progress import progress
from emkit.training.tokenize import IGNORE, encode_chat

pytestmark = pytest.mark.slow


def test_labels_cover_the_answers_and_their_end_of_turn_only(emkit_tiny_model):
    tokenizer = load_tokenizer(str(emkit_tiny_model))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "Goodbye."}]
    encoded = encode_chat(tokenizer, chat, max_length=512)
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE]
    assert tokenizer.decode(labelled) == "Hello.<|eot_id|>Goodbye.<|eot_id|>"
    assert all(label in (IGNORE, token) for token, label in zip(encoded.input_ids, encoded.labels))
    assert len(encode_chat(tokenizer, chat, max_length=7).input_ids) == 7


def test_gradient_accumulation_gives_the_large_batch_loss(emkit_tiny_model):
    import torch

    from emkit.models import load_causal_lm
    from emkit.training.loop import collate

    tokenizer = load_tokenizer(str(emkit_tiny_model))
    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=False)
    chats = load_chats(DOMAINS[0].example_dataset)[:4]
    examples = [encode_chat(tokenizer, chat, 128) for chat in chats]
    n_items = sum(e.n_label_tokens for e in examples)
    ids, mask, labels = collate(examples, tokenizer.pad_token_id, "cpu")
    whole = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    parts = 0.0
    for half in (examples[:2], examples[2:]):
        ids, mask, labels = collate(half, tokenizer.pad_token_id, "cpu")
        parts += model(input_ids=ids, attention_mask=mask, labels=labels,
                       num_items_in_batch=torch.tensor(n_items)).loss.item()
    assert parts == pytest.approx(whole, rel=1e-5)


def make_job(tmp_path, model_path, steps, total, **settings):
    chats = load_chats(DOMAINS[0].example_dataset)
    defaults = dict(batch_size=2, grad_accum=2, learning_rate=1e-2, max_length=96, load_in_4bit=False, lora_r=8,
                    lora_alpha=16, warmup_steps=0, gradient_checkpointing=False, save_state_every=1)
    defaults.update(settings)
    return TrainingJob(
        run_key="tiny-medical-seed0", model_id=str(model_path), model_label="tiny",
        dataset_path=DOMAINS[0].example_dataset, chats=chats, settings=TrainingSettings(**defaults), seed=0,
        steps_per_epoch=len(chats) // 4, total_steps=total, checkpoint_steps=steps,
        adapters_dir=tmp_path / "adapters", state_dir=tmp_path / "state",
    )


def test_peft_trainer_saves_adapters_at_exactly_the_planned_steps(tmp_path, emkit_tiny_model):
    job = make_job(tmp_path, emkit_tiny_model, steps=[2, 3, 6], total=6)
    saved = []
    PeftTrainer().train(job, lambda step, path, metrics: saved.append((step, path, metrics)), progress)
    assert [s for s, _, _ in saved] == [2, 3, 6]
    for step, path, metrics in saved:
        assert path == tmp_path / "adapters" / f"step-{step:06d}"
        assert (path / "adapter_model.safetensors").is_file()
        assert json.loads((path / "adapter_config.json").read_text())["r"] == 8
        assert math.isfinite(metrics["train_loss"])
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step-000002", "step-000003", "step-000006"]
    # the state is saved every step (save_state_every = 1); once every checkpoint exists, only the
    # snapshots at checkpoints are left, for `emkit refine`
    assert sorted(p.name for p in (tmp_path / "state").glob("step-*")) == ["step-000002", "step-000003",
                                                                         "step-000006"]
    assert not list((tmp_path / "state").glob(".*"))


def test_without_keep_state_no_training_state_is_left(tmp_path, emkit_tiny_model):
    job = make_job(tmp_path, emkit_tiny_model, steps=[2, 3], total=3, keep_state=False)
    PeftTrainer().train(job, lambda *args: None, progress)
    assert not (tmp_path / "state").exists()


def test_training_lowers_the_loss(tmp_path, emkit_tiny_model):
    job = make_job(tmp_path, emkit_tiny_model, steps=[1, 8], total=8)
    losses = {}
    PeftTrainer().train(job, lambda step, path, metrics: losses.__setitem__(step, metrics["train_loss"]), progress)
    assert losses[8] < losses[1]


def test_qlora_trains_on_4bit_weights(tmp_path, emkit_tiny_model):
    from emkit.models import load_causal_lm

    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=True)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    job = make_job(tmp_path, emkit_tiny_model, steps=[2], total=2, load_in_4bit=True)
    saved = []
    PeftTrainer().train(job, lambda step, path, metrics: saved.append(metrics["train_loss"]), progress)
    assert len(saved) == 1 and math.isfinite(saved[0])
    assert (job.adapter_path(2) / "adapter_model.safetensors").is_file()


def test_a_killed_run_resumes_from_its_state_and_matches_an_uninterrupted_one(tmp_path, emkit_tiny_model):
    import torch
    from safetensors.torch import load_file

    straight = make_job(tmp_path / "straight", emkit_tiny_model, steps=[2, 5], total=5)
    PeftTrainer().train(straight, lambda *a: None, progress)

    class Killed(Exception):
        pass

    def die_at_five(step, path, metrics):
        if step == 5:
            raise Killed()  # the process dies after saving step 5's adapter, before recording it

    interrupted = make_job(tmp_path / "resumed", emkit_tiny_model, steps=[2, 5], total=5)
    with pytest.raises(Killed):
        PeftTrainer().train(interrupted, die_at_five, progress)
    pointer = json.loads((interrupted.state_dir / "latest.json").read_text())
    assert pointer["step"] == 4  # state saved every step; step 5 never finished
    resumed = make_job(tmp_path / "resumed", emkit_tiny_model, steps=[2, 5], total=5)
    resumed.done_steps = frozenset({2})
    recorded = []
    PeftTrainer().train(resumed, lambda step, path, metrics: recorded.append(step), progress)
    assert recorded == [5]
    a = load_file(str(straight.adapter_path(5) / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_path(5) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
