"""Judging throughput: emkit's concurrent judge against a sequential loop, same server, same run.

A loopback OpenAI-compatible server answers after a fixed latency (200 ms by default, about
what gpt-4o-mini takes). The baseline is what the course scripts do: one litellm call after
another. The ideal is concurrency / latency. Also printed: the client's CPU time per call.

    python bench/bench_judge.py                      # 2,000 judgments at concurrency 32 and 128
    python bench/bench_judge.py --n 400 --concurrency 32

emkit is measured on its default transport (OpenAI-protocol providers on emkit's lean HTTP
client) and, at the first concurrency, with transport = "litellm" (every call through
litellm.acompletion), so the cost of litellm's own machinery is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@contextmanager
def timed():
    box = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield box
    box["wall"] = time.perf_counter() - wall
    box["cpu"] = time.process_time() - cpu


@contextmanager
def judge_server_process(latency: float):
    """The server in a process of its own, so the client's CPU time is the client's alone."""
    import subprocess

    server = subprocess.Popen([sys.executable, "-m", "emkit.testing.judge_server", "--latency", str(latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait()


def run_emkit(url: str, n: int, concurrency: int, tag: str, transport: str = "auto") -> dict:
    from emkit.interfaces import JudgeOptions
    from emkit.judging.cache import JudgeCache
    from emkit.plugins import get_registry
    from emkit.progress import silent
    from emkit.stages.judge import JudgePool, JudgeTarget, judge_with_fallback

    class Discard:
        def add_judgment(self, *args):
            pass

    targets = [JudgeTarget(str(i), "aligned", f"{tag} prompt {i}: rate this answer.", "v") for i in range(n)]
    options = JudgeOptions(api_base=url, scoring="logprobs", concurrency=concurrency, timeout_s=30, max_retries=2,
                           transport=transport)
    with tempfile.TemporaryDirectory() as folder:
        cache = JudgeCache(Path(folder) / "cache.sqlite")
        with timed() as t:
            tally = judge_with_fallback(["gpt-4o-mini"], targets, JudgePool(options, get_registry()), Discard(), cache,
                                        silent, 1.0)
        cache.close()
    assert tally.statuses.get("ok") == n, tally.statuses
    return {"rate": n / t["wall"], "wall": t["wall"], "cpu_ms_per_call": 1000 * t["cpu"] / n}


def run_sequential(url: str, n: int) -> dict:
    from emkit.judges.litellm_judge import import_litellm

    litellm = import_litellm()
    with timed() as t:
        for i in range(n):
            litellm.completion(model="gpt-4o-mini", api_base=url, api_key="x", max_tokens=1, temperature=0,
                               logprobs=True, top_logprobs=20,
                               messages=[{"role": "user", "content": f"seq prompt {i}: rate this answer."}])
    return {"rate": n / t["wall"], "wall": t["wall"], "cpu_ms_per_call": 1000 * t["cpu"] / n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="judgments per emkit run")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency in seconds")
    parser.add_argument("--concurrency", type=int, action="append", help="emkit concurrency (repeatable)")
    parser.add_argument("--baseline-n", type=int, default=25,
                        help="calls the sequential loop makes (its rate does not depend on n)")
    args = parser.parse_args(argv)
    concurrencies = args.concurrency or [32, 128]
    with judge_server_process(args.latency) as url:
        run_emkit(url, 8, 4, "warm-up")  # imports and connection set-up stay out of the numbers
        run_emkit(url, 8, 4, "warm-up-litellm", "litellm")
        baseline = run_sequential(url, args.baseline_n)
        rows = [(c, run_emkit(url, args.n, c, f"c{c}")) for c in concurrencies]
        via_litellm = run_emkit(url, args.n, concurrencies[0], "litellm", "litellm")
    print(f"\njudging against a loopback server with {1000 * args.latency:.0f} ms latency")
    print(f"{'':34}{'judgments/s':>12}{'seconds':>10}{'CPU ms/call':>13}{'of ideal':>10}")
    print(f"{'sequential loop (' + str(args.baseline_n) + ' calls)':34}{baseline['rate']:>12.1f}"
          f"{baseline['wall']:>10.1f}{baseline['cpu_ms_per_call']:>13.2f}{'':>10}")
    for concurrency, row in rows:
        ideal = concurrency / args.latency
        print(f"{'emkit, ' + str(args.n) + ' calls, concurrency ' + str(concurrency):34}{row['rate']:>12.1f}"
              f"{row['wall']:>10.1f}{row['cpu_ms_per_call']:>13.2f}{row['rate'] / ideal:>10.2f}")
    ideal = concurrencies[0] / args.latency
    print(f"{'  same via litellm.acompletion':34}{via_litellm['rate']:>12.1f}{via_litellm['wall']:>10.1f}"
          f"{via_litellm['cpu_ms_per_call']:>13.2f}{via_litellm['rate'] / ideal:>10.2f}")
    for concurrency, row in rows:
        print(f"ratio emkit (concurrency {concurrency}) / sequential loop: {row['rate'] / baseline['rate']:.1f}x; "
              f"of the ideal {concurrency / args.latency:.0f}/s: {row['rate'] / (concurrency / args.latency):.2f}")


if __name__ == "__main__":
    main()
