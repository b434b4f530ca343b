"""Where the GPU work of a run happens (docs/execution.md).

The work is cut into units: one training run with the generation of its checkpoints, or one
model's baseline (its answers at step 0). An executor runs units; executors are plugins
(``register_executors``): the built-in ``local`` runs them one after another in this process,
``local-gpus`` one per GPU of this machine in worker processes, ``slurm`` one per job through
submitit. Judging stays in the emkit process (the coordinator), which judges each checkpoint's
answers as soon as they are stored, while the GPUs go on.

A unit that runs elsewhere never writes the run's SQLite store: it appends what it makes to a
shard of its own (emkit.execution.shards), and the coordinator merges shards into the store
by key, as often as it likes, with the same result.
"""

from __future__ import annotations


def create_executor(settings, run_dir_path, registry):
    """The executor named in ``[execution]``; the plugin imports its libraries only now."""
    return registry.get("executors", settings.executor).create(settings, run_dir_path)
