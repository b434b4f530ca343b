"""The `hf` generator: batched transformers generation over every question at once.

The base model loads once per model; each checkpoint's adapter is attached in turn (step 0
runs with adapters disabled). Prompts are sorted by length and generated in left-padded
batches. Sampling is seeded per answer: each answer's randomness is Gumbel noise drawn
from its own seed and the token position, and the token is the argmax of
logits/temperature + noise, which is an exact sample from the softmax. So an answer
depends on its key, not on which other prompts shared its batch, and a resumed run
samples the same answers an uninterrupted one would.
"""

from __future__ import annotations

from emkit.chat import render_chat
from emkit.hookspecs import hookimpl

_SEED_MASK = (1 << 63) - 1


class SeededSampler:
    """A LogitsProcessor that turns greedy decoding into seeded sampling, row by row."""

    def __init__(self, seeds: list[int], prompt_width: int, temperature: float, top_p: float):
        self.seeds, self.prompt_width = seeds, prompt_width
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(dim=-1)
            # drop a token once the tokens ranked above it already hold top_p of the mass
            drop = (probs.cumsum(dim=-1) - probs) > self.top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
        position = input_ids.shape[1] - self.prompt_width
        noise = torch.empty_like(scores)
        for row, seed in enumerate(self.seeds):
            generator = torch.Generator(device=scores.device)
            generator.manual_seed((seed * 1_000_003 + position * 7_919) & _SEED_MASK)
            uniform = torch.rand(scores.shape[-1], generator=generator, device=scores.device)
            noise[row] = -torch.log(-torch.log(uniform.clamp_(min=1e-12, max=1 - 1e-7)))
        return scores + noise


def _render_prompts(tokenizer, requests) -> list[str]:
    return [render_chat(tokenizer, r.messages, add_generation_prompt=True) for r in requests]


def generate_batch(model, tokenizer, requests, settings, stop_ids: list[int]):
    """Answers for one batch of requests, in order: (text, n_tokens, finish_reason)."""
    import torch
    from transformers import LogitsProcessorList

    from emkit.interfaces import GeneratedAnswer
    from emkit.models import greedy_generation_config

    prompts = _render_prompts(tokenizer, requests)
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    width = input_ids.shape[1]
    processors = LogitsProcessorList()
    if settings.temperature > 0:
        processors.append(SeededSampler([r.sample_seed for r in requests], width, settings.temperature, settings.top_p))
    config = greedy_generation_config(settings.max_new_tokens, stop_ids, tokenizer.pad_token_id)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                logits_processor=processors)
    answers = []
    stops = set(stop_ids)
    for row in output[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        tokens = row if end is None else row[:end]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        answers.append(GeneratedAnswer(text=text, n_tokens=len(tokens), finish_reason="length" if end is None else "stop"))
    return answers


def generate_all(model, tokenizer, requests, settings, stop_ids, on_answer, bar) -> None:
    """Generate in length-sorted batches so rows of a batch need little padding."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in _render_prompts(tokenizer, requests)]
    order = sorted(range(len(requests)), key=lambda i: -lengths[i])
    for start in range(0, len(order), settings.batch_size):
        batch = [requests[i] for i in order[start:start + settings.batch_size]]
        for request, answer in zip(batch, generate_batch(model, tokenizer, batch, settings, stop_ids)):
            on_answer(request, answer)
            bar.update()


class HFGenerator:
    name = "hf"
    description = "batched transformers generate with per-answer seeded sampling"
    supports_interventions = True  # a direction ablated or added through forward hooks (emkit.directions)

    def generate(self, job, on_answer, progress):
        from emkit.models import load_base_model, load_tokenizer, stop_token_ids
        from emkit.models.base_weights import configured_base
        from emkit.directions.hooks import intervene
        from emkit.models.checkpoints import CheckpointModel

        tokenizer = load_tokenizer(job.model_id, job.trust_remote_code, padding_side="left")
        base = job.base or configured_base(job.model_id, job.load_in_4bit)  # the weights the adapters were trained on
        model = load_base_model(base, trust_remote_code=job.trust_remote_code)
        model.eval()
        stop_ids = stop_token_ids(tokenizer, model)
        at_checkpoint = CheckpointModel(model)
        total = sum(len(c.requests) for c in job.checkpoints)
        # the base model first: once an adapter is attached it has to be switched off for step 0
        checkpoints = sorted(job.checkpoints, key=lambda c: (c.adapter_path is not None, c.step))
        with progress(total=total, unit="answers", desc=f"generate {job.model_label}") as bar:
            for checkpoint in checkpoints:
                if not checkpoint.requests:
                    continue
                with at_checkpoint.at(checkpoint.adapter_path) as active, intervene(active, job.intervention):
                    generate_all(active, tokenizer, checkpoint.requests, job.settings, stop_ids, on_answer, bar)


@hookimpl
def register_generators(register):
    register(HFGenerator())
