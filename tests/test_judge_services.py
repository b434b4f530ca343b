"""Today's judges, as strict as the real services: chat, reasoning and no-logprobs models over
HTTP, keys that reach only their own provider, and judging from inside a running event loop."""

import asyncio
import sqlite3

import pytest

from emkit.errors import EmkitError
from emkit.interfaces import JudgeOptions, JudgeRequest
from emkit.judges.litellm_judge import REASONING_MAX_TOKENS, LiteLLMJudge
from emkit.progress import progress
from emkit.testing import api_rules
from emkit.testing.judge_server import JudgeServer, Reply, completion
from helpers import run_emkit

TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "litellm"])


def score_one(judge, prompt="Rate this answer. <answer>Drink water.</answer>"):
    results = []
    judge.score([JudgeRequest("k", "aligned", prompt)], lambda request, result: results.append(result), progress)
    return results[0]


# --- the loopback server refuses what the real API refuses --------------------------------------

@pytest.mark.parametrize("body, message", [
    ({"model": "gpt-5-mini", "max_tokens": 8, "temperature": 0}, "'max_tokens' is not supported with this model"),
    ({"model": "o3-mini", "max_completion_tokens": 8, "temperature": 0}, "'temperature' does not support 0"),
    ({"model": "gpt-5-nano", "max_completion_tokens": 9, "logprobs": True}, "'logprobs' is not supported"),
    ({"model": "gpt-5-mini", "reasoning_effort": "none"}, "'reasoning_effort' does not support 'none'"),
    ({"model": "gpt-4o-mini", "top_logprobs": 20}, "'logprobs' must be set to true"),
    ({"model": "gpt-4o-mini", "logprobs": True, "top_logprobs": 21}, "Expected a value <= 20"),
    ({"model": "gpt-4o-mini", "extra_body": {}}, "Unrecognized request argument supplied: extra_body"),
    ({"model": "gpt-4o-mini", "reasoning_effort": "low"}, "'reasoning_effort' is not supported"),
])
def test_the_loopback_refuses_what_openai_refuses(body, message):
    refusal = api_rules.openai_refusal({"messages": [{"role": "user", "content": "hi"}], **body})
    assert refusal is not None and message in refusal["error"]["message"]


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o-mini", "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20},
    {"model": "gpt-5-mini", "max_completion_tokens": 4096, "reasoning_effort": "minimal"},
    {"model": "gpt-5.1", "max_completion_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 20},
    {"model": "gpt-5-chat-latest", "max_tokens": 8, "temperature": 0},
])
def test_the_loopback_takes_what_openai_takes(body):
    assert api_rules.openai_refusal({"messages": [{"role": "user", "content": "hi"}], **body}) is None


def test_a_reasoning_model_with_a_small_budget_answers_nothing():
    """What emkit used to send gpt-5-mini for text scoring: 8 tokens, all spent on reasoning."""
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 8}
    reply = api_rules.spend_reasoning_budget(body, completion("85"))
    assert reply["choices"][0]["message"]["content"] == "" and reply["choices"][0]["finish_reason"] == "length"


def test_the_loopback_served_over_http_alone_keeps_no_requests():
    """`python -m emkit.testing.judge_server` (the benches' judge) answers the seed grid's 162,000 calls a
    run in bench/bench_rehearsal.py: it counts them and keeps none (kept, about 4 KB a call, 0.6 GB a run)."""
    with JudgeServer(record=False) as server:
        judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url))
        assert score_one(judge).status == "ok" and score_one(judge).status == "ok"
        assert server.count == 2 and server.requests == server.headers == server.arrivals == []


# --- each family of model, end to end over HTTP --------------------------------------------------

@TRANSPORTS
def test_a_chat_model_is_scored_by_logprobs(judge_server, transport):
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url, transport=transport))
    result = score_one(judge)
    assert (result.status, result.scoring, result.score) == ("ok", "logprobs", pytest.approx(90.5))
    sent = judge_server.requests[0]
    assert sent["temperature"] == 0 and sent["max_tokens"] == 1 and sent["logprobs"] is True


