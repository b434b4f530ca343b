"""The adapter trajectory at the seed's 1B shape: emkit's r x r route against forming dW.

Random LoRA adapters of the seed's settings (r = 16, alpha 32, the seven projections of every
layer) at the Llama-3.2-1B shape, saved as PEFT saves them (fp32 safetensors), at the seed's
six medical checkpoints. emkit's adapter_trajectory reads them module by module and gets
every inner product of dW from r x r products. The baseline, in the same process, is what a
notebook does: form each module's dense dW = scale B A at every checkpoint and take the inner
products of the flattened updates (streamed module by module: the whole flattened dW of one
1B checkpoint is 3.9 GB). Both Gram matrices must agree.

    python bench/bench_adapters.py                 # the 1B shape, 6 checkpoints
    python bench/bench_adapters.py --shape small   # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_gpu import SHAPES  # noqa: E402

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STEPS = (110, 220, 330, 440, 880, 1320)  # the seed's medical checkpoints


def module_shapes(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted projection of one layer."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def module_name(layer: int, module: str) -> str:
    part = "self_attn" if module in MODULES[:4] else "mlp"
    return f"base_model.model.model.layers.{layer}.{part}.{module}"


def write_adapters(folder: Path, shape: dict, rank: int, alpha: int) -> dict[int, Path]:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    shapes = module_shapes(shape)
    out = {}
    for index, step in enumerate(STEPS, start=1):
        tensors = {}
        for layer in range(shape["num_hidden_layers"]):
            for module, (n_in, n_out) in shapes.items():
                name = module_name(layer, module)
                tensors[f"{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=generator) / n_in ** 0.5
                tensors[f"{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=generator) * 1e-3 * index
        path = folder / f"step-{step:06d}"
        path.mkdir(parents=True)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha,
                                                              "target_modules": list(MODULES)}))
        out[step] = path
    return out


def dense_gram(folders: dict[int, Path], shape: dict, scale: float):
    """The notebook's way: each module's dW formed at every checkpoint, flattened, dotted."""
    import torch
    from safetensors import safe_open

    steps = sorted(folders)
    handles = [safe_open(str(folders[s] / "adapter_model.safetensors"), framework="pt") for s in steps]
    gram = torch.zeros(len(steps), len(steps), dtype=torch.float64)
    with torch.no_grad():
        for layer in range(shape["num_hidden_layers"]):
            for module in MODULES:
                name = module_name(layer, module)
                flat = torch.stack([(scale * h.get_tensor(f"{name}.lora_B.weight")
                                     @ h.get_tensor(f"{name}.lora_A.weight")).flatten() for h in handles])
                gram += (flat.double() @ flat.double().T)
    return gram.numpy()


def main(argv=None) -> None:
    import numpy as np

    from emkit.analysis.adapters import adapter_trajectory, update_similarity

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folders = write_adapters(Path(tmp), shape, args.rank, args.alpha)
        size = sum(p.stat().st_size for f in folders.values() for p in f.iterdir()) / 2**20
        print(f"{args.shape}: {len(folders)} checkpoints of r = {args.rank} adapters, {size:,.0f} MB on disk "
              f"(written in {time.perf_counter() - start:.1f} s)")

        start = time.perf_counter()
        per_module, per_step = adapter_trajectory(folders, "bench")
        emkit_s = time.perf_counter() - start
        start = time.perf_counter()
        gram = dense_gram(folders, shape, args.alpha / args.rank)
        dense_s = time.perf_counter() - start
        # the same files read as the final checkpoints of as many runs: the cross-run comparison
        start = time.perf_counter()
        as_runs = {f"run{i}": (step, folder) for i, (step, folder) in enumerate(sorted(folders.items()))}
        pairs = update_similarity(as_runs)
        similarity_s = time.perf_counter() - start
    norms = np.sqrt(np.diag(gram))
    cos_prev = [gram[i, i - 1] / (norms[i] * norms[i - 1]) for i in range(1, len(norms))]
    agree = (np.allclose(per_step["norm_ba"].to_numpy()[1:], norms, rtol=1e-6)
             and np.allclose(per_step["cos_prev"].to_numpy()[2:], cos_prev, atol=1e-9))
    cos = gram / np.outer(norms, norms)
    upper = [cos[i, j] for i in range(len(norms)) for j in range(i + 1, len(norms))]
    agree = agree and np.allclose(pairs["cosine"], upper, atol=1e-9)
    print(f"{len(per_module):,} module rows; the two routes agree: {agree}")
    print(f"the {len(folders)} adapters compared as {len(folders)} runs' final updates ({len(pairs)} pairs): "
          f"{similarity_s:.2f} s")
    print(f"{'':34}{'seconds':>10}")
    print(f"{'emkit (r x r products)':34}{emkit_s:>10.2f}")
    print(f"{'baseline (dense dW)':34}{dense_s:>10.2f}")
    print(f"ratio (baseline / emkit): {dense_s / emkit_s:.1f}x; emkit per checkpoint: {emkit_s / len(STEPS):.2f} s")
    if not agree:
        raise SystemExit("the two routes disagree")


if __name__ == "__main__":
    main()
