"""Rendering chats with a model's own template, the same way for training, generation and judging.

Llama 3.2 Instruct's chat template writes today's date into a system header of every
prompt (its ``strftime_now``), so the same question is a different prompt on another day:
answers sampled after a resume the next day would not match an uninterrupted run, and a
model would be evaluated under a date it was not trained with. Every render here passes
one fixed date, the one Llama 3.1's template falls back to; templates without a date
ignore it.
"""

from __future__ import annotations

TEMPLATE_DATE = "26 Jul 2024"


def render_chat(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    """The chat as the model sees it, as text, whatever the day."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         date_string=TEMPLATE_DATE)


def render_user_prompt(tokenizer, text: str) -> str:
    """One user turn followed by the assistant's header: what a judge or a model answers."""
    return render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
