"""Helpers the tests share."""

import os
import subprocess
import sys


def run_emkit(*args, env=None, cwd=None, timeout=600, check=True):
    """Run the installed `emkit` command in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "emkit", *map(str, args)], capture_output=True, text=True,
                            env=full_env, cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"emkit {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result
