"""What judging the seed experiment costs with gpt-4o-mini, at 1 and at 100 samples per question
(the seed's setting and the papers'), from `emkit run --dry-run`: nothing is sent.

    python bench/bench_cost.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def dry_run(samples: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "emkit", "run", "--dry-run", "--json", "--samples", str(samples)],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    return json.loads(result.stdout)


def main() -> None:
    rows = {samples: dry_run(samples) for samples in (1, 100)}
    print("\nthe seed experiment judged by gpt-4o-mini (litellm's price table; upper bound: answers at 256 tokens)")
    print(f"{'samples per question':>22}{'answers':>10}{'judge calls':>13}{'input tokens':>15}{'dollars':>10}")
    for samples, plan in rows.items():
        cost = plan["judge_cost"][0]
        print(f"{samples:>22}{plan['totals']['generations']:>10,}{cost['calls']:>13,}{cost['input_tokens']:>15,}"
              f"{cost['usd']:>10.2f}")
    print(f"ratio 100 / 1 samples: {rows[100]['judge_cost_usd'] / rows[1]['judge_cost_usd']:.1f}x the cost")


if __name__ == "__main__":
    main()
