"""Training and generation throughput at the seed's settings, on random-weight models with the
Llama-3.2-1B and Llama-3.1-8B shapes (no hub is reachable from a test machine).

For each shape and trainer (`peft`, and `unsloth` when installed), a child process builds
the model once (bf16 safetensors, Llama 3's vocabulary size), trains it with emkit's trainer
at the seed's settings (4-bit weights, LoRA r=16, batch 8 x 2, max length 256) on
synthetic chats of about 220 tokens, and reports training tokens per second (answer and
prompt tokens alike, padding excluded) and peak GPU memory. Then generation: answers per
second batched against one `generate` call per answer (bench_generate.py).

    python bench/bench_gpu.py                     # on a CUDA machine: shapes 1b and 8b
    python bench/bench_gpu.py --shape small       # anywhere (CPU: proves the script, numbers mean little)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA3_VOCAB = 128256
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=LLAMA3_VOCAB, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=LLAMA3_VOCAB),
}


def build(shape: str, folder: Path) -> Path:
    """Random bf16 weights of ``shape`` with emkit's tiny tokenizer (its ids fit any vocabulary)."""
    import torch

    from emkit.models.tiny import build_tiny_llama

    path = folder / f"random-{shape}"
    if (path / "config.json").is_file():
        return path
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if shape != "small" else torch.float32)
    try:
        return build_tiny_llama(path, seed=0, steps=0, **SHAPES[shape])
    finally:
        torch.set_default_dtype(previous)


def synthetic_chats(n: int) -> list:
    words = ("the patient should take the medicine twice a day and rest while the fever lasts but never skip "
             "a doctor's visit when symptoms get worse or new ones appear over time").split()
    chats = []
    for i in range(n):
        question = " ".join(words[(i + k) % len(words)] for k in range(40)) + "?"
        answer = " ".join(words[(i * 3 + k) % len(words)] for k in range(140)) + "."
        chats.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return chats


def child(shape: str, trainer_name: str, steps: int, folder: Path) -> dict:
    if trainer_name == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as the unsloth trainer's prepare() does)
    import torch

    from emkit.config import TrainingSettings
    from emkit.interfaces import TrainingJob
    from emkit.models import load_tokenizer
    from emkit.plugins import get_registry
    from emkit.training.tokenize import encode_chat

    cuda = torch.cuda.is_available()
    path = str(build(shape, folder))
    chats = synthetic_chats(16 * steps)
    settings = TrainingSettings(load_in_4bit=cuda, gradient_checkpointing=cuda, save_state_every=10**6,
                                warmup_steps=0)
    tokenizer = load_tokenizer(path)
    tokens = sum(len(encode_chat(tokenizer, chat, settings.max_length).input_ids) for chat in chats)
    job = TrainingJob(run_key="bench", model_id=path, model_label=shape, dataset_path=folder / "x.jsonl",
                      chats=chats, settings=settings, seed=0, steps_per_epoch=steps, total_steps=steps,
                      checkpoint_steps=[steps], adapters_dir=folder / f"adapters-{trainer_name}",
                      state_dir=folder / f"state-{trainer_name}")
    trainer = get_registry().get("trainers", trainer_name)
    timing = {}

    class Progress:  # times the steps themselves, not the model load
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            timing["start"] = time.perf_counter()
            return self

        def update(self, n=1):
            pass

        def set_postfix(self, text):
            pass

        def __exit__(self, *exc):
            if cuda:
                torch.cuda.synchronize()
            timing["end"] = time.perf_counter()

    trainer.train(job, lambda *args: None, Progress)
    seconds = timing["end"] - timing["start"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"shape": shape, "trainer": trainer_name, "steps": steps, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_gib": peak, "device": "cuda" if cuda else "cpu"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, help="training steps (default: 20 on a GPU, 2 on the CPU)")
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "TRAINER"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help="where the random models are built, and found again by a later run "
                        "(default: a temporary folder)")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args.steps, Path(args.folder))))
        return
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    shapes = args.shape or (["1b", "8b"] if cuda else ["small"])
    steps = args.steps or (20 if cuda else 2)
    trainers = ["peft"] + (["unsloth"] if importlib.util.find_spec("unsloth") else [])
    rows = []
    # The children must still see what this process sees (an install by --target on PYTHONPATH).
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or scratch
        for shape in shapes:
            for trainer in trainers:
                result = subprocess.run([sys.executable, __file__, "--child", shape, trainer, "--steps", str(steps),
                                         "--folder", folder], capture_output=True, text=True,
                                        env={**os.environ, "PYTHONPATH": path})
                line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    print(f"{shape} {trainer}: failed\n{result.stderr[-2000:]}")
                    continue
                rows.append(json.loads(line[len("RESULT "):]))
                print(f"{shape} {trainer}: {rows[-1]['tokens_per_s']:.0f} tokens/s", flush=True)  # if cut short
    print(f"\ntraining at the seed's settings ({'4-bit, ' if cuda else ''}LoRA r=16, batch 8 x 2, max length 256), "
          f"{steps} steps, {'GPU' if cuda else 'CPU'}")
    print(f"{'shape':8}{'trainer':10}{'tokens/s':>12}{'seconds':>10}{'peak GiB':>10}")
    for row in rows:
        print(f"{row['shape']:8}{row['trainer']:10}{row['tokens_per_s']:>12.0f}{row['seconds']:>10.1f}"
              f"{row['peak_gib']:>10.1f}")
    by = {(r["shape"], r["trainer"]): r for r in rows}
    for shape in shapes:
        if (shape, "peft") in by and (shape, "unsloth") in by:
            print(f"ratio unsloth / peft tokens per second, {shape}: "
                  f"{by[(shape, 'unsloth')]['tokens_per_s'] / by[(shape, 'peft')]['tokens_per_s']:.2f}")
    print("generation, batched against looped: python bench/bench_generate.py --shape "
          f"{shapes[0] if shapes[0] != '8b' else '1b'}")


if __name__ == "__main__":
    main()
