"""A run directory: its layout, its lock, and the config it was made with.

    DIR/config.toml      the resolved config (rewritten on every run)
    DIR/emkit.sqlite     the results store
    DIR/adapters/RUN/step-000110/   LoRA adapters, safetensors
    DIR/train_state/RUN/            resumable optimizer state
    DIR/report.html, DIR/exports/*.csv, DIR/figures/*.png
    DIR/logs/emkit.log

Results in the store are only comparable if they were made the same way, so a second run
into the same directory may add models, domains, seeds, samples, question sets or judges,
but may not change how models are trained or sampled.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from emkit.atomic import write_bytes_atomic
from emkit.errors import EmkitError
from emkit.store import STORE_FILE, Store

if TYPE_CHECKING:  # the config's models (pydantic) load only where a config is made: reading one needs none
    from emkit.config import ExperimentConfig

CONFIG_FILE = "config.toml"
LOCK_FILE = ".emkit.lock"

# Settings that change what a stored adapter or answer means.
FROZEN = {
    # packing lays the same chats out otherwise, with the same loss up to float rounding
    "training": {"exclude": {"save_state_every", "keep_state", "packing"}},
    "checkpoints": {"exclude": {"refine"}},  # added checkpoints change no stored result: carried over below
    "evaluation": {"exclude": {"batch_size", "samples_per_question", "question_sets"}},
    "data": {"exclude": {"dir"}},
}


def saved_config_path(run_path) -> Path:
    """Where a run directory keeps the config its latest `emkit run` resolved."""
    return Path(run_path) / CONFIG_FILE


def read_saved_config(run_path) -> dict | None:
    """The config saved in a run directory, as the TOML it was written as (not checked); None where
    the directory has none. Every reader of a run's saved config reads it here."""
    path = saved_config_path(run_path)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return tomllib.load(handle)


def with_saved_refinements(config: ExperimentConfig, run_path: Path) -> ExperimentConfig:
    """The config with the checkpoints `emkit refine` added to this directory's runs: a later
    `emkit run` into it keeps them (and finishes them, if a refine was stopped)."""
    saved = (read_saved_config(run_path) or {}).get("checkpoints", {}).get("refine", {})
    if not saved:
        return config
    merged = {key: sorted(set(steps) | set(config.checkpoints.refine.get(key, []))) for key, steps in saved.items()}
    merged.update({k: v for k, v in config.checkpoints.refine.items() if k not in merged})
    return config.model_copy(update={"checkpoints": config.checkpoints.model_copy(update={"refine": merged})})


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_handle = None
        self.store: Store | None = None

    # layout
    @property
    def adapters(self) -> Path:
        return self.path / "adapters"

    @property
    def train_state(self) -> Path:
        return self.path / "train_state"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    # lifecycle
    def open(self, config: ExperimentConfig) -> "RunDirectory":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_compatible(config)
            write_bytes_atomic(saved_config_path(self.path), tomli_w.dumps(config.to_toml_dict()).encode(), fsync=True)
            self.store = Store(self.path / STORE_FILE)
        except BaseException:
            self.close()
            raise
        return self

    def attach(self) -> "RunDirectory":
        """Open an existing run's store under the run's lock, leaving its config as it is (emkit rejudge)."""
        if not (self.path / STORE_FILE).is_file():
            raise EmkitError(f"{self.path} is not an emkit run directory (no {STORE_FILE}); pass the --out directory "
                             f"of an `emkit run`.")
        self._lock()
        try:
            self.store = Store(self.path / STORE_FILE)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _lock(self) -> None:
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise EmkitError(
                f"{self.path} is in use by emkit process {holder}; wait for it to finish, "
                f"or pass another --out directory."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def saved_config(self) -> dict | None:
        return read_saved_config(self.path)

    def _check_compatible(self, config: ExperimentConfig) -> None:
        saved = self.saved_config()
        if saved is None:
            return
        new = config.to_toml_dict()
        for section, rule in FROZEN.items():
            old_values = saved.get(section, {})
            new_values = new.get(section, {})
            for key in sorted(set(old_values) | set(new_values)):
                if key in rule["exclude"]:
                    continue
                if old_values.get(key) != new_values.get(key):
                    raise EmkitError(
                        f"{self.path} was made with {section}.{key} = {old_values.get(key)!r} and this run asks "
                        f"for {new_values.get(key)!r}; results made both ways are not comparable, so pass a "
                        f"new --out directory."
                    )
        old_models = {m["label"]: m["id"] for m in saved.get("models", [])}
        for model in config.models:
            if model.label in old_models and old_models[model.label] != model.id:
                raise EmkitError(
                    f"{self.path} already has model '{model.label}' = {old_models[model.label]}; this run names "
                    f"{model.id} with the same label; give it another label or pass a new --out directory."
                )


def saved_experiment_config(run_path: Path):
    """The config an `emkit run` saved in its run directory, checked as any config is."""
    from emkit.config import config_from_dict

    saved = read_saved_config(run_path) if (Path(run_path) / STORE_FILE).is_file() else None
    if saved is None:
        raise EmkitError(f"{run_path} is not an emkit run directory (no emkit.sqlite and config.toml); pass the "
                         f"--out directory of an `emkit run`.")
    return config_from_dict(saved, str(saved_config_path(run_path)))

