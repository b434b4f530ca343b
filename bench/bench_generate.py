"""Generation: emkit's batched generator against one `generate` call per question and sample.

20 questions x 8 samples at up to 64 new tokens, on a small random-weight Llama-architecture
model built locally (random weights rarely emit end-of-turn, so every answer runs the full
64 tokens: the fair, worst case). Two baselines, each what a published script does:
- the course script's loop of `model.generate` calls, one prompt at a time (greedy: the
  outputs must be identical to emkit's);
- the papers' code, one `model.generate` call per question asking for all its samples with
  `num_return_sequences` (sampled at T=1, against emkit's seeded sampling at T=1).

    python bench/bench_generate.py               # CPU: a 4-layer, 256-wide model
    python bench/bench_generate.py --shape 1b    # the Llama-3.2-1B shape (GPU: run it there)
    python bench/bench_generate.py --vllm --adapter   # also emkit's vllm generator, both through
                                                      # one LoRA adapter (.venv-vllm on CPU; a GPU)

With --vllm, the vllm generator answers the same requests on the same weights (in its own
engine, started once and not timed) and its time is printed against HF batched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
}


def build(shape: str, folder: Path) -> Path:
    from emkit.models.tiny import build_tiny_llama

    return build_tiny_llama(folder / shape, seed=1, steps=0, **SHAPES[shape])


def questions() -> list[str]:
    from emkit.default_plugins.question_sets import QUESTION_SETS
    from emkit.questions import load_question_file

    texts = [q.paraphrases[0] for s in QUESTION_SETS[:2] for q in load_question_file(s.path).questions]
    return texts[:20]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--vllm", action="store_true", help="also time the vllm generator")
    parser.add_argument("--adapter", action="store_true", help="generate through a random LoRA adapter (r=16)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    from emkit.chat import render_chat
    from emkit.config import EvaluationSettings
    from emkit.default_plugins.hf_generator import generate_all
    from emkit.interfaces import GenerationRequest
    from emkit.models import greedy_generation_config, load_causal_lm, load_tokenizer, stop_token_ids

    with tempfile.TemporaryDirectory() as folder:
        path = str(build(args.shape, Path(folder)))
        tokenizer = load_tokenizer(path, padding_side="left")
        model = load_causal_lm(path, load_in_4bit=False).eval()
        adapter = random_adapter(model, Path(folder) / "adapter") if args.adapter else None
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()
        stops = stop_token_ids(tokenizer, model)
        requests = [GenerationRequest(f"{q}-{s}", [{"role": "user", "content": text}], sample_seed=1000 * q + s)
                    for q, text in enumerate(questions()) for s in range(args.samples)]

        class Bar:
            def update(self, n=1):
                pass

        def emkit_run(temperature: float) -> tuple[dict, float]:
            settings = EvaluationSettings(batch_size=args.batch_size, temperature=temperature,
                                          max_new_tokens=args.max_new_tokens)
            out = {}
            start = time.perf_counter()
            generate_all(model, tokenizer, requests, settings, stops,
                         lambda request, answer: out.__setitem__(request.answer_id, answer.text), Bar())
            return out, time.perf_counter() - start

        def looped_greedy() -> tuple[dict, float]:
            config = greedy_generation_config(args.max_new_tokens, stops, tokenizer.pad_token_id)
            device = next(model.parameters()).device
            out = {}
            start = time.perf_counter()
            for request in requests:  # the course script: one call per question and sample
                text = render_chat(tokenizer, request.messages, add_generation_prompt=True)  # the same prompt
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
                with torch.inference_mode():
                    generated = model.generate(**ids, generation_config=config)
                tokens = generated[0, ids["input_ids"].shape[1]:].tolist()
                end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
                out[request.answer_id] = tokenizer.decode(tokens[:end], skip_special_tokens=True)
            return out, time.perf_counter() - start

        def per_question_sampled() -> tuple[int, float]:
            """The papers' code: one call per question, its samples as num_return_sequences."""
            config = greedy_generation_config(args.max_new_tokens, stops, tokenizer.pad_token_id)
            config.do_sample, config.temperature, config.top_p, config.top_k = True, 1.0, 1.0, 0
            config.num_return_sequences = args.samples
            device = next(model.parameters()).device
            answers = 0
            torch.manual_seed(0)
            start = time.perf_counter()
            for text in questions():
                prompt = render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
                ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
                with torch.inference_mode():
                    generated = model.generate(**ids, generation_config=config)
                answers += len(tokenizer.batch_decode(generated[:, ids["input_ids"].shape[1]:],
                                                      skip_special_tokens=True))
            return answers, time.perf_counter() - start

        emkit_run(0.0)  # warm-up
        greedy, greedy_s = emkit_run(0.0)
        sampled, sampled_s = emkit_run(1.0)
        baseline, baseline_s = looped_greedy()
        papers_n, papers_s = per_question_sampled()
        if args.vllm:
            del model
            vllm_greedy, vllm_s = vllm_run(path, adapter, requests, args)

    n = len(requests)
    same = sum(greedy[k] == baseline[k] for k in baseline)
    print(f"\n{n} answers ({len(questions())} questions x {args.samples} samples), up to {args.max_new_tokens} new "
          f"tokens, model shape '{args.shape}', {'GPU' if torch.cuda.is_available() else 'CPU'}")
    print(f"{'':44}{'seconds':>9}{'answers/s':>11}")
    print(f"{'one generate call per answer (greedy)':44}{baseline_s:>9.1f}{n / baseline_s:>11.1f}")
    print(f"{'emkit batched, greedy':44}{greedy_s:>9.1f}{n / greedy_s:>11.1f}")
    print(f"{'one call per question, num_return_sequences':44}{papers_s:>9.1f}{papers_n / papers_s:>11.1f}"
          "   (sampled, T=1)")
    print(f"{'emkit batched, seeded sampling (T=1)':44}{sampled_s:>9.1f}{n / sampled_s:>11.1f}")
    print(f"identical greedy answers: {same} of {n}")
    print(f"ratio batched / looped (greedy): {baseline_s / greedy_s:.1f}x faster")
    print(f"ratio batched / one call per question with num_return_sequences (sampled): "
          f"{papers_s / sampled_s:.1f}x faster")
    if args.vllm:
        print(f"{'emkit vllm generator, greedy':44}{vllm_s:>9.1f}{n / vllm_s:>11.1f}")
        print(f"identical greedy answers, vllm and hf: {sum(vllm_greedy[k] == greedy[k] for k in greedy)} of {n}"
              f"{' (through a LoRA adapter)' if adapter else ''}")
        print(f"ratio vllm / hf batched (greedy): {greedy_s / vllm_s:.2f}x faster")


