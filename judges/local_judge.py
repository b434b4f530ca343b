"""The `local` judge backend: a Hugging Face chat model run with transformers.

``local:PATH_OR_HUB_ID`` scores exactly: for every candidate score 0..100 it computes the
probability that the judge's reply is that number, from the model's own tokenisation,
numbers of several tokens included: P(tokens of "85") x P(the number ends there, i.e. the
next token does not continue it with a digit). All 101 candidates are scored in one
forward pass per batch: the prompt is followed by a block holding every candidate prefix
once (a trie), and a 4D attention mask lets each candidate position see the prompt and its
own earlier tokens only. The score is the mean over the candidates' distribution,
renormalised, with the 0.25 rule of the logprob method.
"""

from __future__ import annotations

from pathlib import Path

from emkit import stopping
from emkit.chat import render_user_prompt
from emkit.errors import EmkitError
from emkit.hookspecs import hookimpl
from emkit.interfaces import JudgeOptions, JudgeResult
from emkit.judging.scoring import NUMBER_MASS_NEEDED, clamp_score, describe_distribution, score_from_text

CANDIDATES = range(0, 101)


class CandidateScorer:
    """Probabilities of the replies "0".."100" for a batch of judge prompts."""

    def __init__(self, model, tokenizer, candidates=CANDIDATES):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.values = list(candidates)
        prefix = render_user_prompt(tokenizer, "x")
        base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self.sequences: list[tuple[int, ...]] = []
        for value in self.values:
            ids = tokenizer(prefix + str(value), add_special_tokens=False)["input_ids"]
            if ids[: len(base)] != base:
                raise EmkitError(
                    "The judge's tokenizer merges a number with the end of the chat prompt, so its scores "
                    "cannot be computed exactly; use --scoring text for this judge."
                )
            self.sequences.append(tuple(ids[len(base):]))
        nodes = sorted({seq[:k] for seq in self.sequences for k in range(1, len(seq) + 1)}, key=lambda p: (len(p), p))
        self.node_index = {node: i for i, node in enumerate(nodes)}
        self.block_tokens = torch.tensor([node[-1] for node in nodes])
        self.block_depth = torch.tensor([len(node) for node in nodes])
        n = len(nodes)
        allow = torch.zeros((n, n), dtype=torch.bool)
        for i, node in enumerate(nodes):
            for k in range(1, len(node) + 1):
                allow[i, self.node_index[node[:k]]] = True
        self.block_allow = allow
        vocab = tokenizer.get_vocab()
        texts = tokenizer.batch_decode([[i] for i in range(max(vocab.values()) + 1)])
        self.digit_tokens = torch.tensor([i for i, t in enumerate(texts) if t[:1].isdigit()], dtype=torch.long)

    def _inputs(self, prompts: list[str]):
        import torch

        tok = self.tokenizer
        texts = [render_user_prompt(tok, p) for p in prompts]
        encoded = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")  # left padded
        ids, keep = encoded["input_ids"], encoded["attention_mask"].bool()
        batch, width = ids.shape
        n = len(self.block_tokens)
        total = width + n
        lengths = keep.sum(dim=1)
        positions = torch.zeros((batch, total), dtype=torch.long)
        positions[:, :width] = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
        positions[:, width:] = lengths[:, None] + self.block_depth[None, :] - 1
        allow = torch.zeros((batch, total, total), dtype=torch.bool)
        allow[:, :width, :width] = torch.tril(torch.ones((width, width), dtype=torch.bool))[None] & keep[:, None, :]
        allow[:, width:, :width] = keep[:, None, :]
        allow[:, width:, width:] = self.block_allow[None]
        diagonal = torch.arange(total)
        allow[:, diagonal, diagonal] = True  # padding rows see themselves: no all-masked softmax
        input_ids = torch.cat([ids, self.block_tokens[None].expand(batch, n)], dim=1)
        return input_ids, positions, allow, width

    def distributions(self, prompts: list[str]) -> list[tuple[dict[int, float], str]]:
        """Per prompt: candidate value -> probability, and the judge's most likely first token."""
        import torch

        model = self.model
        device = next(model.parameters()).device
        input_ids, positions, allow, width = self._inputs(prompts)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)[:, None]
        keep_positions = torch.arange(width - 1, input_ids.shape[1])
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep_positions.to(device)).logits
        results = []
        digit_tokens = self.digit_tokens.to(device)
        for row in range(logits.shape[0]):
            logprobs = torch.log_softmax(logits[row].float(), dim=-1)  # [0]: after the prompt; [1+i]: after node i
            end = torch.log1p(-torch.logsumexp(logprobs[1:, digit_tokens], dim=-1).exp().clamp(max=1 - 1e-7))
            probabilities = {}
            for value, seq in zip(self.values, self.sequences):
                total = logprobs[0, seq[0]]
                for k in range(1, len(seq)):
                    total = total + logprobs[1 + self.node_index[seq[:k]], seq[k]]
                total = total + end[self.node_index[seq]]
                probabilities[value] = float(total.exp())
            top_token = self.tokenizer.decode([int(logprobs[0].argmax())])
            results.append((probabilities, top_token))
        return results


