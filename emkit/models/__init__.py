"""Which weights a run uses, and loading them.

- ``sources``: what a model id stands for (``builtin:NAME``, a local folder, a hub id), what
  from_pretrained opens for it, and the fingerprints of its weights and chat template.
- ``loading``: loading a resolved model and tokenizer the same way for training, generation
  and judging (safetensors only), and the generation settings every stage shares.
- ``builtins``: the models emkit builds itself (``builtin:tiny-llama``, ``builtin:tiny-judge``,
  ``builtin:smollm2``), by name, built once into the cache; ``tiny`` and ``smollm2`` build them.
- ``base_weights``: which base weights a run's adapters were trained on.

Imports go one way: sources -> builtins -> tiny, smollm2 -> loading; base_weights -> sources.
The names callers use most are re-exported here.
"""

from emkit.models.builtins import BUILTIN_PREFIX
from emkit.models.loading import (
    compute_dtype,
    device,
    greedy_generation_config,
    load_base_model,
    load_causal_lm,
    load_tokenizer,
    loading_error,
    no_chat_template,
    quantization_config,
    quiet_transformers,
    stop_token_ids,
)
from emkit.models.sources import TEMPLATE_FILES, chat_template_digest, model_fingerprint, resolve_model_source

__all__ = [
    "BUILTIN_PREFIX",
    "TEMPLATE_FILES",
    "chat_template_digest",
    "compute_dtype",
    "device",
    "greedy_generation_config",
    "load_base_model",
    "load_causal_lm",
    "load_tokenizer",
    "loading_error",
    "model_fingerprint",
    "no_chat_template",
    "quantization_config",
    "quiet_transformers",
    "resolve_model_source",
    "stop_token_ids",
]
