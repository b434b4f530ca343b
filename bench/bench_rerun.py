"""Re-running a finished experiment: the smoke run's second invocation, against its first.

The second run must make no model and no judge call; it is checked here by running it in a
process that reports which heavy libraries it imported (it should import neither torch nor
transformers). Both invocations include Python's start-up and every import.

    python bench/bench_rerun.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = ("import sys\nfrom emkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
         "    code = exit.code\nelse:\n    code = 0\n"
         "print('IMPORTED', sorted(m for m in ('torch', 'transformers', 'peft', 'litellm') if m in sys.modules),"
         " file=sys.stderr)\nsys.exit(code)\n")


def invoke(out: Path) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, "run", "--preset", "tiny", "--out", str(out)],
                            capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return elapsed, result.stderr


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from emkit.models.builtins import builtin_model_path

    builtin_model_path("tiny-llama")  # the first run is measured without the one-off model builds
    builtin_model_path("tiny-judge")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["EMKIT_JUDGE_CACHE"] = str(Path(folder) / "cache.sqlite")
        first_s, first_log = invoke(Path(folder) / "run")
        second_s, second_log = invoke(Path(folder) / "run")
    done = next(line for line in second_log.splitlines() if line.startswith("done:"))
    imported = next(line for line in second_log.splitlines() if line.startswith("IMPORTED"))
    print(f"\n{'':42}{'seconds':>9}")
    print(f"{'first run of the smoke preset':42}{first_s:>9.1f}")
    print(f"{'second run (nothing left to do)':42}{second_s:>9.1f}")
    print(f"second run: {done[len('done: '):]}; heavy libraries imported: {imported[len('IMPORTED '):]}")
    print(f"ratio second / first: {second_s / first_s:.2f} (target: under 15 s)")


if __name__ == "__main__":
    main()
