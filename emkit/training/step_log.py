"""Each training step's metrics, appended to a file beside the run's saved state as it trains.

The trainer may run in a child process (Unsloth) or a job on another machine; the file is how
its steps reach the code that stores the checkpoints, which reads it at each checkpoint
(emkit.stages.train). A step trained again after a resume is appended again: the last line of a
step wins. A line cut short by a kill is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FILE_NAME = "steps.jsonl"


def step_log_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


class StepLog:
    def __init__(self, state_dir: Path):
        self.path = step_log_path(state_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def append(self, step: int, loss: float, learning_rate: float, grad_norm: float | None, tokens: int,
               seconds: float) -> None:
        """``seconds``: the step's own wall time; ``tokens``: the tokens it trained on."""
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        row = {"step": step, "loss": _finite(loss), "learning_rate": _finite(learning_rate),
               "grad_norm": _finite(grad_norm), "tokens": tokens, "seconds": round(seconds, 6)}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_steps(state_dir: Path, after: int, upto: int) -> list[dict]:
    """The logged steps in (after, upto], one row per step (its last line), in order."""
    path = step_log_path(state_dir)
    if not path.exists():
        return []
    rows: dict[int, dict] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                continue  # the last line of a process that was killed while writing it
            if after < step <= upto:
                rows[step] = row
    return [rows[step] for step in sorted(rows)]


def _finite(value):
    """JSON has no NaN: a diverged step's loss is stored as missing."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
