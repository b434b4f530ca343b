"""The residual stream after each decoder layer: read it, or change it, through forward hooks.

A decoder layer's output is the residual stream after that layer (in transformers 5 a layer
returns the hidden states themselves; older ones a tuple whose first item they are). Reading
keeps, per layer, the mean over each row's answer tokens only, so what a batch holds is
[rows, hidden] per layer and never the [rows, tokens, hidden] activations of more than the
layer running. Changing is applied to every position, the prompt's and each generated token's.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from emkit.errors import EmkitError


def decoder_layers(model) -> list:
    """The decoder layers of a causal LM, through a PEFT wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise EmkitError(f"{type(inner).__name__} has no decoder layers emkit can find (model.get_decoder().layers); "
                         "directions need a decoder-only model of the Llama, Qwen, Gemma or Mistral kind.")
    return list(layers)


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def answer_means(model, layers: list[int], mask):
    """While inside, every forward pass records, for each layer in ``layers``, the mean residual
    activation over the positions ``mask`` marks (a [rows, tokens] 0/1 tensor the caller fills in
    before each pass: ``mask[0] = ...``). Yields a dict layer -> [rows, hidden] float32 of the
    last pass."""
    import torch

    found, handles, modules = {}, [], decoder_layers(model)

    def hook_for(layer):
        def hook(module, inputs, output):
            hidden = _hidden(output)
            weights = mask[0].to(device=hidden.device, dtype=torch.float32)
            total = torch.einsum("rt,rth->rh", weights, hidden.float())
            found[layer] = (total / weights.sum(dim=1, keepdim=True).clamp(min=1)).cpu()
        return hook

    try:
        for layer in layers:
            handles.append(modules[layer].register_forward_hook(hook_for(layer)))
        yield found
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Intervention:
    """A change to the residual stream at some layers, applied at every position.

    ``ablate``: the direction's component is projected out, h - (h . u) u with u its unit vector,
    so the activation has none of it left. ``steer``: ``scale`` times the direction (the mean
    difference itself, so scale 1 moves the aligned answers' mean onto the misaligned ones') is
    added. ``vectors`` holds each layer's direction."""

    kind: str  # "ablate" or "steer"
    vectors: dict = field(hash=False)  # layer -> direction (1-D tensor, hidden size)
    scale: float = 1.0
    source: str = ""  # where the direction came from, e.g. "medical-s0@1320"

    def __post_init__(self):
        if self.kind not in ("ablate", "steer"):
            raise EmkitError(f"an intervention is 'ablate' or 'steer', not {self.kind!r}.")
        if not self.vectors:
            raise EmkitError("an intervention needs a direction at one layer at least.")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def vector_bytes(self) -> bytes:
        """The vectors as float32, layer after layer in ``layers`` order: what is stored beside its answers."""
        import numpy as np

        return b"".join(np.asarray(self.vectors[layer].detach().cpu().float().numpy(), dtype=np.float32).tobytes()
                        for layer in self.layers)

    @property
    def key(self) -> str:
        """What answers generated under it are keyed by: readable (kind, scale, layers, source) and exact
        (a digest of the vectors: a direction fitted again from other answers is another intervention)."""
        import hashlib

        layers = "+".join(str(layer) for layer in self.layers)
        scale = "" if self.kind == "ablate" else f"x{self.scale:g}"
        digest = hashlib.sha256(self.vector_bytes()).hexdigest()[:8]
        return f"{self.kind}{scale}:L{layers}" + (f"@{self.source}" if self.source else "") + f"#{digest}"

    @classmethod
    def from_stored(cls, kind: str, scale: float, layers: list[int], source: str, vectors: bytes) -> "Intervention":
        import numpy as np
        import torch

        rows = np.frombuffer(vectors, dtype=np.float32).reshape(len(layers), -1)
        return cls(kind, {layer: torch.from_numpy(rows[i].copy()) for i, layer in enumerate(layers)}, scale, source)


def ablate(hidden, direction):
    import torch

    unit = direction.to(device=hidden.device, dtype=torch.float32)
    unit = unit / unit.norm()
    flat = hidden.float()
    return (flat - (flat @ unit)[..., None] * unit).to(hidden.dtype)


def steer(hidden, direction, scale: float):
    return hidden + (scale * direction.float()).to(device=hidden.device, dtype=hidden.dtype)


@contextmanager
def intervene(model, intervention: Intervention | None):
    """While inside, the model's forward passes run with ``intervention`` (none: unchanged)."""
    if intervention is None:
        yield model
        return
    modules, handles = decoder_layers(model), []

    def hook_for(vector):
        def hook(module, inputs, output):
            hidden = _hidden(output)
            changed = ablate(hidden, vector) if intervention.kind == "ablate" else steer(hidden, vector,
                                                                                          intervention.scale)
            return _replace(output, changed)
        return hook

    try:
        for layer, vector in intervention.vectors.items():
            if not 0 <= layer < len(modules):
                raise EmkitError(f"layer {layer} does not exist: the model has layers 0 to {len(modules) - 1}.")
            handles.append(modules[layer].register_forward_hook(hook_for(vector)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
