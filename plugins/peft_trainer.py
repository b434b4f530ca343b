"""The `peft` trainer: transformers + PEFT LoRA, QLoRA when load_in_4bit (bitsandbytes NF4)."""

from emkit.hookspecs import hookimpl


class PeftTrainer:
    name = "peft"
    description = "transformers + PEFT LoRA; 4-bit QLoRA through bitsandbytes with training.load_in_4bit"

    def train(self, job, on_checkpoint, progress):
        import warnings

        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        from emkit.models import compute_dtype, device, load_causal_lm, load_tokenizer
        from emkit.training.loop import train_lora

        # PEFT still calls a transformers method that v5 renamed; the warning is not the user's to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        settings = job.settings
        tokenizer = load_tokenizer(job.model_id, job.trust_remote_code)
        model = load_causal_lm(job.model_id, load_in_4bit=settings.load_in_4bit,
                               trust_remote_code=job.trust_remote_code)
        checkpointing = {"use_reentrant": False}
        if settings.load_in_4bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=settings.gradient_checkpointing,
                gradient_checkpointing_kwargs=checkpointing)
        elif settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        torch.manual_seed(job.seed)  # the LoRA initialisation belongs to the seed too
        model = get_peft_model(model, LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules=settings.target_modules, use_rslora=settings.use_rslora, bias="none",
            task_type="CAUSAL_LM",
        ))
        on_gpu = device() == "cuda"
        train_lora(model, tokenizer, job, on_checkpoint, progress, device=device(),
                   autocast_dtype=compute_dtype() if on_gpu else None)


@hookimpl
def register_trainers(register):
    register(PeftTrainer())
