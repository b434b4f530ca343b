"""The adapter's own trajectory: how the LoRA weights move from checkpoint to checkpoint.

Turner, Soligo et al. saw a phase transition in the weights (the norms of A and B, the cosine
of consecutive checkpoints, a PCA of the adapter over steps). emkit reads every checkpoint's
``adapter_model.safetensors`` (never the base model) and measures, per checkpoint:

- per layer and module: the Frobenius norms of A, of B and of the update dW = scale * B @ A;
- over the whole adapter: the norm of dW, its cosine to the previous and to the final
  checkpoint, and its coordinates on the first two principal components of all checkpoints.

dW is what changes the model (A and B alone are not: B @ A = (B M) (M^-1 A) for any M), so
the cosines and the PCA are of dW, flattened over every module. dW is never formed: a module's
dW is out x in (8192 x 2048 for a 1B MLP), while the inner product of two of them is the sum of
the elementwise product of two r x r matrices, <B1 A1, B2 A2> = sum((B1^T B2) * (A1 A2^T)). The
Gram matrix of all checkpoints of a run comes from that, and an exact PCA of the flattened
updates comes from the Gram matrix (as in kernel PCA). Each module is read from every
checkpoint's file in turn (safetensors opens lazily), so memory holds one module at a time.

Step 0 is the base model: dW = 0, the origin the PCA path starts from.

Across runs, the same inner products compare the final updates of runs on one base model: does
a run learn the update another seed or another domain learns? (``update_similarity``.)
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")

MODULE_COLUMNS = ["run_key", "step", "layer", "module", "name", "rank", "scale", "norm_a", "norm_b", "norm_ba"]
STEP_COLUMNS = ["run_key", "step", "norm_a", "norm_b", "norm_ba", "cos_prev", "cos_final", "pc1", "pc2",
                "pc1_share", "pc2_share"]
SIMILARITY_COLUMNS = ["run_key_a", "run_key_b", "step_a", "step_b", "cosine"]


def _scale(config: dict, module: str) -> tuple[int, float]:
    """The module's rank and its LoRA scale (alpha / r, or alpha / sqrt(r) with rsLoRA), honouring
    PEFT's per-module ``rank_pattern`` and ``alpha_pattern``."""
    def lookup(patterns: dict, default):
        for pattern, value in (patterns or {}).items():
            if module == pattern or module.endswith("." + pattern) or re.fullmatch(rf".*\.{pattern}", module):
                return value
        return default

    rank = int(lookup(config.get("rank_pattern"), config.get("r", 8)))
    alpha = float(lookup(config.get("alpha_pattern"), config.get("lora_alpha", rank)))
    return rank, alpha / (rank ** 0.5 if config.get("use_rslora") else rank)


def _modules(path: Path) -> dict[str, tuple[str, str]]:
    """Module name -> (key of A, key of B) in one adapter file."""
    from safetensors import safe_open

    parts: dict[str, dict[str, str]] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            match = _LORA_KEY.match(key)
            if match:
                parts.setdefault(match["module"], {})[match["part"]] = key
    return {module: (p["A"], p["B"]) for module, p in parts.items() if "A" in p and "B" in p}


def _signature(path: Path, modules: dict[str, tuple[str, str]]) -> frozenset:
    """What two adapters must share for their updates to be compared: the same modules, saved under
    the same names, with the same shapes (so the same base model, target modules and ranks)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return frozenset((module, a, b, tuple(handle.get_slice(a).get_shape()), tuple(handle.get_slice(b).get_shape()))
                         for module, (a, b) in modules.items())


def _short(module: str) -> tuple[int, str]:
    layer = _LAYER.search(module + ".")
    return (int(layer.group(1)) if layer else -1), module.rsplit(".", 1)[-1]


def adapter_trajectory(checkpoints: dict[int, Path], run_key: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per module, per checkpoint) tables for one training run.

    ``checkpoints`` maps a step to its adapter folder (``adapter_model.safetensors`` and
    ``adapter_config.json``, as PEFT saves them). The first table has a row per checkpoint,
    layer and module; the second a row per checkpoint plus step 0."""
    from safetensors import safe_open

    steps = sorted(s for s in checkpoints if s > 0)
    if not steps:
        return pd.DataFrame(columns=MODULE_COLUMNS), pd.DataFrame(columns=STEP_COLUMNS)
    files = [Path(checkpoints[s]) / ADAPTER_FILE for s in steps]
    configs = [json.loads((Path(checkpoints[s]) / CONFIG_FILE).read_text()) for s in steps]
    modules = _modules(files[0])
    for step, path in zip(steps[1:], files[1:]):
        if _modules(path).keys() != modules.keys():
            raise ValueError(f"{path}: its LoRA modules differ from those of {files[0]}; the checkpoints of one "
                             f"run must adapt the same modules.")
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(path), framework="pt")) for path in files]
        gram, sq_a, sq_b, rows = _measure(handles, modules, configs, steps, run_key)
    per_module = pd.DataFrame(rows, columns=MODULE_COLUMNS)
    return per_module, _per_step(run_key, steps, gram, np.sqrt(sq_a), np.sqrt(sq_b))


