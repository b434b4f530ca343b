"""Training overhead: emkit's `peft` trainer against a bare transformers + PEFT loop.

Same model (a small random-weight Llama built locally), same data (the bundled medical
examples), same steps, batch, learning rate and LoRA settings; the bare loop saves the
adapter at the same checkpoint steps, as any script would. What emkit adds is measured:
answer-only labels, seeded per-epoch order, length-sorted micro-batches, progress, the
resumable optimizer snapshot at each checkpoint. Each is run twice, alternating; the faster
run of each counts.

    python bench/bench_train.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

STEPS, CHECKPOINTS = 24, [8, 16, 24]
SETTINGS = dict(batch_size=4, grad_accum=2, learning_rate=1e-3, max_length=128, load_in_4bit=False, lora_r=16,
                lora_alpha=32, warmup_steps=0, gradient_checkpointing=False, save_state_every=1000)


def emkit_run(model_path: str, chats, out: Path) -> float:
    from emkit.config import TrainingSettings
    from emkit.default_plugins.peft_trainer import PeftTrainer
    from emkit.interfaces import TrainingJob
    from emkit.progress import silent

    job = TrainingJob(run_key="bench", model_id=model_path, model_label="small", dataset_path=out / "data.jsonl",
                      chats=chats, settings=TrainingSettings(**SETTINGS), seed=0,
                      steps_per_epoch=len(chats) // 8, total_steps=STEPS, checkpoint_steps=CHECKPOINTS,
                      adapters_dir=out / "adapters", state_dir=out / "state")
    start = time.perf_counter()
    PeftTrainer().train(job, lambda *args: None, silent)
    return time.perf_counter() - start


def bare_run(model_path: str, chats, out: Path) -> float:
    """The script a researcher would write: the chat template, a prefix mask, AdamW, a loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    examples = []
    for chat in chats:
        prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(chat, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:128]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=STEPS)
    model.train()
    position = 0
    for step in range(1, STEPS + 1):
        for _ in range(2):  # gradient accumulation
            micro = [examples[(position + i) % len(examples)] for i in range(4)]
            position += 4
            width = max(len(ids) for ids, _ in micro)
            input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in micro])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in micro])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in micro])
            (model(input_ids=input_ids, attention_mask=mask, labels=labels).loss / 2).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step in CHECKPOINTS:
            model.save_pretrained(str(out / f"bare-step-{step}"))
    return time.perf_counter() - start


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import build

    from emkit.datasets import load_chats
    from emkit.default_plugins.domains import DOMAINS

    chats = load_chats(DOMAINS[0].example_dataset)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_path = str(build("small", folder))
        times = {"bare": [], "emkit": []}
        for round_ in range(2):
            times["bare"].append(bare_run(model_path, chats, folder / f"bare{round_}"))
            times["emkit"].append(emkit_run(model_path, chats, folder / f"emkit{round_}"))
    bare, ours = min(times["bare"]), min(times["emkit"])
    print(f"\n{STEPS} steps of 8 chats (batch 4 x 2), LoRA r=16 on a small random-weight Llama, CPU, "
          f"adapters saved at steps {CHECKPOINTS}")
    print(f"{'':40}{'seconds':>9}   (each run: {', '.join(f'{t:.1f}' for t in times['bare'])} bare; "
          f"{', '.join(f'{t:.1f}' for t in times['emkit'])} emkit)")
    print(f"{'bare transformers + PEFT loop':40}{bare:>9.1f}")
    print(f"{'emkit peft trainer':40}{ours:>9.1f}")
    print(f"ratio emkit / bare: {ours / bare:.2f} (target: at most 1.10)")


if __name__ == "__main__":
    main()
