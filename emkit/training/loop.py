"""The LoRA training loop both built-in trainers share (they differ in how they load the model).

A step is one optimizer update over ``batch_size x grad_accum`` rows. Epoch e visits the
rows in a permutation seeded by (seed, e), so the rows of any step are known without
replaying the ones before it: that is what lets a killed run resume at its last snapshot
and still reach exactly the planned checkpoint steps. The loss is summed over the answer
tokens of the whole effective batch and divided by their count, so gradient
accumulation gives the same update as one large batch. The step's chats are packed into
micro-batches without padding (emkit.training.batches) and the loss is taken in chunks,
never over the full vocabulary at every position at once (emkit.training.loss).
"""

from __future__ import annotations

import logging
import time
from contextlib import closing, nullcontext
from functools import lru_cache

from emkit.interfaces import TrainingJob
from emkit.training.state import load_state, prune_state, save_adapter, save_state, snapshots
from emkit.training.step_log import StepLog
from emkit.training.batches import micro_batches
from emkit.training.loss import HeadCheck
from emkit.training.tokenize import encode_chat


@lru_cache(maxsize=4)
def epoch_order(rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(rows, generator=generator).tolist())


def rows_of_step(step: int, rows: int, steps_per_epoch: int, effective_batch: int, seed: int) -> list[int]:
    """The dataset rows of 1-based ``step``."""
    epoch, index = divmod(step - 1, steps_per_epoch)
    order = epoch_order(rows, seed, epoch)
    return list(order[index * effective_batch:(index + 1) * effective_batch])


def make_optimizer(model, settings):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adamw_8bit":
        from emkit.errors import EmkitError

        if not torch.cuda.is_available():
            raise EmkitError('training.optimizer = "adamw_8bit" needs a CUDA GPU; use "adamw" on this machine.')
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
        fused=torch.cuda.is_available(),
    )


def train_lora(model, tokenizer, job: TrainingJob, on_checkpoint, progress, *, device: str, autocast_dtype=None,
               loss=None) -> None:
    """Train the PEFT ``model`` through ``job.total_steps``, saving at the checkpoint steps. ``loss(model,
    micro_batch, n_items)``: a micro-batch's summed loss over the step's ``n_items`` targets (default:
    emkit.training.loss, chunked where the model's head allows)."""
    import torch
    from transformers import get_scheduler

    from emkit.errors import EmkitError

    settings = job.settings
    examples = [encode_chat(tokenizer, chat, settings.max_length) for chat in job.chats]
    empty = sum(1 for e in examples if e.n_label_tokens == 0)
    if empty == len(examples):
        raise EmkitError(
            f"{job.dataset_path}: no answer fits within training.max_length = {settings.max_length} tokens; "
            f"raise max_length."
        )
    rows = len(examples)
    effective = settings.effective_batch
    optimizer = make_optimizer(model, settings)
    scheduler = get_scheduler(
        settings.lr_scheduler, optimizer, num_warmup_steps=settings.warmup_steps,
        num_training_steps=job.total_steps,
    )
    pending = [s for s in job.checkpoint_steps if s not in job.done_steps]
    last_needed = max(pending) if pending else 0
    # the snapshot nearest before the first missing checkpoint: the latest, after a kill; for
    # checkpoints `emkit refine` adds between saved ones, the kept one just before them
    start = load_state(job.state_dir, model, optimizer, scheduler, before=min(pending) if pending else None)
    log = logging.getLogger("emkit")
    if start:
        log.info("train %s: resumed from its saved state at step %d", job.run_key, start)
    elif any(s < min(pending, default=0) for s in job.done_steps):
        log.info("train %s: no saved state before step %d; training again from step 0 (the same steps, "
                 "rows and seed, so the same weights up to rounding)", job.run_key, min(pending))
    if start >= last_needed:
        return
    keep = set(job.checkpoint_steps) if getattr(settings, "keep_state", False) else set()
    saved_steps = set(snapshots(job.state_dir))

    model.train()
    if hasattr(model, "config"):
        model.config.use_cache = False
    autocast = (
        torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    pad_id = tokenizer.pad_token_id
    step_loss_of = loss or HeadCheck()  # chunked, without full-vocabulary logits, where the model's head allows it
    window_loss, window_steps, tokens, started = 0.0, 0, 0, time.monotonic()
    from emkit.models.base_weights import loaded_base

    base = loaded_base(model, job.model_id).to_json()  # what the adapters are trained on, for the store
    step_log = StepLog(job.state_dir)
    with progress(total=last_needed, unit="steps", desc=f"train {job.run_key}") as bar, closing(step_log):
        bar.update(start)
        for step in range(start + 1, last_needed + 1):
            batch_rows = rows_of_step(step, rows, job.steps_per_epoch, effective, job.seed)
            batch = [examples[i] for i in batch_rows]
            n_items = max(sum(e.n_targets for e in batch), 1)
            step_loss, tokens_before, step_started = 0.0, tokens, time.monotonic()
            for micro in micro_batches(batch, settings, pad_id, device):
                with autocast:
                    micro_loss = step_loss_of(model, micro, n_items)
                micro_loss.backward()
                step_loss += float(micro_loss.detach())
                tokens += micro.tokens
            # the norm before clipping; without clipping, measured all the same (an infinite bound clips nothing)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], settings.max_grad_norm or float("inf"))
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step's update uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window_loss += step_loss
            window_steps += 1
            step_log.append(step, step_loss, learning_rate, float(grad_norm), tokens - tokens_before,
                            time.monotonic() - step_started)
            bar.update()
            bar.set_postfix(f"loss {step_loss:.3f}, {tokens / max(time.monotonic() - started, 1e-9):.0f} tok/s")

            if step in pending:
                path = job.adapter_path(step)
                save_adapter(model, path)
                on_checkpoint(step, path, {"train_loss": window_loss / window_steps,
                                           "seconds": time.monotonic() - started, "base_weights": base})
                window_loss, window_steps = 0.0, 0
            if (step in pending or step % settings.save_state_every == 0) and step not in saved_steps:
                save_state(job.state_dir, step, model, optimizer, scheduler, keep=keep | saved_steps)
    # every checkpoint exists: only the snapshots at checkpoints are still of use (to `emkit refine`)
    prune_state(job.state_dir, keep)
