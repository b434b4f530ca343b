"""Counting a judge prompt's tokens for cost estimates."""

from __future__ import annotations


def count_tokens(judge, text: str) -> int:
    """litellm's tokenizer for the judge's model; four characters a token when it has none."""
    try:
        from emkit.judges.litellm_judge import import_litellm

        return int(import_litellm().token_counter(model=judge.litellm_model, text=text))
    except Exception:
        return max(1, len(text) // 4)
