"""Training throughput and MFU at the seed's settings, on random-weight models with the real
configs of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B (no hub is reachable from a test machine),
and the seed grid's training time projected from them.

For each shape, trainer (`peft`, and `unsloth` when installed) and weight width (4-bit QLoRA, the
seed's, and 16-bit LoRA), a child process builds the model once (bf16 safetensors, Llama 3's
vocabulary), trains it with emkit's trainer at the seed's settings (LoRA r=16, batch 8 x 2, max
length 256, packed rows) on chats whose lengths follow the seed datasets' shape
(``bench_train.seed_like_chats``), and reports real tokens per second (padding never counts),
peak GPU memory and MFU: 4 x N x tokens/s over the GPU's dense bf16 peak, N the parameters of
every matrix multiply (the output head included, the input embedding not; a LoRA step is a
forward, 2N FLOPs a token, and a backward through the activations only, 2N; recomputation under
gradient checkpointing is not counted, attention's own FLOPs are about 1% at these lengths).

`--share K` also runs K children at once on the same GPU (what `[execution] units_per_gpu`
does with the seed grid's units) and reports their summed tokens per second. The projection
then gives the seed grid's training (two domains of 7,049 and 6,000 chats, three epochs, at each
measured shape) one unit at a time and K at a time, the shapes one after another.

    python bench/bench_gpu.py                            # on a CUDA machine: 1b, 3b, 8b; 4 and 16 bit
    python bench/bench_gpu.py --shape 1b --bits 16 --share 2
    python bench/bench_gpu.py --shape small              # anywhere (CPU: proves the script)
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
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=LLAMA3_VOCAB, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=LLAMA3_VOCAB),
}
# The seed grid's training: both domains at every model, three epochs (its step counts: 1,320 and 1,125).
SEED_DOMAINS, SEED_EPOCHS, SEED_SHAPES = {"medical": 7049, "risky-financial": 6000}, 3, ("1b", "3b", "8b")
# Dense bf16 peaks (TFLOPS, without sparsity) from the vendors' data sheets; the first name found in the
# device's name counts, so the PCIe and NVL parts come before the SXM one.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H200", 989), ("H100", 989), ("A100", 312),
                    ("L40S", 362), ("A10", 125), ("4090", 165), ("3090", 71))


def build(shape: str, folder: Path) -> Path:
    """Random bf16 weights of ``shape`` with emkit's tiny tokenizer (its ids fit any vocabulary)."""
    import torch

    from emkit.models.tiny import build_tiny_llama

    path = folder / f"random-{shape}"
    if (path / "config.json").is_file():
        return path
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if shape != "small" else torch.float32)
    try:  # on the GPU where there is one: random weights of 8B take minutes on a CPU
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            return build_tiny_llama(path, seed=0, steps=0, **SHAPES[shape])
    finally:
        torch.set_default_dtype(previous)


