"""The local executor: one unit after another, in this process, on this machine's first GPU (or
its CPU). Units write straight into the run's store; there is nothing to merge."""

from __future__ import annotations


class LocalExecutor:
    name = "local"
    in_process = True
    gpu_work_here = True  # a judge that uses the GPU would share it with the units
    slots = 1
