"""When to save a checkpoint: the steps of one training run, from the config.

A step is one optimizer update over an effective batch (batch_size x grad_accum rows).
An epoch has floor(rows / effective batch) steps: the rows left over are dropped, a
different few each epoch because every epoch is shuffled anew.
"""

from __future__ import annotations

from dataclasses import dataclass

from emkit.errors import EmkitError


@dataclass(frozen=True)
class CheckpointSchedule:
    steps_per_epoch: int
    total_steps: int
    steps: tuple[int, ...]

    @classmethod
    def build(cls, settings, *, rows: int, effective_batch: int, epochs: int, where: str,
              run_key: str | None = None) -> "CheckpointSchedule":
        """``settings`` is the config's CheckpointSettings; ``where`` names the run in messages;
        ``run_key`` picks the steps `emkit refine` added to this run (checkpoints.refine)."""
        steps_per_epoch = rows // effective_batch
        if steps_per_epoch < 1:
            raise EmkitError(
                f"{where}: the dataset has {rows} rows, fewer than one effective batch "
                f"({effective_batch} = training.batch_size x training.grad_accum); use more rows or a smaller batch."
            )
        total = steps_per_epoch * epochs
        if settings.steps:
            steps = sorted(set(settings.steps))
            late = [s for s in steps if s > total]
            if late:
                raise EmkitError(
                    f"checkpoints.steps: step {late[0]} comes after the last training step of {where} "
                    f"({total} = {steps_per_epoch} steps per epoch x {epochs} epochs); remove it or train longer."
                )
        elif settings.every:
            if settings.every > total:
                raise EmkitError(
                    f"checkpoints.every = {settings.every} is longer than the whole of {where} "
                    f"({total} steps); choose a smaller interval."
                )
            steps = sorted(set(range(settings.every, total + 1, settings.every)) | {total})
        else:
            n = settings.first_epoch
            inside = {(i * steps_per_epoch) // n for i in range(1, n + 1)} if n else set()
            ends = {e * steps_per_epoch for e in range(1, epochs + 1)} if settings.every_epoch else set()
            steps = sorted(s for s in inside | ends if s > 0)
            if not steps:
                raise EmkitError(
                    "checkpoints: no checkpoint would be saved; set checkpoints.first_epoch above 0, "
                    "checkpoints.every_epoch = true, checkpoints.steps or checkpoints.every."
                )
        added = settings.refine.get(run_key, []) if run_key else []
        late = [s for s in added if s > total]
        if late:
            raise EmkitError(
                f"checkpoints.refine.{run_key}: step {late[0]} comes after the last training step of {where} "
                f"({total}); remove it."
            )
        return cls(steps_per_epoch=steps_per_epoch, total_steps=total, steps=tuple(sorted(set(steps) | set(added))))
