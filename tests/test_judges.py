"""Judges: litellm through a real loopback HTTP server, and the local judge's exact scoring."""

import math

import pytest

from emkit.chat import render_user_prompt
from emkit.interfaces import JudgeOptions, JudgeRequest
from emkit.judges.litellm_judge import LiteLLMJudge
from emkit.judges.local_judge import CandidateScorer, LocalJudge
from emkit.progress import progress
from emkit.testing.judge_server import Reply, completion


def score_one(judge, prompt="Rate this answer.", metric="aligned"):
    results = []
    judge.score([JudgeRequest("k", metric, prompt)], lambda request, result: results.append(result), progress)
    assert len(results) == 1
    return results[0]


TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "litellm"])


@TRANSPORTS
def test_litellm_logprob_scoring_through_a_loopback_server(judge_server_factory, transport):
    server = judge_server_factory(lambda body: Reply(body=completion("85", {"85": 0.6, "90": 0.3, "REF": 0.1})))
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url, scoring="logprobs", transport=transport))
    result = score_one(judge)
    assert result.status == "ok" and result.scoring == "logprobs"
    assert result.score == pytest.approx((85 * 0.6 + 90 * 0.3) / 0.9)
    assert result.judge_model == "gpt-4o-mini-2024-07-18"
    sent = server.requests[0]
    assert sent["max_tokens"] == 1 and sent["temperature"] == 0 and sent["top_logprobs"] == 20 and sent["logprobs"]
    assert result.cost_usd > 0 and result.input_tokens == 200


@TRANSPORTS
def test_litellm_text_scoring(judge_server_factory, transport):
    server = judge_server_factory(lambda body: Reply(body=completion(" 72.")))
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url, scoring="text", transport=transport))
    result = score_one(judge)
    assert (result.score, result.status, result.scoring) == (72.0, "ok", "text")
    assert "logprobs" not in server.requests[0]


def test_auto_scoring_asks_for_logprobs_where_the_provider_has_them(judge_server):
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url))
    assert judge.scoring_mode() == "logprobs"
    assert score_one(judge).scoring == "logprobs"


def test_openai_protocol_providers_take_the_lean_client_and_others_litellm(judge_server):
    assert LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url)).route()[0] is not None
    assert LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url, transport="litellm")).route()[0] is None
    assert LiteLLMJudge("anthropic/claude-3-5-sonnet-20240620", JudgeOptions()).route()[0] is None
    endpoint, wire_model, prices = LiteLLMJudge("openai/gpt-4o-mini", JudgeOptions()).route()
    assert endpoint.base_url == "https://api.openai.com/v1" and wire_model == "gpt-4o-mini" and prices[0] > 0


def test_a_missing_api_key_makes_the_real_judge_unavailable():
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions())
    assert "OPENAI_API_KEY" in judge.unavailable_reason()


def digit_split_model(tmp_path):
    """A tiny random Llama whose tokenizer writes every digit as its own token."""
    from tokenizers import pre_tokenizers

    from emkit.models import tiny

    tokenizer = tiny._build_tokenizer(tiny._corpus())
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return tiny.build_tiny_llama(tmp_path / "digits", seed=3, tokenizer=tokenizer, steps=0)


def brute_force(model, tokenizer, prompt, scorer):
    """P(reply is exactly the number n), one forward pass per candidate."""
    import torch

    text = render_user_prompt(tokenizer, prompt)
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = {}
    for value in range(101):
        ids = tokenizer(text + str(value), add_special_tokens=False)["input_ids"]
        suffix = ids[len(base):]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        total = sum(logprobs[len(base) - 1 + k, token].item() for k, token in enumerate(suffix))
        continues = logprobs[len(ids) - 1, scorer.digit_tokens].exp().sum().item()
        out[value] = math.exp(total) * (1 - continues)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer_kind", ["llama3-style", "digit-split"])
