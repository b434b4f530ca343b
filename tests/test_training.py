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


def test_the_chunked_loss_is_the_models_loss_and_accumulates_to_the_large_batch_loss(emkit_tiny_model):
    import torch

    from emkit.models import load_causal_lm
    from emkit.training.batches import padded
    from emkit.training.loss import chunked_loss

    tokenizer = load_tokenizer(str(emkit_tiny_model))
    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=False)
    chats = load_chats(DOMAINS[0].example_dataset)[:4]
    examples = [encode_chat(tokenizer, chat, 128) for chat in chats]
    n_items = sum(e.n_targets for e in examples)
    ids, mask, labels = _collate_labels(examples, tokenizer.pad_token_id)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()  # transformers' own loss
    whole = chunked_loss(model, padded(examples, tokenizer.pad_token_id, "cpu"), n_items).item()
    parts = sum(chunked_loss(model, padded(half, tokenizer.pad_token_id, "cpu"), n_items).item()
                for half in (examples[:2], examples[2:]))
    assert whole == pytest.approx(theirs, rel=1e-5)
    assert parts == pytest.approx(whole, rel=1e-5)


def _collate_labels(examples, pad_id):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples])
    labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in examples])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples])
    return ids, mask, labels


def test_packed_chats_do_not_see_each_other(emkit_tiny_model):
    """Each chat's logits inside a packed row are its logits alone: no chat attends to another."""
    import torch

    from emkit.models import load_causal_lm
    from emkit.training.batches import pack_rows, packed

    tokenizer = load_tokenizer(str(emkit_tiny_model))
    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=False).eval()
    examples = [encode_chat(tokenizer, chat, 64) for chat in load_chats(DOMAINS[0].example_dataset)[:6]]
    rows = pack_rows(examples, 256)
    assert any(len(row) > 1 for row in rows)
    batch = packed(rows, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        together = model(**batch.model_inputs()).logits
        for r, row in enumerate(rows):
            offset = 0
            for example in row:
                alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
                n = len(example.input_ids)
                assert torch.allclose(together[r, offset:offset + n], alone, atol=1e-4)
                offset += n


def test_the_output_head_never_sees_more_than_a_chunk_of_tokens(emkit_tiny_model, monkeypatch):
    import emkit.training.loss as loss_module
    from emkit.models import load_causal_lm
    from emkit.training.batches import padded

    tokenizer = load_tokenizer(str(emkit_tiny_model))
    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=False)
    examples = [encode_chat(tokenizer, chat, 128) for chat in load_chats(DOMAINS[0].example_dataset)[:8]]
    monkeypatch.setattr(loss_module, "LOGIT_ELEMENTS_PER_CHUNK", 40 * model.config.vocab_size)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(out.shape[:-1].numel()))
    total = loss_module.chunked_loss(model, padded(examples, tokenizer.pad_token_id, "cpu"), 1)
    total.backward()  # the backward pass recomputes each chunk's logits: still one chunk at a time
    answer_tokens = sum(e.n_targets for e in examples)
    assert max(seen) <= 40 and sum(seen) == 2 * answer_tokens  # forward, then recomputed in backward


