"""Loading base models and tokenizers the same way for training, generation and judging.

Weights load from safetensors only (``use_safetensors=True``: a pickle is never unpickled)
and remote code runs only when the user passed --trust-remote-code. What is loaded here is a
folder or hub id already resolved (emkit.models.sources turns a model id, ``builtin:`` ones
included, into one).
"""

from __future__ import annotations

from pathlib import Path

from emkit.errors import EmkitError


def no_chat_template(source: str) -> str:
    return (f"The tokenizer of {source} has no chat template; emkit fine-tunes and evaluates chat (Instruct) "
            f"models, so use one (its -Instruct version).")


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype():
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(load_in_4bit: bool):
    if not load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: emkit shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def loading_error(source: str, exc: Exception) -> EmkitError:
    """One sentence for the ways loading a model goes wrong that the user can fix."""
    text = str(exc)
    folder = Path(source)
    if folder.is_dir() and not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin")):
        return EmkitError(
            f"{source} holds only pickled weights (*.bin); emkit loads safetensors only, since unpickling can run "
            f"code. Convert them once with transformers: from_pretrained(...).save_pretrained(DIR, "
            f"safe_serialization=True)."
        )
    if "trust_remote_code" in text:
        return EmkitError(
            f"{source} ships its own model code, which emkit runs only with --trust-remote-code "
            f"(trust_remote_code = true in the config); read that code first."
        )
    return EmkitError(
        f"Cannot load model {source}: {text.splitlines()[0] if text else type(exc).__name__}; check the id or path "
        f"(a hub id needs network access, and emkit loads safetensors weights only)."
    )


def load_tokenizer(source: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise loading_error(source, exc) from None
    if tokenizer.pad_token is None:
        # Llama 3 ships without a pad token; its reserved fine-tune pad token is the usual choice.
        vocab = tokenizer.get_vocab()
        if "<|finetune_right_pad_id|>" in vocab:
            tokenizer.pad_token = "<|finetune_right_pad_id|>"
        else:
            tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise EmkitError(no_chat_template(source))
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(source: str, *, load_in_4bit: bool, trust_remote_code: bool = False):
    return _load_causal_lm(source, quantization_config(load_in_4bit), trust_remote_code)


def load_base_model(base, trust_remote_code: bool = False):
    """Exactly the base weights a run was trained on (emkit.models.base_weights.BaseWeights): a
    pre-quantised repository with its own quantisation, or the source quantised as in training."""
    config = None
    if base.quantization is not None and not base.prequantized:
        from transformers import BitsAndBytesConfig

        settings = {k: v for k, v in base.quantization.items() if k != "quant_method"}
        config = BitsAndBytesConfig(**settings, bnb_4bit_compute_dtype=compute_dtype())
    return _load_causal_lm(base.source, config, trust_remote_code, revision=base.revision)


def _load_causal_lm(source: str, quantization, trust_remote_code: bool, revision: str | None = None):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    kwargs = dict(dtype=compute_dtype(), use_safetensors=True, trust_remote_code=trust_remote_code)
    if quantization is not None:
        # only when there is one: an explicit None would override a pre-quantised repository's own
        # quantization_config, and its packed 4-bit tensors would not fit the model
        kwargs["quantization_config"] = quantization
    if revision:
        kwargs["revision"] = revision
    if device() == "cuda":
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise loading_error(source, exc) from None


def greedy_generation_config(max_new_tokens: int, stop_ids: list[int], pad_token_id: int):
    """Greedy decoding whatever the model's generation_config.json asks for.

    transformers fills every setting a caller leaves unset from that file, and Llama 3
    Instruct's asks for sampling at temperature 0.6 and top_p 0.9. emkit samples with its own
    seeded processor (or decodes greedily), so sampling is switched off and the sampling knobs
    are pinned to transformers' own defaults: unused when not sampling, so transformers
    neither takes the model's values nor warns that they may be ignored.
    """
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=max_new_tokens,
                            eos_token_id=stop_ids, pad_token_id=pad_token_id)


def stop_token_ids(tokenizer, model) -> list[int]:
    """End-of-turn and end-of-text ids: a Llama 3 answer ends at <|eot_id|>."""
    ids = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        for token_id in (value if isinstance(value, list) else [value]):
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tokenizer.get_vocab() else None
    if eot is not None and eot not in ids:
        ids.append(eot)
    return ids