def matmul_parameters(path: str) -> int:
    """Parameters of every matrix multiply of the model at ``path``: all of them but an input
    embedding that is not also the output head. Counted on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied embedding is counted once, as the head
    return total if config.tie_word_embeddings else total - model.get_input_embeddings().weight.numel()


def peak_flops(device_name: str) -> float | None:
    return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in device_name), None)


def child(shape: str, trainer_name: str, bits: int, steps: int, folder: Path, tag: str, together: int) -> dict:
    if trainer_name == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as the unsloth trainer's prepare() does)
    import torch
    from bench_train import seed_like_chats

    from emkit.config import TrainingSettings
    from emkit.interfaces import TrainingJob
    from emkit.models import load_tokenizer
    from emkit.plugins import get_registry
    from emkit.training.tokenize import encode_chat

    cuda = torch.cuda.is_available()
    path = str(build(shape, folder))
    chats = seed_like_chats(16 * steps)
    settings = TrainingSettings(load_in_4bit=bits == 4, gradient_checkpointing=cuda, save_state_every=10**6,
                                warmup_steps=0, keep_state=False)
    tokenizer = load_tokenizer(path)
    tokens = sum(len(encode_chat(tokenizer, chat, settings.max_length).input_ids) for chat in chats)
    name = f"{trainer_name}-{bits}-{tag}"
    job = TrainingJob(run_key="bench", model_id=path, model_label=shape, dataset_path=folder / "x.jsonl",
                      chats=chats, settings=settings, seed=0, steps_per_epoch=steps, total_steps=steps,
                      checkpoint_steps=[steps], adapters_dir=folder / f"adapters-{name}",
                      state_dir=folder / f"state-{name}")
    trainer = get_registry().get("trainers", trainer_name)
    timing = {}

    class Progress:  # times the steps themselves, not the model load
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            wait_for_the_others(folder / f"ready-{shape}-{trainer_name}-{bits}", tag, together)
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
    return {"shape": shape, "trainer": trainer_name, "bits": bits, "steps": steps, "chats": len(chats),
            "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "matmul_parameters": matmul_parameters(path),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def wait_for_the_others(folder: Path, tag: str, together: int, limit_s: float = 900) -> None:
    """Children that share a GPU start their steps at once: each, its model loaded, says so and
    waits for the rest, so their summed rate is the rate of the GPU shared."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tag).touch()
    deadline = time.monotonic() + limit_s
    while len(list(folder.iterdir())) < together and time.monotonic() < deadline:
        time.sleep(0.2)


