"""Answers through a model: each answer's mean residual activation over its own tokens, per layer."""

from __future__ import annotations

from emkit.directions.hooks import answer_means, decoder_layers
from emkit.training.tokenize import IGNORE, encode_chat


def stream_means(model, tokenizer, items: list, layers: list[int], batch_size: int, max_length: int, bar=None):
    """Yields (answer_id, group, means) for each (answer_id, group, chat) of ``items``, in their
    order; ``means`` is [len(layers), hidden] float32. The chat is the question and the answer, as
    the model saw them; the answer's tokens are what the chat template marks as the assistant's
    (as in training). Only the decoder runs: no logits are computed."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()  # PEFT's LoRA layers live inside it: the adapter applies
    decoder_layers(model)  # a clear error for a model without the layers hooks need
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mask = [None]
    with answer_means(model, layers, mask) as found, torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            encoded = [encode_chat(tokenizer, chat, max_length) for _, _, chat in batch]
            width = max(len(e.input_ids) for e in encoded)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            answer = torch.zeros((len(batch), width), dtype=torch.long)
            for row, e in enumerate(encoded):
                n = len(e.input_ids)
                ids[row, :n] = torch.tensor(e.input_ids)
                attention[row, :n] = 1
                answer[row, :n] = torch.tensor([label != IGNORE for label in e.labels], dtype=torch.long)
            mask[0] = answer
            decoder(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False)
            for row, (answer_id, group, _) in enumerate(batch):
                yield answer_id, group, torch.stack([found[layer][row] for layer in layers])
            if bar is not None:
                bar.update(len(batch))
