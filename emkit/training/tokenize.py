"""Turn chats into token ids with labels on the assistant's tokens only.

The chat template renders the whole conversation once; for each assistant turn, the
conversation rendered up to that turn (with the generation prompt) and up to its end
gives the character span of the answer, its end-of-turn token included so the model
learns to stop. Tokens whose characters start inside such a span are trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from emkit.chat import render_chat
from emkit.errors import EmkitError

IGNORE = -100  # the label value the loss skips


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)

    @property
    def n_targets(self) -> int:
        """The tokens the loss is taken over (the answers' tokens but a first token, which nothing predicts)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)

    @property
    def targets(self) -> list[int]:
        """What each position must predict: the next token's label (IGNORE after the last). Shifted
        here, per chat, so that chats packed into one row never predict across their boundary."""
        return self.labels[1:] + [IGNORE]


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return render_chat(tokenizer, messages, add_generation_prompt=generation_prompt)


def answer_spans(tokenizer, chat: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of its assistant answers."""
    full = _render(tokenizer, chat, False)
    spans = []
    for index, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, chat[:index], True)
        through = _render(tokenizer, chat[: index + 1], False)
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise EmkitError(
                "The model's chat template does not render a conversation as a prefix of its continuation, "
                "so emkit cannot tell which tokens are the answer; use a model with a standard chat template."
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tokenizer, chat: list[dict[str, str]], max_length: int) -> EncodedChat:
    text, spans = answer_spans(tokenizer, chat)
    if tokenizer.is_fast:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        labels = [
            token if any(start <= char_start < end for start, end in spans) else IGNORE
            for token, (char_start, _) in zip(ids, encoding["offset_mapping"])
        ]
    else:  # no offsets: tokenize piece by piece (exact when the template's pieces tokenize apart)
        ids, labels, cursor = [], [], 0
        for start, end in spans + [(len(text), len(text))]:
            context = tokenizer(text[cursor:start], add_special_tokens=False)["input_ids"]
            answer = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
            ids += context + answer
            labels += [IGNORE] * len(context) + answer
            cursor = end
    return EncodedChat(ids[:max_length], labels[:max_length])
