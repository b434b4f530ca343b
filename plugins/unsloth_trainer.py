"""The `unsloth` trainer: Unsloth's FastLanguageModel (fused kernels, less memory) on a GPU.

Unsloth patches transformers and PEFT for the whole process it is imported in, so this
trainer is ``isolated``: emkit runs it in a spawned child process (emkit.training.isolated),
where it imports Unsloth before anything loads transformers, and generation and judging
never run through its patches. Without a GPU Unsloth falls back to plain transformers.
The base it loads (its own pre-quantised repository, when it picks one) is recorded with
every checkpoint, and generation loads exactly that (emkit.models.base_weights).
"""

from emkit.errors import EmkitError
from emkit.hookspecs import hookimpl

INSTALL_HINT = "pip install 'emkit[unsloth]' on a machine with an NVIDIA GPU, or use --trainer peft"


def _import_unsloth():
    import os

    from emkit.locations import cache_dir

    # Unsloth writes the modules it generates to ./unsloth_compiled_cache, in whatever folder emkit
    # was started from (unsloth_zoo's default, on a GPU); in emkit's cache they leave the user's
    # folder alone and are found again by the next unit and run.
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(cache_dir() / "unsloth_compiled_cache"))
    try:
        import unsloth  # noqa: F401  (must precede transformers for its patches to apply)
        from unsloth import FastLanguageModel
    except ImportError as exc:
        raise EmkitError(f"The unsloth trainer needs the unsloth package ({exc}); {INSTALL_HINT}.") from None
    except Exception as exc:  # unsloth raises NotImplementedError/RuntimeError where it cannot run
        raise EmkitError(f"unsloth cannot run on this machine ({type(exc).__name__}: {exc}); {INSTALL_HINT}.") from None
    return FastLanguageModel


class UnslothTrainer:
    name = "unsloth"
    description = "Unsloth FastLanguageModel LoRA/QLoRA (GPU kernels; pip install 'emkit[unsloth]')"

    isolated = True  # train in a child process: Unsloth's patches must not reach generation

    def unavailable_reason(self) -> str | None:
        """Asked in emkit's own process, which must not import Unsloth: is it installed at all?"""
        import importlib.util

        if importlib.util.find_spec("unsloth") is None:
            return f"The unsloth trainer needs the unsloth package, which is not installed; {INSTALL_HINT}."
        return None

    def train(self, job, on_checkpoint, progress):
        FastLanguageModel = _import_unsloth()
        import torch

        from emkit.models import compute_dtype, device, load_tokenizer, loading_error
        from emkit.training.loop import train_lora

        settings = job.settings
        try:
            model, _ = FastLanguageModel.from_pretrained(
                job.model_id, max_seq_length=settings.max_length, load_in_4bit=settings.load_in_4bit,
                dtype=None, trust_remote_code=job.trust_remote_code,
                use_safetensors=True,  # passed on to transformers: a pickle is never unpickled
            )
        except (OSError, ValueError) as exc:
            raise loading_error(job.model_id, exc) from None
        tokenizer = load_tokenizer(job.model_id, job.trust_remote_code)
        torch.manual_seed(job.seed)
        model = FastLanguageModel.get_peft_model(
            model, r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules=settings.target_modules, use_rslora=settings.use_rslora, bias="none",
            use_gradient_checkpointing="unsloth" if settings.gradient_checkpointing else False,
            random_state=job.seed, max_seq_length=settings.max_length,
        )
        FastLanguageModel.for_training(model)
        on_gpu = device() == "cuda"
        train_lora(model, tokenizer, job, on_checkpoint, progress, device=device(),
                   autocast_dtype=compute_dtype() if on_gpu else None,
                   loss=unsloth_loss if patched_by_unsloth(model) else None)


def patched_by_unsloth(model) -> bool:
    """Whether the decoder runs Unsloth's forward (on a GPU), not transformers' (its CPU fallback)."""
    decoder = model.get_base_model().get_decoder()
    return type(decoder).forward.__module__.startswith("unsloth")


def unsloth_loss(model, batch, n_items: int):
    """Unsloth's own fused cross-entropy, which never holds the full-vocabulary logits. Unsloth's
    attention does not read packed sequences from position ids (transformers' does): it needs
    ``packed_seq_lengths``, over one row (unsloth/utils/packing.py), so a packed micro-batch is laid
    out as one row without its padding, with a fresh lengths tensor each time (Unsloth caches by it).
    Called directly, its decoder would not even be causal under xFormers: the CausalLM's forward
    sets that mask, so the loss goes through it."""
    import torch

    items = torch.tensor(n_items, device=batch.input_ids.device)
    if batch.chat_lengths is None:  # padded
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels,
                     num_items_in_batch=items, use_cache=False).loss
    input_ids, position_ids, labels = batch.one_row()
    lengths = torch.tensor(batch.chat_lengths, dtype=torch.int32, device=input_ids.device)
    return model(input_ids=input_ids, position_ids=position_ids, labels=labels, num_items_in_batch=items,
                 use_cache=False, packed_seq_lengths=lengths).loss


@hookimpl
def register_trainers(register):
    register(UnslothTrainer())