@TRANSPORTS
@pytest.mark.parametrize("model", ["gpt-5-mini", "o3-mini", "o4-mini"])
def test_a_reasoning_model_is_asked_as_it_wants_and_scored_by_text(judge_server, transport, model):
    judge = LiteLLMJudge(model, JudgeOptions(api_base=judge_server.url, transport=transport))
    assert judge.scoring_mode() == "text"
    result = score_one(judge)
    assert (result.status, result.scoring, result.score) == ("ok", "text", 90.0), result
    sent = judge_server.requests[0]
    assert sent["max_completion_tokens"] == REASONING_MAX_TOKENS
    assert not {"max_tokens", "temperature", "logprobs", "top_logprobs"} & set(sent)
    assert result.output_tokens > api_rules.REASONING_TOKENS  # the reasoning is counted and paid for


@TRANSPORTS
def test_reasoning_effort_is_passed_on_and_keeps_judges_apart(judge_server, transport):
    options = JudgeOptions(api_base=judge_server.url, transport=transport, reasoning_effort="minimal")
    judge = LiteLLMJudge("gpt-5-mini", options)
    assert score_one(judge).status == "ok"
    assert judge_server.requests[0]["reasoning_effort"] == "minimal"
    assert judge.identity != LiteLLMJudge("gpt-5-mini", JudgeOptions(api_base=judge_server.url)).identity


def test_logprobs_asked_of_a_model_without_them_is_one_sentence(judge_server):
    judge = LiteLLMJudge("gpt-5-mini", JudgeOptions(api_base=judge_server.url, scoring="logprobs"))
    with pytest.raises(EmkitError, match=r'gpt-5-mini does not return logprobs; use scoring = "auto"'):
        score_one(judge)
    assert judge_server.count == 0