def run_children(shape: str, trainer: str, bits: int, steps: int, folder: str, together: int,
                 env: dict) -> list[dict] | str:
    """``together`` children at once on the same GPU; their results, or the last failure's stderr."""
    ready = Path(folder) / f"ready-{shape}-{trainer}-{bits}"
    if ready.exists():
        for old in ready.iterdir():
            old.unlink()
    children = [subprocess.Popen([sys.executable, __file__, "--child", shape, trainer, str(bits), str(i),
                                  str(together), "--steps", str(steps), "--folder", folder],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for i in range(together)]
    results, failure = [], ""
    for process in children:
        stdout, stderr = process.communicate()
        line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            failure = stderr[-2000:]
        else:
            results.append(json.loads(line[len("RESULT "):]))
    return results if len(results) == together else failure


def mfu(row: dict) -> float | None:
    peak = peak_flops(row["device"])
    return 4 * row["matmul_parameters"] * row["tokens_per_s"] / peak if peak else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--trainer", action="append", choices=["peft", "unsloth"],
                        help="default: peft, and unsloth when installed")
    parser.add_argument("--bits", action="append", type=int, choices=[4, 16],
                        help="4 (QLoRA, the seed's) and 16 (LoRA on bf16 weights); default both on a GPU, 16 on "
                        "the CPU")
    parser.add_argument("--share", type=int, default=1, metavar="K",
                        help="also run K children at once on the GPU and sum their rates (default: 1, no sharing)")
    parser.add_argument("--steps", type=int, help="training steps (default: 20 on a GPU, 2 on the CPU)")
    parser.add_argument("--child", nargs=5, metavar=("SHAPE", "TRAINER", "BITS", "TAG", "TOGETHER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--folder", help="where the random models are built, and found again by a later run "
                        "(default: a temporary folder)")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    if args.child:
        shape, trainer, bits, tag, together = args.child
        print("RESULT " + json.dumps(child(shape, trainer, int(bits), args.steps, Path(args.folder), tag,
                                           int(together))))
        return
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    shapes = args.shape or (list(SEED_SHAPES) if cuda else ["small"])
    steps = args.steps or (20 if cuda else 2)
    trainers = args.trainer or ["peft"] + (["unsloth"] if importlib.util.find_spec("unsloth") else [])
    widths = args.bits or ([4, 16] if cuda else [16])
    # The children must still see what this process sees (an install by --target on PYTHONPATH).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    single, shared = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or scratch
        for shape in shapes:
            for trainer in trainers:
                for bits in widths:
                    key = (shape, trainer, bits)
                    for together, into in ((1, single), (args.share, shared)):
                        if together == 1 and into is shared:
                            continue
                        start = time.perf_counter()
                        result = run_children(shape, trainer, bits, steps, folder, together, env)
                        label = f"{shape} {trainer} {bits}-bit" + (f", {together} at once" if together > 1 else "")
                        if isinstance(result, str):
                            print(f"{label}: failed\n{result}", flush=True)
                            continue
                        into[key] = result
                        rate = sum(r["tokens"] for r in result) / max(r["seconds"] for r in result)
                        print(f"{label}: {rate:.0f} tokens/s ({time.perf_counter() - start:.0f} s with loading)",
                              flush=True)  # if cut short
    print_tables(single, shared, steps, cuda)


def print_tables(single: dict, shared: dict, steps: int, cuda: bool) -> None:
    rows = [result[0] for result in single.values()]
    if not rows:
        return
    device = rows[0]["device"]
    print(f"\ntraining at the seed's settings (LoRA r=16, batch 8 x 2, max length 256, packed rows, seed-like "
          f"chat lengths), {steps} steps, {device}")
    print(f"{'shape':7}{'trainer':9}{'bits':>5}{'tokens/s':>11}{'s/step':>8}{'peak GiB':>10}{'N (matmul)':>12}"
          f"{'MFU':>7}")
    for row in rows:
        share = mfu(row)
        print(f"{row['shape']:7}{row['trainer']:9}{row['bits']:>5}{row['tokens_per_s']:>11.0f}"
              f"{row['seconds'] / row['steps']:>8.2f}{row['peak_gib']:>10.1f}{row['matmul_parameters'] / 1e9:>11.3f}B"
              f"{'' if share is None else f'{share:.1%}':>7}")
    if peak_flops(device) is None:
        print(f"MFU: no bf16 peak on record for '{device}'")
    for (shape, trainer, bits), results in shared.items():
        rate = sum(r["tokens"] for r in results) / max(r["seconds"] for r in results)
        alone = single[(shape, trainer, bits)][0]["tokens_per_s"]
        peak = max(r["peak_gib"] for r in results)
        print(f"{shape} {trainer} {bits}-bit, {len(results)} at once: {rate:.0f} tokens/s summed, "
              f"{rate / alone:.2f}x one alone" + ("" if peak != peak else f"; peak {peak:.1f} GiB each"))
    for shape in sorted({s for s, _, _ in single}):
        for bits in sorted({b for _, _, b in single}):
            if (shape, "peft", bits) in single and (shape, "unsloth", bits) in single:
                ratio = (single[(shape, "unsloth", bits)][0]["tokens_per_s"]
                         / single[(shape, "peft", bits)][0]["tokens_per_s"])
                print(f"ratio unsloth / peft tokens per second, {shape} {bits}-bit: {ratio:.2f}")
    print_projection(single, shared)


def print_projection(single: dict, shared: dict) -> None:
    """The seed grid's training time from the measured rates: each shape's two domains, three epochs,
    at the tokens per chat measured; shapes one after another, and within a shape one unit at a
    time or the units sharing the GPU (the summed rate measured with --share)."""
    for trainer, bits in sorted({(t, b) for _, t, b in single}):
        measured = [s for s in SEED_SHAPES if (s, trainer, bits) in single]
        if not measured:
            continue
        alone = at_once = 0.0
        for shape in measured:
            row = single[(shape, trainer, bits)][0]
            tokens = sum(SEED_DOMAINS.values()) * SEED_EPOCHS * row["tokens"] / row["chats"]
            alone += tokens / row["tokens_per_s"]
            results = shared.get((shape, trainer, bits))
            at_once += tokens / (sum(r["tokens"] for r in results) / max(r["seconds"] for r in results)
                                 if results else row["tokens_per_s"])
        missing = [s for s in SEED_SHAPES if s not in measured]
        print(f"seed grid's training, {trainer} {bits}-bit ({', '.join(measured)}"
              f"{'; not measured: ' + ', '.join(missing) if missing else ''}): {alone / 3600:.2f} h one unit at a "
              f"time" + (f", {at_once / 3600:.2f} h with units sharing the GPU" if shared else ""))


if __name__ == "__main__":
    main()
