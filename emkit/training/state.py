"""Resumable training state: adapter weights, optimizer, scheduler and RNG at a step.

Each snapshot is a folder ``step-N``, written under a temporary name and renamed when complete
(with ``state.json`` inside, written last), so a process killed mid-write leaves no half
snapshot. The latest is the one a killed run resumes from; with ``training.keep_state`` the
snapshot at every checkpoint stays after training, so `emkit refine` can start again from the
checkpoint nearest before the steps it adds, with the optimizer exactly as it was. Tensors go
to safetensors; the optimizer and scheduler state dicts are loaded with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from emkit.atomic import atomic_path, write_bytes_atomic

POINTER = "latest.json"  # the latest snapshot, by name (what emkit before keep_state read)
MARKER = "state.json"
_FOLDER = re.compile(r"^step-(\d+)$")


def save_adapter(model, path: Path) -> None:
    """Save a PEFT adapter to ``path`` atomically (a finished folder, or none)."""
    # replaces a folder already at path: one left by a run killed between saving and recording it
    with atomic_path(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)


def snapshots(state_dir: Path) -> dict[int, Path]:
    """The complete snapshots in ``state_dir``, by step."""
    state_dir = Path(state_dir)
    found = {}
    if not state_dir.is_dir():
        return found
    for folder in state_dir.iterdir():
        match = _FOLDER.match(folder.name)
        if match and (folder / MARKER).is_file():
            found[int(match.group(1))] = folder
    pointer = state_dir / POINTER
    if pointer.is_file():  # a snapshot written before the marker existed: complete once pointed at
        folder = state_dir / json.loads(pointer.read_text())["folder"]
        if folder.is_dir() and (folder / "trainer.pt").is_file():
            found.setdefault(int(json.loads(pointer.read_text())["step"]), folder)
    return found


def save_state(state_dir: Path, step: int, model, optimizer, scheduler, keep=()) -> None:
    """Snapshot the training state at ``step``; remove the other snapshots except those at ``keep``."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    folder = state_dir / f"step-{step:06d}"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(tmp / "adapter.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng, "step": step},
            tmp / "trainer.pt",
        )
        (tmp / MARKER).write_text(json.dumps({"step": step}))
    write_bytes_atomic(state_dir / POINTER, json.dumps({"step": step, "folder": folder.name}).encode(), fsync=True)
    prune_state(state_dir, set(keep) | {step})


def load_state(state_dir: Path, model, optimizer, scheduler, before: int | None = None) -> int:
    """Restore the latest snapshot (before step ``before``, if given) into model, optimizer and
    scheduler; return its step (0: none, train from the start)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    usable = {step: folder for step, folder in snapshots(state_dir).items() if before is None or step < before}
    if not usable:
        return 0
    step = max(usable)
    folder = usable[step]
    device = next(p.device for p in model.parameters() if p.requires_grad)
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors"), device=str(device)))
    saved = torch.load(folder / "trainer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return int(saved["step"])


def prune_state(state_dir: Path, keep=()) -> None:
    """Remove every snapshot but those at the steps in ``keep`` (and half-written ones); the folder
    itself when nothing is kept."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return
    keep = set(keep)
    for folder in state_dir.iterdir():
        match = _FOLDER.match(folder.name)
        if (match and int(match.group(1)) not in keep) or folder.name.startswith(".step-"):
            shutil.rmtree(folder, ignore_errors=True)
    if not any(_FOLDER.match(f.name) for f in state_dir.iterdir()):
        shutil.rmtree(state_dir, ignore_errors=True)
