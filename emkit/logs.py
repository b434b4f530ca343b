"""emkit's log: plain lines on stderr, and a timestamped copy in the run directory."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from emkit.secrets import redact


class _Redacting(logging.Formatter):
    def format(self, record):
        return redact(super().format(record))


# Notices that libraries log at WARNING when they are imported, about a faster path they could not
# take and do without; nothing a user can act on, printed on every model load. Kept at DEBUG.
IMPORT_NOTICES = {
    # bitsandbytes asks the kernels hub for a fused CPU 4-bit matmul: offline, or without the
    # `kernels` package, it uses its own (what emkit measures and tests)
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    # ... and with HF_HUB_OFFLINE=1, `kernels` (0.19 on) says it cannot check the kernel's publisher
    # offline, though the kernel it looked for was only ever in the cache
    "kernels._internals.hf_hub": ("Skipping publisher trust check for ",),
    # torchao (which unsloth brings) tries each compiled extension; builds for another CUDA or Python fail
    "torchao": ("Failed to load ",),
    # torchao registers its enums the way torch now deprecates
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


class _ImportNotice(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        message = record.getMessage()
        if record.levelno < logging.ERROR and any(p in message for p in self.prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_import_notices() -> None:
    for name, prefixes in IMPORT_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ImportNotice) for f in logger.filters):
            logger.addFilter(_ImportNotice(prefixes))


def setup_console(level: int = logging.INFO) -> None:
    quiet_import_notices()
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
