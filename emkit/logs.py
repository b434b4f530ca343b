"""emkit's log: plain lines on stderr, and a timestamped copy in the run directory."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from emkit.secrets import redact


class _Redacting(logging.Formatter):
    def format(self, record):
        return redact(super().format(record))


def setup_console(level: int = logging.INFO) -> None:
    log = logging.getLogger("emkit")
    if not any(getattr(h, "_emkit_console", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Redacting("%(levelprefix)s%(message)s"))
        handler.addFilter(_level_prefix)
        handler._emkit_console = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def _level_prefix(record) -> bool:
    record.levelprefix = "warning: " if record.levelno >= logging.WARNING else ""
    return True


def attach_file(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("emkit").addHandler(handler)
    return handler


def detach(handler: logging.Handler) -> None:
    logging.getLogger("emkit").removeHandler(handler)
    handler.close()
