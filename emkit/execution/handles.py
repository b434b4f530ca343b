"""What an executor hands back for a submitted unit, and the states the coordinator knows."""

from __future__ import annotations

from dataclasses import dataclass, field

QUEUED, RUNNING, DONE, FAILED, GONE = "queued", "running", "done", "failed", "gone"
# gone: the job ended without a result (cancelled, killed, node lost); its unit can start again


@dataclass
class JobHandle:
    unit_key: str
    job_id: str
    log_path: str
    extra: dict = field(default_factory=dict)


@dataclass
class JobState:
    state: str
    detail: str = ""  # for FAILED: the error and the tail of the job's log; for QUEUED: why it waits
    cannot_start: bool = False  # the scheduler will never start the job as asked: the run ends, saying why


def log_tail(path, lines: int = 15) -> str:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return f"(no log at {path})"
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 64_000))
        text = handle.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