def _measure(handles, modules, configs, steps, run_key):
    import torch

    t = len(steps)
    gram = torch.zeros(t, t, dtype=torch.float64)
    sq_a = np.zeros(t)
    sq_b = np.zeros(t)
    rows = []
    with torch.no_grad():
        for module, (key_a, key_b) in sorted(modules.items()):
            a = torch.stack([h.get_tensor(key_a).to(torch.float64) for h in handles])  # t x r x in
            b = torch.stack([h.get_tensor(key_b).to(torch.float64) for h in handles])  # t x out x r
            ranks_scales = [_scale(c, module) for c in configs]
            scale = torch.tensor([s for _, s in ranks_scales], dtype=torch.float64)
            # <dW_i, dW_j> = s_i s_j sum((B_i^T B_j) * (A_i A_j^T)), for all i, j at once
            btb = torch.einsum("tor,sop->tsrp", b, b)
            aat = torch.einsum("tri,spi->tsrp", a, a)
            inner = (btb * aat).sum(dim=(-1, -2)) * scale[:, None] * scale[None, :]
            gram += inner
            norm_a = torch.linalg.vector_norm(a.flatten(1), dim=1).double().numpy()
            norm_b = torch.linalg.vector_norm(b.flatten(1), dim=1).double().numpy()
            norm_ba = np.sqrt(np.clip(torch.diagonal(inner).numpy(), 0, None))
            sq_a += norm_a ** 2
            sq_b += norm_b ** 2
            layer, short = _short(module)
            for i, step in enumerate(steps):
                rows.append((run_key, step, layer, short, module, ranks_scales[i][0], ranks_scales[i][1],
                             norm_a[i], norm_b[i], norm_ba[i]))
    return gram.numpy(), sq_a, sq_b, rows


def _per_step(run_key: str, steps: list[int], gram: np.ndarray, norm_a, norm_b) -> pd.DataFrame:
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = gram / np.outer(norms, norms)
    cos_prev = [np.nan] + [cosine[i, i - 1] for i in range(1, len(steps))]
    cos_final = cosine[:, -1]
    # the base (dW = 0) is the path's first point: its row and column of the Gram matrix are zeros
    full = np.zeros((len(steps) + 1, len(steps) + 1))
    full[1:, 1:] = gram
    coordinates, shares = pca_from_gram(full, components=2)
    frame = pd.DataFrame({
        "run_key": run_key, "step": [0] + steps,
        "norm_a": np.r_[np.nan, norm_a], "norm_b": np.r_[np.nan, norm_b], "norm_ba": np.r_[0.0, norms],
        "cos_prev": np.r_[np.nan, cos_prev], "cos_final": np.r_[np.nan, cos_final],
        "pc1": coordinates[:, 0], "pc2": coordinates[:, 1], "pc1_share": shares[0], "pc2_share": shares[1],
    })
    return frame[STEP_COLUMNS]


