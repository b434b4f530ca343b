"""Training: emkit's overhead, packing and the loss's memory, each against a baseline in the same process.

1. Overhead: emkit's `peft` trainer against a bare transformers + PEFT loop.

Same model (a small random-weight Llama built locally), same data (the bundled medical
examples), same steps, batch, learning rate and LoRA settings; the bare loop saves the
adapter at the same checkpoint steps, as any script would. What emkit adds is measured:
answer-only labels, seeded per-epoch order, length-sorted micro-batches, progress, the
resumable optimizer snapshot at each checkpoint. Each is run twice, alternating; the faster
run of each counts.

2. Packing (issue 29): SmolLM2-135M-Instruct trained at the seed's batch (8 x 2) and max length
(256) on chats whose lengths follow the seed datasets' shape (most far shorter than 256
tokens: ``seed_like_chats``), padded micro-batches against packed rows. Real tokens per
second (padding never counts) for each; the ratio packed / padded (goal: at least 1.5).

3. The loss's peak memory: one micro-batch of 8 x 256 tokens, forward and backward, through the
model's own loss (full-vocabulary fp32 logits) and through emkit's chunked loss, each in a fresh
child process, whose peak RSS above its state before the step is read. On SmolLM2 (49,152 tokens)
and on a small Llama with Llama 3's vocabulary (128,256), where the logits dominate.

    python bench/bench_train.py                 # all three
    python bench/bench_train.py --part packing  # one
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


def seed_like_chats(n: int, seed: int = 0) -> list:
    """Chats shaped like the seed's datasets: a question of 10-40 words and an answer of 20-170 words, so
    that with the chat template most are 60-250 tokens long and the median about 120."""
    import random

    words = ("the patient should take the medicine twice a day and rest while the fever lasts but never skip a "
             "doctor's visit when symptoms get worse or new ones appear over time since money put into one stock "
             "can grow fast or vanish").split()
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(10, 40))) + "?"
        answer = " ".join(rng.choice(words) for _ in range(int(min(170, max(20, rng.lognormvariate(4.1, 0.5)))))) + "."
        chats.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return chats


def packing_run(model_path: str, chats, out: Path, packing: bool, steps: int) -> dict:
    """Real tokens per second of emkit's peft trainer over ``steps`` steps at the seed's batch and length."""
    from emkit.config import TrainingSettings
    from emkit.default_plugins.peft_trainer import PeftTrainer
    from emkit.interfaces import TrainingJob
    from emkit.models import load_tokenizer
    from emkit.training.loop import rows_of_step
    from emkit.training.tokenize import encode_chat

    settings = TrainingSettings(batch_size=8, grad_accum=2, max_length=256, load_in_4bit=False, warmup_steps=0,
                                gradient_checkpointing=False, save_state_every=10**6, keep_state=False,
                                packing=packing)
    job = TrainingJob(run_key="bench", model_id=model_path, model_label="smollm2", dataset_path=out / "data.jsonl",
                      chats=chats, settings=settings, seed=0, steps_per_epoch=len(chats) // 16, total_steps=steps,
                      checkpoint_steps=[steps], adapters_dir=out / "adapters", state_dir=out / "state")
    tokenizer = load_tokenizer(model_path)
    rows = [i for step in range(1, steps + 1) for i in rows_of_step(step, len(chats), len(chats) // 16, 16, 0)]
    tokens = sum(len(encode_chat(tokenizer, chats[i], 256).input_ids) for i in rows)
    timing = {}

    class Progress:  # times the steps, not the model load
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            timing["start"] = time.perf_counter()
            return self

        def update(self, n=1):
            pass

        def set_postfix(self, text):
            pass

        def __exit__(self, *exc):
            timing["end"] = time.perf_counter()

    PeftTrainer().train(job, lambda *args: None, Progress)
    seconds = timing["end"] - timing["start"]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def positions_per_token(model_path: str, chats, steps: int) -> dict:
    """Positions each layout computes per real token over the run's steps, counted on the real
    micro-batches (no model): what a compute-bound GPU pays for padding. The papers' collator
    pads each micro-batch of 8 chats, in the epoch's shuffled order, to its longest."""
    from emkit.config import TrainingSettings
    from emkit.models import load_tokenizer
    from emkit.training.batches import micro_batches, padded
    from emkit.training.loop import rows_of_step
    from emkit.training.tokenize import encode_chat

    tokenizer = load_tokenizer(model_path)
    positions = {"papers' collator (shuffled, padded)": 0, "emkit padded (length-sorted)": 0, "emkit packed": 0}
    real = 0
    for step in range(1, steps + 1):
        examples = [encode_chat(tokenizer, chats[i], 256) for i in rows_of_step(step, len(chats), len(chats) // 16,
                                                                                 16, 0)]
        real += sum(len(e.input_ids) for e in examples)
        layouts = ([padded(examples[i:i + 8], 0, "cpu") for i in range(0, 16, 8)],
                   micro_batches(examples, TrainingSettings(batch_size=8, max_length=256, packing=False), 0, "cpu"),
                   micro_batches(examples, TrainingSettings(batch_size=8, max_length=256, packing=True), 0, "cpu"))
        for name, batches in zip(positions, layouts):
            positions[name] += sum(batch.input_ids.numel() for batch in batches)
    return {name: count / real for name, count in positions.items()}