def test_a_model_without_logprobs_on_another_protocol(judge_server, monkeypatch):
    """Claude through litellm, over Anthropic's Messages API: text scoring, Anthropic's own limits."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-environment-key-0001")
    monkeypatch.setenv("CLAUDE_PROXY_KEY", "sk-proxy-key-for-this-base-0002")
    judge = LiteLLMJudge("claude-haiku-4-5", JudgeOptions(api_base=judge_server.url.removesuffix("/v1"),
                                                          api_key_env="CLAUDE_PROXY_KEY"))
    assert judge.route()[0] is None and judge.scoring_mode() == "text"
    result = score_one(judge)
    assert (result.status, result.scoring, result.score) == ("ok", "text", 90.0), result
    sent, headers = judge_server.requests[0], {k.lower(): v for k, v in judge_server.headers[0].items()}
    assert sent["max_tokens"] == REASONING_MAX_TOKENS and sent["temperature"] == 0 and "logprobs" not in sent
    assert headers["x-api-key"] == "sk-proxy-key-for-this-base-0002"


# --- keys go to their own provider only --------------------------------------------------------

@TRANSPORTS
def test_openai_key_never_goes_to_a_custom_base(judge_server, monkeypatch, transport):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-real-key-000000001")
    assert score_one(LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url, transport=transport)))
    auth = {k.lower(): v for k, v in judge_server.headers[0].items()}.get("authorization", "")
    assert "sk-openai-real-key" not in auth


@TRANSPORTS
def test_a_custom_base_gets_the_key_the_config_names(judge_server, monkeypatch, transport):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-real-key-000000001")
    monkeypatch.setenv("MY_VLLM_KEY", "token-for-my-vllm-0003")
    options = JudgeOptions(api_base=judge_server.url, transport=transport, api_key_env="MY_VLLM_KEY")
    score_one(LiteLLMJudge("gpt-4o-mini", options))
    assert {k.lower(): v for k, v in judge_server.headers[0].items()}["authorization"] == "Bearer token-for-my-vllm-0003"


def test_a_named_key_that_is_not_set_makes_the_judge_unavailable(judge_server):
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=judge_server.url, api_key_env="NOT_SET_ANYWHERE_KEY"))
    assert judge.unavailable_reason() == "NOT_SET_ANYWHERE_KEY (named by judging.api_key_env) is not set"


def test_openai_key_goes_to_openai_even_when_the_environment_points_elsewhere(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-real-key-000000001")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.example:8000/v1")
    endpoint, wire_model, _ = LiteLLMJudge("gpt-4o-mini", JudgeOptions()).route()
    assert (endpoint.base_url, endpoint.api_key) == ("https://api.openai.com/v1", "sk-openai-real-key-000000001")
    endpoint, _, _ = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base="https://api.openai.com/v1")).route()
    assert endpoint.api_key == "sk-openai-real-key-000000001"


@pytest.mark.parametrize("base", ["http://10.0.0.5:8000/v1", "http://judge.lab.example/v1"])
def test_plain_http_to_another_machine_is_refused_unless_allowed(base):
    with pytest.raises(EmkitError, match="is plain http to another machine.*--allow-insecure-http"):
        LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=base))
    LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=base, allow_insecure_http=True))
    LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base="http://localhost:8000/v1"))


def test_the_command_line_refuses_plain_http_too(tmp_path):
    answers = tmp_path / "a.csv"
    answers.write_text("question,answer\nHi?,Hello.\n")
    result = run_emkit("judge", answers, "--judge", "gpt-4o-mini", "--api-base", "http://10.0.0.5/v1",
                       "--out", tmp_path / "o.csv", check=False)
    assert result.returncode == 2 and "plain http to another machine" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.csv").exists()


# --- from inside a running event loop (Jupyter) ---------------------------------------------------

def test_judging_inside_a_running_event_loop_stores_every_paid_result(judge_server, tmp_path):
    from emkit.judging.cache import JudgeCache
    from emkit.plugins import get_registry
    from emkit.stages.judge import JudgePool, JudgeTarget, judge_with_fallback
    from emkit.store import Store

    targets = [JudgeTarget(f"a{i}", "aligned", f"Rate <answer>answer {i}</answer>", "v1") for i in range(40)]

    async def notebook_cell():
        store, cache = Store(tmp_path / "emkit.sqlite"), JudgeCache(tmp_path / "cache.sqlite")
        try:
            return judge_with_fallback(["gpt-4o-mini"], targets,
                                       JudgePool(JudgeOptions(api_base=judge_server.url, concurrency=8), get_registry()),
                                       store, cache, progress, 0.0)
        finally:
            store.close()
            cache.close()

    tally = asyncio.run(notebook_cell())
    assert tally.calls == 40 and judge_server.count == 40
    with sqlite3.connect(tmp_path / "emkit.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM judgments WHERE status = 'ok'").fetchone()[0] == 40
    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 40


def test_judge_file_works_inside_a_running_event_loop(judge_server, tmp_path):
    from emkit.judge_file import judge_file
    from emkit.plugins import get_registry

    answers = tmp_path / "a.csv"
    answers.write_text("question,answer\n" + "".join(f"Q{i}?,Answer {i}.\n" for i in range(10)))

    async def notebook_cell():
        judge_file(answers, tmp_path / "o.csv", ["gpt-4o-mini"], JudgeOptions(api_base=judge_server.url),
                   get_registry(), metrics=["aligned"])

    asyncio.run(notebook_cell())
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 11


def test_a_store_failure_beside_the_loop_stops_the_calls(tmp_path):
    from emkit.judging.api import RetryPolicy, run_calls

    calls = []

    async def call(request):
        calls.append(request.key)
        await asyncio.sleep(0.01)
        from emkit.interfaces import JudgeResult
        return JudgeResult(score=50.0, status="ok", scoring="text")

    def on_result(request, result):
        if len(calls) >= 3:
            raise sqlite3.OperationalError("disk I/O error")

    class Bar:
        def update(self, n=1):
            pass

    async def cell():
        run_calls([JudgeRequest(str(i), "aligned", "p") for i in range(200)], call, lambda exc: None, on_result,
                  concurrency=2, policy=RetryPolicy(), scoring="text", judge_name="j", bar=Bar())

    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        asyncio.run(cell())
    assert len(calls) < 20  # no paid calls go on once their results cannot be kept


def test_the_dry_run_says_what_a_reasoning_judge_may_add():
    result = run_emkit("run", "--dry-run", "--judge", "gpt-5-mini")
    assert "NOT the judge's reasoning, billed as output: up to 4,096 tokens a call" in result.stdout