def pca_from_gram(gram: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the points on their first principal components, and each component's share
    of the variance, from their Gram matrix of inner products (exactly the PCA of the vectors)."""
    n = len(gram)
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    centred = centre @ gram @ centre
    values, vectors = np.linalg.eigh((centred + centred.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    coordinates = np.zeros((n, components))
    shares = np.zeros(components)
    total = values.sum()
    k = min(components, n)
    coordinates[:, :k] = vectors[:, :k] * np.sqrt(values[:k])
    # a component's sign is arbitrary: make the final checkpoint's coordinate positive, so a path
    # reads the same way in every run
    flip = np.where(coordinates[-1] < 0, -1.0, 1.0)
    coordinates = coordinates * flip + 0.0  # + 0.0: no -0.0 in the exports
    if total > 0:
        shares[:k] = values[:k] / total
    return coordinates, shares


def update_similarity(finals: dict[str, tuple[int, Path]]) -> pd.DataFrame:
    """The cosine between the updates dW of several runs (run key -> (step, adapter folder)), a row
    per pair that can be compared: the same modules with the same shapes. Runs on different base
    models, target modules or ranks are not compared. The cosine is of dW flattened over every
    module, from the same r x r inner products as the trajectory, so no dW is formed."""
    from safetensors import safe_open

    groups: dict[frozenset, list[str]] = {}
    modules_of = {}
    for key in sorted(finals):
        path = Path(finals[key][1]) / ADAPTER_FILE
        modules_of[key] = _modules(path)
        groups.setdefault(_signature(path, modules_of[key]), []).append(key)
    rows = []
    for keys in groups.values():
        if len(keys) < 2:
            continue
        folders = [Path(finals[key][1]) for key in keys]
        configs = [json.loads((folder / CONFIG_FILE).read_text()) for folder in folders]
        with ExitStack() as stack:
            handles = [stack.enter_context(safe_open(str(folder / ADAPTER_FILE), framework="pt")) for folder in folders]
            gram = _measure(handles, modules_of[keys[0]], configs, list(range(len(keys))), "")[0]
        norms = np.sqrt(np.clip(np.diag(gram), 0, None))
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                cosine = gram[i, j] / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else np.nan
                rows.append((keys[i], keys[j], finals[keys[i]][0], finals[keys[j]][0], float(cosine)))
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)


def relation(model_a, domain_a, seed_a, model_b, domain_b, seed_b) -> str:
    """What two runs share, for reading their cosine: runs of one seed start from the same random A
    (the trainers seed the LoRA initialisation), so part of their cosine is that shared start."""
    if model_a != model_b:
        return "other model"
    if domain_a == domain_b:
        return "same domain, other seed" if seed_a != seed_b else "same domain and seed"
    return "other domain, same seed" if seed_a == seed_b else "other domain, other seed"


def describe_pairs(similarity: pd.DataFrame, described: pd.DataFrame) -> pd.DataFrame:
    """The similarity table with each side's model, domain and seed (``described``: run_key, model,
    domain, seed) and the pair's ``relation``."""
    sides = [described.rename(columns={c: f"{c}_{side}" for c in described.columns}) for side in "ab"]
    pairs = similarity.merge(sides[0], on="run_key_a").merge(sides[1], on="run_key_b")
    pairs = pairs[[c for side in sides for c in side.columns if not c.startswith("run_key")] + list(similarity.columns)]
    pairs.insert(6, "relation", [relation(*values) for values in pairs.iloc[:, :6].itertuples(index=False)])
    return pairs


def run_adapters(run_dir: Path, checkpoints: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The tables for every training run of a run directory: per module, per checkpoint, and the
    similarity of the runs' final updates. ``checkpoints``: the store's rows (run_key, step,
    adapter_path). A path that moved with the directory is found under it. A run whose adapters
    cannot be read is left out with a warning: the report of everything else must still be written."""
    import logging

    run_dir = Path(run_dir)
    modules, steps, finals = [], [], {}
    for run_key, group in checkpoints.groupby("run_key", sort=True):
        found = {}
        for row in group.itertuples():
            path = Path(row.adapter_path)
            if not (path / ADAPTER_FILE).is_file():
                path = run_dir / "adapters" / str(run_key) / f"step-{int(row.step):06d}"
            if (path / ADAPTER_FILE).is_file():
                found[int(row.step)] = path
        if not found:
            continue
        try:
            per_module, per_step = adapter_trajectory(found, str(run_key))
        except Exception as exc:  # a truncated or foreign file: safetensors, json and our own checks raise
            logging.getLogger("emkit").warning(
                "the adapters of run %s in %s cannot be read (%s: %s); the report leaves out its adapter "
                "trajectory. Train that checkpoint again (remove its folder and run again) to get it back.",
                run_key, run_dir / "adapters" / str(run_key), type(exc).__name__, str(exc)[:200])
            continue
        modules.append(per_module)
        steps.append(per_step)
        finals[str(run_key)] = (max(found), found[max(found)])
    if not steps:
        return (pd.DataFrame(columns=MODULE_COLUMNS), pd.DataFrame(columns=STEP_COLUMNS),
                pd.DataFrame(columns=SIMILARITY_COLUMNS))
    try:
        similarity = update_similarity(finals)
    except Exception as exc:  # the files were read a moment ago; one replaced since must not stop the report
        logging.getLogger("emkit").warning("the runs' final adapters in %s cannot be compared (%s: %s); the report "
                                           "leaves out that table.", run_dir / "adapters", type(exc).__name__,
                                           str(exc)[:200])
        similarity = pd.DataFrame(columns=SIMILARITY_COLUMNS)
    return pd.concat(modules, ignore_index=True), pd.concat(steps, ignore_index=True), similarity