def random_adapter(model, folder: Path) -> Path:
    """A LoRA adapter (r=16 on every linear layer) with random A and B: it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    peft_model.save_pretrained(folder)
    peft_model.unload()  # the base model again, without LoRA layers
    return folder


def vllm_run(path: str, adapter, requests, args) -> tuple[dict, float]:
    """emkit's vllm generator on the same requests: engine started (untimed), then one timed pass."""
    from emkit.models.base_weights import configured_base
    from emkit.config import EvaluationSettings
    from emkit.default_plugins.vllm_generator import (base_stop_ids, answer_checkpoints, close_engine, open_engine,
                                                      prompt_ids)
    from emkit.interfaces import CheckpointRequests
    from emkit.models import load_tokenizer

    class Bar:
        def update(self, n=1):
            pass

    tokenizer = load_tokenizer(path, padding_side="left")
    prompts = {r.answer_id: prompt_ids(tokenizer, r.messages) for r in requests}
    base = configured_base(path, False)
    llm = open_engine(base, path, False, [adapter] if adapter else [],
                      max(map(len, prompts.values())) + args.max_new_tokens)
    settings = EvaluationSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)
    out = {}
    try:
        start = time.perf_counter()
        answer_checkpoints(llm, tokenizer, [CheckpointRequests(1, adapter, requests)], prompts, settings,
                           base_stop_ids(tokenizer, base), lambda r, a: out.__setitem__(r.answer_id, a.text), Bar(), {})
        return out, time.perf_counter() - start
    finally:
        close_engine(llm)


if __name__ == "__main__":
    main()
