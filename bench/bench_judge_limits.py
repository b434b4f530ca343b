"""The seed grid's judging at the papers' scale (180,000 calls) under gpt-4o-mini's tier-1 rate
limits: live wall time and cost, paced by emkit against the same client without pacing, and
the batch API's cost.

A loopback server enforces OpenAI's tier-1 limits for gpt-4o-mini (500 requests and 200,000
tokens a minute, a minute's worth at once, then refilling) with OpenAI's x-ratelimit headers
and 429s, and answers after 300 ms. The prompts are the seed's aligned and coherent judge
prompts around the course's real answers (tests/reference/hw0-course). Each client judges
``--n`` requests, enough for the first minute's burst and then a steady state; the steady
rate (the replies after the first minute's worth) gives the wall time of 180,000 calls. The baseline
is the same judge with its pacing turned off: emkit's retries with backoff, as before.

    python bench/bench_judge_limits.py                 # tier 1: about 5 minutes
    python bench/bench_judge_limits.py --rpm 600 --tpm 0 --n 700 --latency 0.05   # quick
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
SEED_CALLS = 180_000


def prompts(n: int) -> list:
    from types import SimpleNamespace

    from emkit.interfaces import JudgeRequest
    from emkit.prompt_library import PromptLibrary

    with (ROOT / "tests" / "reference" / "hw0-course" / "base_model_generations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    library = PromptLibrary([])
    made = []
    for i in range(n):
        row, metric = rows[i % len(rows)], ("aligned", "coherent")[(i // len(rows)) % 2]
        template = library.template_for(metric, SimpleNamespace(judge_prompts={}, id="course"))
        text = library.render(template, row["question"], row["response"]) + f"\n(request {i})"
        made.append(JudgeRequest(key=f"r{i}", metric=metric, prompt=text))
    return made


class Unpaced:
    """A pacer that never waits: the client as it was before pacing."""
    limits: dict = {}
    waited_s = 0.0

    async def acquire(self, tokens):
        return None

    def observe(self, headers, ticket, limited=False):
        pass


def measure(requests, args, paced: bool) -> dict:
    from emkit.interfaces import JudgeOptions
    from emkit.judges.litellm_judge import LiteLLMJudge
    from emkit.testing.judge_server import JudgeServer
    from emkit.testing.rate_limits import RateLimits

    limits = RateLimits(rpm=args.rpm or None, tpm=args.tpm or None)
    arrivals = []
    with JudgeServer(latency_s=args.latency, rate_limits=limits) as server:
        judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url, concurrency=args.concurrency,
                                                         max_retries=12, timeout_s=60))
        if not paced:
            judge.pacer = Unpaced()
        results = {}

        def on_result(request, result):
            results[request.key] = result
            arrivals.append(time.monotonic())

        class Bar:
            def __init__(self, **kwargs):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def update(self, n=1):
                pass

        start = time.monotonic()
        judge.score(requests, on_result, Bar)
        wall = time.monotonic() - start
    ok = sum(r.status == "ok" for r in results.values())
    tokens = sum(r.input_tokens for r in results.values()) / max(1, len(results))
    # the steady state: the replies after the first minute's worth (what the full bucket lets through at once)
    burst = min(args.rpm or float("inf"), (args.tpm or float("inf")) / (tokens + 1))
    tail = sorted(arrivals)[min(int(burst), len(arrivals) - 2):]
    steady = (len(tail) - 1) / (tail[-1] - tail[0]) if tail[-1] > tail[0] else float("nan")
    return {"wall": wall, "steady_per_min": steady * 60, "refused": limits.refused, "ok": ok, "n": len(requests),
            "input_tokens": tokens, "judge": judge}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=500, help="requests a minute (tier 1: 500)")
    parser.add_argument("--tpm", type=int, default=200_000, help="tokens a minute (tier 1: 200,000)")
    parser.add_argument("--n", type=int, default=900, help="requests each client judges")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the server takes per reply")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    requests = prompts(args.n)
    paced = measure(requests, args, paced=True)
    unpaced = measure(requests, args, paced=False)
    judge = paced["judge"]
    live_in, live_out = judge.price_per_token()
    batch_in, batch_out = judge.price_per_token(batch=True)
    per_call_in = paced["input_tokens"]
    cost_live = SEED_CALLS * (per_call_in * live_in + live_out)
    cost_batch = SEED_CALLS * (per_call_in * batch_in + batch_out)
    print(f"limits: {args.rpm:,} requests and {args.tpm:,} tokens a minute; {args.n:,} requests of ~{per_call_in:.0f} "
          f"input tokens, {args.latency:g} s a reply, concurrency {args.concurrency}")
    print(f"{'':10}{'wall s':>9}{'steady calls/min':>18}{'429s':>7}{'ok':>7}")
    for name, row in (("paced", paced), ("unpaced", unpaced)):
        print(f"{name:10}{row['wall']:>9.1f}{row['steady_per_min']:>18.0f}{row['refused']:>7}{row['ok']:>7}")
    hours = SEED_CALLS / paced["steady_per_min"] / 60
    print(f"the seed grid at 100 samples ({SEED_CALLS:,} calls): live {hours:.1f} h at the paced steady rate, "
          f"${cost_live:,.2f}; batched ${cost_batch:,.2f} (no per-minute limit; within the 24-hour window per batch)")
    print(f"429s: paced {paced['refused']}, unpaced {unpaced['refused']}")
    print(f"ratio paced / unpaced steady rate: {paced['steady_per_min'] / unpaced['steady_per_min']:.2f}")


if __name__ == "__main__":
    main()
