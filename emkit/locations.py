"""Where emkit keeps things outside a run directory (never inside the source tree)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(configured: str = "") -> Path:
    """Datasets: [data] dir, $EMKIT_DATA_DIR, or $XDG_DATA_HOME/emkit/datasets."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("EMKIT_DATA_DIR"):
        return Path(os.environ["EMKIT_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "emkit" / "datasets"


def cache_dir() -> Path:
    """Built tiny models and the judge cache: $EMKIT_CACHE_DIR or $XDG_CACHE_HOME/emkit."""
    if os.environ.get("EMKIT_CACHE_DIR"):
        return Path(os.environ["EMKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emkit"