def result_from_distribution(probabilities: dict[int, float], top_token: str, judge_model: str) -> JudgeResult:
    mass = sum(probabilities.values())
    raw = describe_distribution({str(k): v for k, v in probabilities.items()}) + f" mass:{mass:.3f}"
    if mass < NUMBER_MASS_NEEDED:
        status = "code" if top_token.strip().upper().startswith("CODE") else "refusal"
        return JudgeResult(score=None, status=status, scoring="logprobs", raw=raw, judge_model=judge_model)
    score = clamp_score(sum(value * p for value, p in probabilities.items()) / mass)
    return JudgeResult(score=score, status="ok", scoring="logprobs", raw=raw, judge_model=judge_model)


class LocalJudge:
    # What the runner reads of a judge (emkit.interfaces.JudgeNeeds): its model runs on this machine's
    # GPU (its CPU where there is none); it scores here, one batch after another (no batch API), exactly
    # from the distribution over "0".."100" or from generated text.
    uses_gpu = True
    supports_batch = False
    supports_logprobs = True

    def __init__(self, spec: str, options: JudgeOptions):
        self.spec = spec
        self.options = options
        self.name = f"local:{spec}"
        self._identity: str | None = None
        self._loaded = None  # (model, tokenizer), kept for the next pass over new answers
        self.models = (spec,)  # the model it loads here (a builtin:NAME one is built before the run)

    @property
    def identity(self) -> str:
        """The spec and a fingerprint of the weights: a retrained judge is a different judge."""
        if self._identity is None:
            from emkit.models import model_fingerprint

            self._identity = f"local:{self.spec}@{model_fingerprint(self.spec)}"
        return self._identity

    def scoring_mode(self) -> str:
        return "text" if self.options.scoring == "text" else "logprobs"

    def unavailable_reason(self) -> str | None:
        from emkit.models import BUILTIN_PREFIX

        if self.spec.startswith(BUILTIN_PREFIX):
            return None
        path = Path(self.spec).expanduser()
        if path.exists():
            return None
        if self.spec.startswith(("/", ".", "~")) or self.spec.count("/") != 1:
            return f"there is no model folder at {self.spec}"
        import os

        if os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(self.spec, "config.json"), str):
                return f"{self.spec} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it"
        return None

    def _load(self):
        from emkit.models import load_causal_lm, load_tokenizer, resolve_model_source

        source = resolve_model_source(self.spec)
        tokenizer = load_tokenizer(source, self.options.trust_remote_code, padding_side="left")
        model = load_causal_lm(source, load_in_4bit=False, trust_remote_code=self.options.trust_remote_code)
        model.eval()
        return model, tokenizer

    def score(self, requests, on_result, progress) -> None:
        if not requests:
            return
        if self._loaded is None:
            self._loaded = self._load()
        model, tokenizer = self._loaded
        mode = self.scoring_mode()
        scorer = CandidateScorer(model, tokenizer) if mode == "logprobs" else None
        order = sorted(requests, key=lambda r: len(r.prompt))
        size = self.options.batch_size
        with progress(total=len(requests), unit="judgments", desc=f"judge {self.name}") as bar:
            for start in range(0, len(order), size):
                stopping.raise_if_stopped()  # Ctrl-C, or background judging cancelled: end between batches
                batch = order[start:start + size]
                if scorer is not None:
                    for request, (probabilities, top) in zip(batch, scorer.distributions([r.prompt for r in batch])):
                        on_result(request, result_from_distribution(probabilities, top, self.name))
                        bar.update()
                else:
                    for request, reply in zip(batch, self._generate([r.prompt for r in batch], model, tokenizer)):
                        score, status = score_from_text(reply)
                        on_result(request, JudgeResult(score=score, status=status, scoring="text", raw=reply,
                                                       judge_model=self.name))
                        bar.update()

    def _generate(self, prompts, model, tokenizer) -> list[str]:
        import torch

        from emkit.models import greedy_generation_config, stop_token_ids

        texts = [render_user_prompt(tokenizer, p) for p in prompts]
        encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        device = next(model.parameters()).device
        stops = stop_token_ids(tokenizer, model)
        config = greedy_generation_config(8, stops, tokenizer.pad_token_id)
        with torch.inference_mode():
            out = model.generate(**{k: v.to(device) for k, v in encoded.items()}, generation_config=config)
        return tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


class LocalBackend:
    name = "local"
    description = "a Hugging Face chat model run here: local:PATH_OR_HUB_ID (exact 0..100 scoring)"

    def create(self, argument: str, options: JudgeOptions) -> LocalJudge:
        if not argument:
            raise EmkitError("A local judge needs a model: --judge local:PATH_OR_HUB_ID.")
        return LocalJudge(argument, options)


@hookimpl
def register_judges(register):
    register(LocalBackend())
