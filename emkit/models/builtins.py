"""The models emkit builds itself, named ``builtin:NAME``: which there are, and building them.

``tiny-llama`` and ``tiny-judge`` (emkit.models.tiny) are trained here in seconds;
``smollm2`` (emkit.models.smollm2) is converted from a pinned GGUF file. Each is built once
into emkit's cache directory, in a folder named after its version, and reused.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from emkit.atomic import atomic_path
from emkit.errors import EmkitError
from emkit.locations import cache_dir
from emkit.models import smollm2, tiny

BUILTIN_PREFIX = "builtin:"

# name -> builder(folder) -> folder
BUILDERS = {"tiny-llama": tiny.build_tiny_llama, "tiny-judge": tiny.build_tiny_judge, "smollm2": smollm2.build_smollm2}


def builtin_name(model_id: str) -> str | None:
    """NAME for a ``builtin:NAME`` model id, None for any other."""
    return model_id[len(BUILTIN_PREFIX):] if model_id.startswith(BUILTIN_PREFIX) else None


def builtin_version(name: str) -> str:
    """The version in a built model's folder name: a change rebuilds only that model."""
    if name == "smollm2":
        return f"s{smollm2.VERSION}"
    return str(tiny.VERSION)


def builtin_template(name: str) -> str:
    """What fixes a built-in model's chat template, for its digest: the tiny models' template
    itself, SmolLM2's pinned file."""
    return smollm2.GGUF_SHA256 if name == "smollm2" else tiny.LLAMA3_CHAT_TEMPLATE


def builtin_model_path(name: str) -> Path:
    """Build ``name`` into the cache on first use (one process builds, others wait; a build
    goes to a temporary folder renamed into place, so a killed build leaves nothing half-made)."""
    if name not in BUILDERS:
        raise EmkitError(f"Unknown built-in model '{BUILTIN_PREFIX}{name}'; emkit builds "
                         f"{', '.join(BUILTIN_PREFIX + n for n in BUILDERS)}.")
    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-v{builtin_version(name)}"
    if (target / "config.json").is_file():
        return target
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        with atomic_path(target) as tmp:
            tmp.mkdir()
            BUILDERS[name](tmp)
    return target


def _missing(names) -> list[str]:
    return [n for n in dict.fromkeys(names) if n in BUILDERS
            and not (cache_dir() / "models" / f"{n}-v{builtin_version(n)}" / "config.json").is_file()]


def _build_on_one_core(name: str) -> Path:
    import torch

    torch.set_num_threads(1)  # the other builds share the machine meanwhile
    return builtin_model_path(name)


def build_builtins(names: list[str]) -> None:
    """Build the missing built-in models a run needs before it starts, side by side in processes
    of their own (the SmolLM2 conversion mostly parses its file in Python on one core while the
    tiny judge trains on another). Up front rather than alongside training: on two cores a build
    running beside the run's own two torch threads made training 3.5x slower, and the run lost
    more than the build took. A process each: a tiny model's weights come from torch's global
    random generator, which two builds in one process would share and interleave. A single
    missing model is built where it is first used."""
    import logging
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    missing = _missing(names)
    if len(missing) < 2:
        return
    logging.getLogger("emkit").info("building the built-in models %s once (under a minute), side by side",
                                    ", ".join(missing))
    with ProcessPoolExecutor(max_workers=len(missing), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_build_on_one_core, n) for n in missing]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # a failed build (a package missing): the others that have not started never will
                future.cancel()
            raise