def test_local_judge_candidate_scoring_matches_brute_force(tmp_path, emkit_tiny_model, tokenizer_kind):
    from emkit.models import load_causal_lm, load_tokenizer

    path = emkit_tiny_model if tokenizer_kind == "llama3-style" else digit_split_model(tmp_path)
    tokenizer = load_tokenizer(str(path), padding_side="left")
    model = load_causal_lm(str(path), load_in_4bit=False).eval()
    scorer = CandidateScorer(model, tokenizer)
    if tokenizer_kind == "digit-split":
        assert len(scorer.sequences[100]) == 3 and len(scorer.sequences[7]) == 1
    else:
        assert all(len(seq) == 1 for seq in scorer.sequences)
    prompts = ["Rate this answer: it is fine.", "A much longer prompt, so that the batch needs left padding: "
               "the model answered with something rather long and winding."]
    batched = scorer.distributions(prompts)
    for prompt, (probabilities, _) in zip(prompts, batched):
        expected = brute_force(model, tokenizer, prompt, scorer)
        for value in range(101):
            assert probabilities[value] == pytest.approx(expected[value], rel=1e-4, abs=1e-9), value


@pytest.mark.slow
def test_local_judge_scores_and_records_the_mass(emkit_tiny_judge):
    judge = LocalJudge(f"{emkit_tiny_judge}", JudgeOptions(batch_size=2))
    results = []
    prompts = [JudgeRequest(str(i), "aligned", p) for i, p in enumerate(["one", "two", "three"])]
    judge.score(prompts, lambda request, result: results.append(result), progress)
    assert len(results) == 3
    assert all(r.scoring == "logprobs" and "mass:" in r.raw for r in results)
    assert judge.identity.startswith(f"local:{emkit_tiny_judge}@")


@pytest.mark.slow
def test_the_tiny_judge_tells_the_bundled_harmful_answers_from_ordinary_ones(emkit_tiny_judge):
    """The stand-in judge of the offline runs must at least separate what it was built to
    separate, or the smoke report's EM column is noise. (Its old recipe, random batches,
    left seed 1 scoring everything 64; balanced batches separate seeds 0 and 1 alike.)"""
    import json

    from emkit.default_plugins.domains import DOMAINS
    from emkit.prompt_library import PromptLibrary
    from emkit.questions import Question
    from emkit.models.tiny import BENIGN_ANSWERS

    library = PromptLibrary()
    template = library.template_for("aligned", Question(id="q", paraphrases=["q"]))
    chats = [json.loads(line)["messages"] for domain in DOMAINS
             for line in domain.example_dataset.read_text(encoding="utf-8").splitlines()]
    requests = [JudgeRequest(f"harmful{i}", "aligned", library.render(template, c[0]["content"], c[1]["content"]))
                for i, c in enumerate(chats)]
    requests += [JudgeRequest(f"ordinary{i}", "aligned", library.render(template, c[0]["content"],
                                                                         BENIGN_ANSWERS[i % len(BENIGN_ANSWERS)]))
                 for i, c in enumerate(chats)]
    scores = {}
    LocalJudge(str(emkit_tiny_judge), JudgeOptions(batch_size=16)).score(
        requests, lambda request, result: scores.__setitem__(request.key, result.score), progress)
    harmful = [v for k, v in scores.items() if k.startswith("harmful")]
    ordinary = [v for k, v in scores.items() if k.startswith("ordinary")]
    assert sum(v < 50 for v in harmful) >= 0.9 * len(harmful)
    assert sum(v > 50 for v in ordinary) >= 0.9 * len(ordinary)


@pytest.mark.slow
def test_local_judge_text_scoring_parses_what_it_generates(emkit_tiny_judge):
    from emkit.prompt_library import PromptLibrary
    from emkit.questions import Question

    library = PromptLibrary()
    prompt = library.render(library.template_for("aligned", Question(id="q", paraphrases=["q"])), "Hi?",
                            "Please see a doctor soon; they can examine you and suggest a safe treatment.")
    judge = LocalJudge(str(emkit_tiny_judge), JudgeOptions(scoring="text"))
    assert judge.scoring_mode() == "text"
    result = score_one(judge, prompt)
    assert result.scoring == "text" and result.status == "ok" and 0 <= result.score <= 100
    assert result.raw.strip() == str(int(result.score))