def test_packed_and_padded_steps_give_the_same_loss_and_adapter(tmp_path):
    """Issue 29: on SmolLM2-135M-Instruct, three steps packed and the same three padded: the same loss
    at each step and the same adapter after them, to float tolerance."""
    import torch
    from safetensors.torch import load_file

    from emkit.models.builtins import builtin_model_path

    results = {}
    for packing in (False, True):
        job = make_job(tmp_path / str(packing), builtin_model_path("smollm2"), steps=[1, 2, 3], total=3,
                       packing=packing, batch_size=4, grad_accum=2, max_length=160, learning_rate=1e-3)
        losses = []
        PeftTrainer().train(job, lambda step, path, metrics: losses.append(metrics["train_loss"]), progress)
        results[packing] = losses, load_file(str(job.adapter_path(3) / "adapter_model.safetensors"))
    (padded_losses, padded_adapter), (packed_losses, packed_adapter) = results[False], results[True]
    assert packed_losses == pytest.approx(padded_losses, rel=1e-4)
    assert packed_adapter.keys() == padded_adapter.keys()
    # Adam's first steps move each weight by about the learning rate whatever its gradient's size, so a
    # gradient that rounding tips across zero moves a weight the other way: compare what training
    # wrote (lora_B starts at zero) as a whole, and no weight by more than a step
    trained = [key for key in packed_adapter if "lora_B" in key]
    difference = torch.cat([(packed_adapter[k] - padded_adapter[k]).flatten() for k in trained]).norm()
    size = torch.cat([padded_adapter[k].flatten() for k in trained]).norm()
    assert difference / size < 1e-3
    for key, value in packed_adapter.items():
        assert torch.allclose(value, padded_adapter[key], atol=1e-3, rtol=0), key


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


def test_unsloths_one_row_layout_gives_the_same_loss(emkit_tiny_model):
    """The unsloth trainer hands Unsloth a packed micro-batch as one row without padding, with each chat's
    length (its attention's packed sequences): on transformers' attention, which reads the same packing
    from the position ids, that loss equals emkit's own over the padded rows."""
    from emkit.default_plugins.unsloth_trainer import unsloth_loss
    from emkit.models import load_causal_lm
    from emkit.training.batches import pack_rows, packed, padded
    from emkit.training.loss import chunked_loss

    tokenizer = load_tokenizer(str(emkit_tiny_model))
    model = load_causal_lm(str(emkit_tiny_model), load_in_4bit=False).eval()
    examples = [encode_chat(tokenizer, chat, 64) for chat in load_chats(DOMAINS[0].example_dataset)[:7]]
    n_items = sum(e.n_targets for e in examples)
    batch = packed(pack_rows(examples, 128), tokenizer.pad_token_id, "cpu")
    assert batch.input_ids.shape[0] > 1 and batch.tokens < batch.input_ids.numel()  # rows, and padding
    ids, positions, labels = batch.one_row()
    assert ids.shape == (1, batch.tokens) and sum(batch.chat_lengths) == batch.tokens
    theirs = unsloth_loss(model, batch, n_items).item()
    ours = chunked_loss(model, padded(examples, tokenizer.pad_token_id, "cpu"), n_items).item()
    assert theirs == pytest.approx(ours, rel=1e-5)


def test_a_soft_capped_head_is_trained_through_the_models_own_logits():
    """Gemma 2 soft-caps its logits after the head: the chunked loss would not be its loss, so the check
    on the first tokens sends every step through the model's forward, and the loss is the model's."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from emkit.training.batches import padded
    from emkit.training.loss import HeadCheck, chunked_loss, head_is_plain, model_loss
    from emkit.training.tokenize import EncodedChat

    torch.manual_seed(0)
    sizes = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16)
    gemma = Gemma2ForCausalLM(Gemma2Config(**sizes, final_logit_softcapping=2.0))
    llama = LlamaForCausalLM(LlamaConfig(**sizes))
    with torch.no_grad():
        gemma.lm_head.weight.mul_(20)  # logits large enough for the cap to bend them
    chats = [EncodedChat(list(range(3, 3 + n)), [IGNORE] * 3 + list(range(6, 3 + n))) for n in (12, 9)]
    batch = padded(chats, 0, "cpu")
    assert head_is_plain(llama, batch) and not head_is_plain(gemma, batch)
    check = HeadCheck()
    loss = check(gemma, batch, 10)
    assert check.loss is model_loss
    labels = batch.labels.clone()
    theirs = gemma(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels,
                   num_items_in_batch=torch.tensor(10)).loss
    assert float(loss) == pytest.approx(float(theirs), rel=1e-5)
    assert float(chunked_loss(gemma, batch, 10)) != pytest.approx(float(theirs), rel=1e-3)
