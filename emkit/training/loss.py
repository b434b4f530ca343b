"""The summed next-token loss of a micro-batch, without full-vocabulary logits.

A causal LM's own forward turns every position's hidden state into logits over the whole
vocabulary (batch x length x vocabulary, in fp32 for the loss: 1 GB for 8 x 256 tokens of
Llama 3's 128,256, and as much again for its gradient), though only the answer tokens are
trained on. Here the decoder runs alone, the hidden states of the positions that have a
target are gathered, and the output head and cross-entropy run over them in chunks under
activation checkpointing: at most one chunk's logits exist at a time, forward or backward,
so peak memory no longer grows with vocabulary x length x batch.

That is only the model's loss if its logits are ``head(decoder(x))``. Some families scale or
soft-cap them (Gemma 2's final_logit_softcapping, Cohere's logit_scale, Granite's
logits_scaling); rather than keep a list, ``HeadCheck`` compares the two ways once on the
run's first tokens and, where they differ, every step uses the model's own forward.
"""

from __future__ import annotations

import logging

from emkit.training.tokenize import IGNORE

LOGIT_ELEMENTS_PER_CHUNK = 1 << 25  # 32M logits, 128 MiB in fp32: 261 tokens of Llama 3, 682 of SmolLM2


def chunk_tokens(vocab_size: int) -> int:
    return max(16, LOGIT_ELEMENTS_PER_CHUNK // max(vocab_size, 1))


def _parts(model):
    """The causal LM under PEFT's wrapper, its decoder and its output head."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm, causal_lm.get_decoder(), causal_lm.get_output_embeddings()


def _chunk_loss(head, hidden, targets):
    import torch.nn.functional as F

    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def chunked_loss(model, batch, n_items: int):
    """The sum over the micro-batch's targets of -log p(target) over ``n_items`` (the step's targets),
    computed chunk by chunk."""
    import torch
    from torch.utils.checkpoint import checkpoint

    causal_lm, decoder, head = _parts(model)
    hidden = decoder(**batch.model_inputs()).last_hidden_state
    wanted = batch.targets != IGNORE
    hidden, targets = hidden[wanted], batch.targets[wanted]
    step = chunk_tokens(causal_lm.config.get_text_config().vocab_size)
    total = hidden.new_zeros((), dtype=torch.float32)
    for first in range(0, targets.numel(), step):
        total = total + checkpoint(_chunk_loss, head, hidden[first:first + step], targets[first:first + step],
                                   use_reentrant=False)
    return total / n_items


def model_loss(model, batch, n_items: int):
    """The same sum through the model's own forward and its full logits (for heads HeadCheck finds
    are not a plain projection, and as the baseline bench/bench_train.py measures against)."""
    import torch.nn.functional as F

    logits = model(**batch.model_inputs()).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE,
                           reduction="sum") / n_items


class HeadCheck:
    """Chooses, once per training run, between chunked_loss and model_loss."""

    def __init__(self):
        self.loss = None

    def __call__(self, model, batch, n_items: int):
        if self.loss is None:
            self.loss = chunked_loss if head_is_plain(model, batch) else model_loss
        return self.loss(model, batch, n_items)


def head_is_plain(model, batch) -> bool:
    """Whether the model's logits are its head applied to its decoder's output, on a few real tokens."""
    import torch

    causal_lm, decoder, head = _parts(model)
    inputs = {name: value[:1, :32] if hasattr(value, "shape") else value
              for name, value in batch.model_inputs().items()}
    # in training mode (bitsandbytes repacks 4-bit weights for inference on eval() on a CPU, and its
    # repacked kernel has no backward), with the same dropout draws for both ways
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):  # the run's own draws are left as they were
        torch.manual_seed(0)
        theirs = model(**inputs).logits.float()
        torch.manual_seed(0)  # seeds the GPU's generator too
        ours = head(decoder(**inputs).last_hidden_state).float()
    plain = theirs.shape == ours.shape and torch.allclose(theirs, ours, rtol=1e-3,
                                                          atol=1e-3 * float(theirs.abs().max()))
    if not plain:
        logging.getLogger("emkit").info(
            "training: %s's logits are not its output head applied to its decoder's output (a scaled or capped "
            "head); its loss is computed from its own full logits", type(causal_lm).__name__)
    return plain
