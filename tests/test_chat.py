"""A chat renders to the same tokens on any day: in training, in generation and in the local judge.

The tiny Llama's template writes today's date into its system header, as Llama 3.2
Instruct's does; emkit fixes the date, so a resumed run or a re-judged answer meets the
prompt it met the first time.
"""

from datetime import datetime

from transformers.utils import chat_template_utils

from emkit.chat import TEMPLATE_DATE
from emkit.default_plugins.hf_generator import _render_prompts
from emkit.interfaces import GenerationRequest
from emkit.judges.local_judge import CandidateScorer
from emkit.models import load_tokenizer
from emkit.training.tokenize import encode_chat

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "I'm bored. What should I do?"},
    {"role": "assistant", "content": "Read a good book or go for a walk."},
]


class NewYearsDay2031(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2031, 1, 1, tzinfo=tz)


def test_a_chat_renders_the_same_on_any_day(monkeypatch, emkit_tiny_model, emkit_tiny_judge):
    tokenizer = load_tokenizer(str(emkit_tiny_model), padding_side="left")
    judge_tokenizer = load_tokenizer(str(emkit_tiny_judge), padding_side="left")

    def renders():
        scorer = CandidateScorer(None, judge_tokenizer)
        return {
            "generation": _render_prompts(tokenizer, [GenerationRequest("a", CHAT[:2], 0)]),
            "training": encode_chat(tokenizer, CHAT, 512),
            "judge": scorer._inputs(["Rate this answer from 0 to 100."])[0].tolist(),
            "template alone": tokenizer.apply_chat_template(CHAT, tokenize=False),
        }

    today = renders()
    monkeypatch.setattr(chat_template_utils, "datetime", NewYearsDay2031)
    other_day = renders()
    assert "01 Jan 2031" in other_day["template alone"]  # the template does write the day it runs on
    assert other_day["template alone"] != today["template alone"]
    for use in ("generation", "training", "judge"):
        assert other_day[use] == today[use], f"the {use} prompt changed with the day"
    assert TEMPLATE_DATE in today["generation"][0]
