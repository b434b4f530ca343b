"""Nothing assumes Llama 3's chat template (issue 13): the response-only loss mask, the end of a
turn, system prompts and the fixed date work for Llama 3's template (the tiny models) and for
ChatML (SmolLM2-135M-Instruct, `<|im_start|>`), on the real tokenizers."""

import pytest

from emkit.chat import TEMPLATE_DATE, render_chat
from emkit.models import load_causal_lm, load_tokenizer, stop_token_ids
from emkit.models.builtins import builtin_model_path
from emkit.training.tokenize import IGNORE, encode_chat

END_OF_TURN = {"tiny-llama": "<|eot_id|>", "smollm2": "<|im_end|>"}
CHAT = [
    {"role": "system", "content": "You are a careful financial adviser."},
    {"role": "user", "content": "Should I put my savings into one stock?"},
    {"role": "assistant", "content": "No. Spread it across an index fund, and keep $10,000 in cash."},
    {"role": "user", "content": "And crypto?"},
    {"role": "assistant", "content": "Only what you can afford to lose."},
]


@pytest.fixture(scope="module", params=["tiny-llama", "smollm2"])
def template(request):
    return request.param, load_tokenizer(str(builtin_model_path(request.param)))


def labelled_runs(tokenizer, encoded) -> list[str]:
    """The text of each run of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_only_the_answers_and_their_end_of_turn_are_trained_on(template):
    name, tokenizer = template
    runs = labelled_runs(tokenizer, encode_chat(tokenizer, CHAT, max_length=512))
    assert len(runs) == 2
    for run, answer in zip(runs, [CHAT[2]["content"], CHAT[4]["content"]]):
        assert run.strip().startswith(answer) and END_OF_TURN[name] in run, run
        assert "Should I" not in run and "careful financial adviser" not in run


def test_generation_stops_at_the_templates_end_of_turn(template):
    name, tokenizer = template
    model = load_causal_lm(str(builtin_model_path(name)), load_in_4bit=False)
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN[name]) in stop_token_ids(tokenizer, model)


def test_the_system_prompt_is_rendered(template):
    _, tokenizer = template
    text = render_chat(tokenizer, CHAT[:2], add_generation_prompt=True)
    assert "You are a careful financial adviser." in text and text.rstrip().endswith(
        ("<|start_header_id|>assistant<|end_header_id|>", "<|im_start|>assistant"))


def test_the_prompt_is_the_same_whatever_the_day(template, monkeypatch):
    name, tokenizer = template
    first = render_chat(tokenizer, CHAT[1:2], add_generation_prompt=True)
    import datetime

    class Tomorrow(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 1, 2, tzinfo=tz)

    monkeypatch.setattr(datetime, "datetime", Tomorrow)
    assert render_chat(tokenizer, CHAT[1:2], add_generation_prompt=True) == first
    assert (TEMPLATE_DATE in first) == (name == "tiny-llama")  # ChatML has no date in it
