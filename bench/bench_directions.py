"""Activation throughput and peak memory of `emkit directions`, against the papers' way, in one run.

emkit streams: forward hooks on the decoder layers reduce each batch's residual stream to one mean
per answer and layer as each layer runs, and only the decoder runs (no output head, no logits).
The baseline is how the papers' notebooks read activations: the whole model with
``output_hidden_states=True`` (every layer's [batch, tokens, hidden] kept, and the logits over
the vocabulary computed), then the mean over the answer tokens. Both read the same answers in the
same batches; a child process each, so each peak is its own: CUDA's max allocated on a GPU, the
resident set's highest growth while reading on a CPU. The bench checks that both give the same means at
every layer but the last (``hidden_states[-1]`` is after the model's final norm; emkit reads the
layer's own output, as at every other layer).

    python bench/bench_directions.py                      # 1B shape (Llama-3.2-1B's config, random weights)
    python bench/bench_directions.py --shape small --answers 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def items(n: int) -> list:
    from bench_train import seed_like_chats

    return [(f"answer-{i}", "misaligned" if i % 2 else "aligned", chat) for i, chat in enumerate(seed_like_chats(n))]


def papers_means(model, tokenizer, batch, layers, max_length):
    """The notebooks' way: the full model with every hidden state returned, then the answer tokens' mean."""
    import torch

    from emkit.training.tokenize import IGNORE, encode_chat

    encoded = [encode_chat(tokenizer, chat, max_length) for _, _, chat in batch]
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    answer = torch.zeros((len(batch), width))
    for row, e in enumerate(encoded):
        ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[row, :len(e.input_ids)] = 1
        answer[row, :len(e.input_ids)] = torch.tensor([label != IGNORE for label in e.labels], dtype=torch.float)
    device = next(model.parameters()).device
    output = model(input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True,
                   use_cache=False)
    weights = answer.to(device)[..., None]
    # hidden_states[0] is the embedding; layer i's output is hidden_states[i + 1]
    return torch.stack([(output.hidden_states[layer + 1].float() * weights).sum(1) / weights.sum(1)
                        for layer in layers], dim=1).cpu()


class PeakRSS:
    """The resident set's highest growth over its size at the start, sampled every 5 ms (loading the model
    peaks higher than reading does, so the process's own maximum would hide the reading's)."""

    def __init__(self):
        import threading

        self.start = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    def _watch(self):
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return (max(self.peak, self._rss()) - self.start) / 2**20


def child(mode: str, model_path: str, n: int, batch_size: int, max_length: int) -> dict:
    import torch

    from emkit.directions.activations import stream_means
    from emkit.models import load_causal_lm, load_tokenizer

    cuda = torch.cuda.is_available()
    model = load_causal_lm(model_path, load_in_4bit=False).eval()
    if cuda:
        model = model.to("cuda")
    tokenizer = load_tokenizer(model_path)
    chosen = items(n)
    layers = list(range(model.config.num_hidden_layers))
    sampler = PeakRSS()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    start = time.perf_counter()
    means = []
    with torch.inference_mode():
        if mode == "emkit":
            for _, _, found in stream_means(model, tokenizer, chosen, layers, batch_size, max_length):
                means.append(found)
        else:
            for first in range(0, n, batch_size):
                means.extend(papers_means(model, tokenizer, chosen[first:first + batch_size], layers, max_length))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated() - loaded) / 2**20 if cuda else sampler.stop()
    from emkit.training.tokenize import encode_chat

    tokens = sum(len(encode_chat(tokenizer, chat, max_length).input_ids) for _, _, chat in chosen)
    # the last layer is left out: the papers' last hidden state is after the final norm, emkit's before it
    checksum = torch.stack(means)[:, :-1].double().sum().item()
    return {"mode": mode, "seconds": seconds, "answers_per_s": n / seconds, "tokens_per_s": tokens / seconds,
            "peak_mb": peak_mb, "device": torch.cuda.get_device_name() if cuda else "cpu", "checksum": checksum,
            "first": means[0][0, :4].tolist()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b", help="a shape of bench_gpu.py (default: 1b)")
    parser.add_argument("--answers", type=int, help="answers read (default: 512 on a GPU, 16 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--folder", help="where the random model is built (default: a temporary folder)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args.answers, args.batch_size,
                                           args.max_length)))
        return
    import torch

    from bench_gpu import build

    answers = args.answers or (512 if torch.cuda.is_available() else 16)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-directions-"))
    model_path = build(args.shape, folder)
    results = {}
    for mode in ("papers", "emkit"):
        done = subprocess.run([sys.executable, __file__, "--child", mode, str(model_path), "--answers", str(answers),
                               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the {mode} child failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    papers, emkit = results["papers"], results["emkit"]
    print(f"shape {args.shape}, {answers} seed-like answers, batch {args.batch_size}, every layer, on "
          f"{emkit['device']}")
    for row in (papers, emkit):
        print(f"  {row['mode']:>6}: {row['answers_per_s']:8.2f} answers/s {row['tokens_per_s']:9.0f} tokens/s   "
              f"peak {row['peak_mb']:8.0f} MB above the loaded model")
    print(f"  ratio emkit / papers: {emkit['answers_per_s'] / papers['answers_per_s']:.2f}x the throughput, "
          f"{emkit['peak_mb'] / max(papers['peak_mb'], 1e-9):.3f}x the peak memory")
    same = abs(emkit["checksum"] - papers["checksum"]) <= 1e-3 * max(1.0, abs(papers["checksum"]))
    print(f"  same means: {'yes' if same else 'NO'} (checksums {papers['checksum']:.6g} and {emkit['checksum']:.6g})")


if __name__ == "__main__":
    main()
