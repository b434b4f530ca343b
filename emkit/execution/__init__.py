"""Where the GPU work of a run happens (docs/execution.md).

The work is cut into units: one training run with the generation of its checkpoints, or one
model's baseline (its answers at step 0). An executor runs units: ``local`` one after another
in this process, ``local-gpus`` one per GPU of this machine in worker processes, ``slurm`` one
per job through submitit. Judging stays in the emkit process (the coordinator), which judges
each checkpoint's answers as soon as they are stored, while the GPUs go on.

A unit that runs elsewhere never writes the run's SQLite store: it appends what it makes to a
shard of its own (emkit.execution.shards), and the coordinator merges shards into the store
by key, as often as it likes, with the same result.
"""

from __future__ import annotations

EXECUTORS = ("local", "local-gpus", "slurm")


def create_executor(settings, run_dir_path):
    """The executor named in ``[execution]``, importing its libraries only now."""
    if settings.executor == "local":
        from emkit.execution.local import LocalExecutor

        return LocalExecutor()
    if settings.executor == "local-gpus":
        from emkit.execution.local_gpus import LocalGpusExecutor

        return LocalGpusExecutor(settings, run_dir_path)
    try:
        from emkit.execution.slurm import SlurmExecutor
    except ImportError as exc:
        from emkit.errors import EmkitError

        raise EmkitError(f'execution.executor = "slurm" needs submitit ({exc}); pip install \'emkit[slurm]\'.') from None
    return SlurmExecutor(settings, run_dir_path)
