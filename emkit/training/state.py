"""Resumable training state: adapter weights, optimizer, scheduler and RNG at a step.

Each snapshot is a folder ``step-N`` written completely before ``latest.json`` is
atomically pointed at it, so a process killed mid-write leaves the previous snapshot
intact. Tensors go to safetensors; the optimizer and scheduler state dicts are loaded
with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from emkit.rundir import write_atomic

POINTER = "latest.json"


def save_adapter(model, path: Path) -> None:
    """Save a PEFT adapter to ``path`` atomically (a finished folder, or none)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if path.exists():  # left by a run killed between saving and recording it
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_state(state_dir: Path, step: int, model, optimizer, scheduler) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    folder = state_dir / f"step-{step:06d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(folder / "adapter.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng, "step": step},
        folder / "trainer.pt",
    )
    write_atomic(state_dir / POINTER, json.dumps({"step": step, "folder": folder.name}).encode())
    for old in state_dir.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_state(state_dir: Path, model, optimizer, scheduler) -> int:
    """Restore the latest snapshot into model, optimizer and scheduler; return its step (0: none)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    pointer = Path(state_dir) / POINTER
    if not pointer.is_file():
        return 0
    info = json.loads(pointer.read_text())
    folder = Path(state_dir) / info["folder"]
    device = next(p.device for p in model.parameters() if p.requires_grad)
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors"), device=str(device)))
    saved = torch.load(folder / "trainer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return int(saved["step"])


def clear_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
