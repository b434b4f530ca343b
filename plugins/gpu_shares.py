"""How many units share a GPU: `[execution] units_per_gpu`, a number or "auto" (the default).

A 1B or 3B QLoRA run uses a few GiB of an 80 or 141 GiB GPU, so one unit per GPU leaves it
mostly idle. With a number, up to that many units run on each GPU at once. With "auto", a
unit starts on a GPU while the memory it will need fits in what the units already there
leave free (a GPU with no unit takes any unit): what a unit needs is the peak its model's
earlier units of the same kind reached in this run (each job reports its peak), and until
one has, an estimate from the model's size (``size_b``) and the training settings. Without
a GPU's total memory (no nvidia-smi) or a model's size, "auto" runs one unit per GPU.

Each job is told its share of the GPU (EMKIT_GPU_MEMORY_SHARE), which vLLM takes as its
gpu_memory_utilization instead of claiming 90% of the GPU beside other units.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

GIB = 1 << 30
USABLE = 0.92  # of a GPU's memory: the rest is the driver's and fragmentation's
OVERHEAD_BYTES = 3 * GIB  # CUDA context, activations under checkpointing, the loss's logit chunks
MEASURED_MARGIN = 1.15  # a measured peak grows a little with the longest batch a later unit meets


def gpu_memory() -> dict[str, int]:
    """Each GPU's total memory in bytes by its index, from nvidia-smi; {} where there is none."""
    if not shutil.which("nvidia-smi"):
        return {}
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                            capture_output=True, text=True, timeout=30)
    if listed.returncode != 0:
        return {}
    memory = {}
    for line in listed.stdout.splitlines():
        index, _, mib = line.partition(",")
        if mib.strip().isdigit():
            memory[index.strip()] = int(mib.strip()) * (1 << 20)
    return memory


def estimated_bytes(load) -> int | None:
    """What a unit of ``load`` (emkit.execution.units.UnitLoad) may need before any has been measured."""
    if load.size_b is None:
        return None
    bytes_per_weight = 0.56 if load.load_in_4bit else 2.0  # NF4 with its scales; bf16
    return int(load.size_b * 1e9 * bytes_per_weight * 1.2) + OVERHEAD_BYTES


@dataclass
class GpuShares:
    gpus: list[str]
    per_gpu: int | None  # a fixed number of units per GPU; None: "auto", by memory
    memory: dict[str, int] = field(default_factory=dict)  # GPU -> total bytes (auto only)
    measured: dict[tuple, int] = field(default_factory=dict)  # (model label, kind) -> peak bytes
    running: dict[str, tuple[str, int]] = field(default_factory=dict)  # job id -> (GPU, reserved bytes)

    @property
    def by_memory(self) -> bool:
        return self.per_gpu is None and all(g in self.memory for g in self.gpus)

    @property
    def most_at_once(self) -> int:
        """For the log: units at once, at most (auto: as many as fit)."""
        return len(self.gpus) * (self.per_gpu or 1) if not self.by_memory else 0

    def need(self, load) -> int | None:
        """The measured peak of the model's earlier units of this kind, with a margin, and never less than
        the estimate (vLLM takes its whole share at once, and torch's peak does not count it)."""
        estimate = estimated_bytes(load)
        measured = self.measured.get((load.model_label, load.kind))
        if measured is None:
            return estimate
        return max(int(measured * MEASURED_MARGIN), estimate or 0)

    def place(self, load) -> tuple[str, float] | None:
        """The GPU a unit of ``load`` may start on now and its share of that GPU's memory, or None: wait."""
        units_on = {g: 0 for g in self.gpus}
        reserved = {g: 0 for g in self.gpus}
        for gpu, bytes_ in self.running.values():
            if gpu in units_on:
                units_on[gpu] += 1
                reserved[gpu] += bytes_
        if not self.by_memory:
            limit = self.per_gpu or 1
            free = [g for g in self.gpus if units_on[g] < limit]
            return (min(free, key=lambda g: units_on[g]), 1 / limit) if free else None
        need = self.need(load)
        for gpu in sorted(self.gpus, key=lambda g: reserved[g]):  # the emptiest first (stable: in order)
            capacity = USABLE * self.memory[gpu]
            if units_on[gpu] == 0:  # any unit runs on an idle GPU, whatever it was estimated to need
                return gpu, (min(need, capacity) if need else capacity) / self.memory[gpu]
            if need is not None and reserved[gpu] + need <= capacity:
                return gpu, need / self.memory[gpu]
        return None

    def reserved_bytes(self, gpu: str, share: float) -> int:
        """What a unit placed with ``share`` holds of ``gpu`` while it runs (by memory only)."""
        return int(share * self.memory[gpu]) if self.by_memory else 0

    def start(self, job_id: str, gpu: str, reserved: int) -> None:
        self.running[job_id] = (gpu, reserved)

    def finish(self, job_id: str, load=None, peak_bytes: int | None = None) -> None:
        self.running.pop(job_id, None)
        if load is not None and peak_bytes:
            key = (load.model_label, load.kind)
            self.measured[key] = max(self.measured.get(key, 0), int(peak_bytes))