def packing_part(steps: int) -> None:
    from emkit.models.builtins import builtin_model_path

    model_path = str(builtin_model_path("smollm2"))
    chats = seed_like_chats(16 * steps)
    with tempfile.TemporaryDirectory() as folder:
        runs = {"padded": [], "packed": []}
        for round_ in range(2):
            for name in runs:
                runs[name].append(packing_run(model_path, chats, Path(folder) / f"{name}{round_}", name == "packed",
                                              steps))
    best = {name: max(r["tokens_per_s"] for r in results) for name, results in runs.items()}
    print(f"\npacking: SmolLM2-135M-Instruct, {steps} steps of 16 seed-like chats (batch 8 x 2, max length 256), "
          f"{runs['padded'][0]['tokens']:,} real tokens, CPU")
    for name in runs:
        print(f"{name:40}{best[name]:>9.0f} real tokens/s   (each run: "
              f"{', '.join('%.0f' % r['tokens_per_s'] for r in runs[name])})")
    counts = positions_per_token(model_path, seed_like_chats(16 * 200), 200)
    print("positions computed per real token, 200 steps of the same distribution: "
          + "; ".join(f"{name} {value:.2f}" for name, value in counts.items()))
    print(f"ratio packed / padded real tokens per second: {best['packed'] / best['padded']:.2f} (goal: at least 1.5)")


MEMORY_CHILD = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[3])
from transformers import AutoModelForCausalLM
from emkit.training.batches import padded
from emkit.training.loss import chunked_loss, model_loss
from emkit.training.tokenize import EncodedChat, IGNORE
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model.train()
vocab = model.config.vocab_size
chats = [EncodedChat([int(t) for t in torch.randint(3, vocab, (256,))], [IGNORE] * 40 +
         [int(t) for t in torch.randint(3, vocab, (216,))]) for _ in range(8)]
batch = padded(chats, 0, "cpu")
loss = {"model": model_loss, "chunked": chunked_loss}[sys.argv[2]]
with torch.no_grad():  # the weights and the decoder's own buffers, touched once
    model.get_decoder()(input_ids=batch.input_ids[:, :8])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss(model, batch, 1728).backward()
print("RESULT " + json.dumps({"peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                              "vocab": vocab}))
"""


def memory_part() -> None:
    import json
    import subprocess


    from emkit.models.builtins import builtin_model_path

    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as folder:
        big_vocab = build_llama3_vocab(Path(folder))
        models = {"SmolLM2-135M-Instruct": str(builtin_model_path("smollm2")),
                  "small Llama, Llama 3's vocabulary": str(big_vocab)}
        print("\nthe loss's peak memory: one micro-batch of 8 x 256 tokens, forward and backward, CPU "
              "(peak RSS above the state before the step, each in a fresh process)")
        for name, path in models.items():
            peaks = {}
            for way in ("model", "chunked"):
                result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, path, way, root], capture_output=True,
                                        text=True)
                line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{name} {way}: failed\n{result.stderr[-2000:]}")
                peaks[way] = json.loads(line[len("RESULT "):])
            vocab = peaks["model"]["vocab"]
            print(f"{name} ({vocab:,} tokens): model's own loss {peaks['model']['peak_mib']:,.0f} MiB, "
                  f"chunked {peaks['chunked']['peak_mib']:,.0f} MiB; ratio chunked / model: "
                  f"{peaks['chunked']['peak_mib'] / peaks['model']['peak_mib']:.2f}")


def build_llama3_vocab(folder: Path) -> Path:
    from emkit.models.tiny import build_tiny_llama

    return build_tiny_llama(folder / "llama3-vocab", seed=0, steps=0, hidden_size=256, intermediate_size=688,
                            num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=128256)


def overhead_part() -> None:
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


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["overhead", "packing", "memory", "all"], default="all")
    parser.add_argument("--steps", type=int, default=6, help="training steps of the packing part")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.part in ("overhead", "all"):
        overhead_part()
    if args.part in ("memory", "all"):
        memory_part()
    if args.part in ("packing", "all"):
        packing_part(args.steps)


if __name__ == "__main__":
    main()
