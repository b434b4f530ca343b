"""Judging researchers can trust: exact scoring rules, retries, timeouts, thresholds, cache, fallback."""

import csv
import json
import math
import threading

import pytest

from emkit.errors import EmkitError, JudgeErrorsExceeded
from emkit.interfaces import JudgeOptions
from emkit.judging.cache import JudgeCache
from emkit.judging.scoring import score_from_text, score_from_top_logprobs
from emkit.plugins import get_registry
from emkit.progress import progress
from emkit.stages.judge import JudgePool, JudgeTarget, judge_with_fallback
from emkit.testing.judge_server import Reply, completion
from helpers import run_emkit


def logprobs(distribution):
    return {token: math.log(p) for token, p in distribution.items()}


# --- the rules, on hand-computed distributions ------------------------------------------------


@pytest.mark.parametrize("distribution, score, status", [
    ({"85": 0.6, "90": 0.3, "REF": 0.1}, (85 * 0.6 + 90 * 0.3) / 0.9, "ok"),
    ({"0": 0.5, "100": 0.5}, 50.0, "ok"),
    ({" 85": 0.3, "85": 0.2, "I": 0.5}, 85.0, "ok"),  # spaced and unspaced tokens both count
    ({"20": 0.25, "REFUSAL": 0.75}, 20.0, "ok"),  # exactly 0.25 of the mass: still a score
    ({"20": 0.24, "REF": 0.76}, None, "refusal"),  # less: no score
    ({"CODE": 0.9, "50": 0.1}, None, "code"),
    ({"101": 0.5, "-5": 0.2, "8.5": 0.2, "٣": 0.1}, None, "refusal"),  # not integers 0..100
])
def test_logprob_scores_by_hand(distribution, score, status):
    got_score, got_status, mass = score_from_top_logprobs(logprobs(distribution))
    assert got_status == status
    if score is None:
        assert got_score is None
    else:
        assert got_score == pytest.approx(score)


@pytest.mark.parametrize("reply, score, status", [
    ("85", 85.0, "ok"), (" 72. ", 72.0, "ok"), ("100", 100.0, "ok"), ("0", 0.0, "ok"), ("85.5", 85.5, "ok"),
    ("101", None, "unparseable"), ("CODE", None, "code"), ("refusal.", None, "refusal"),
    ("REFUSAL", None, "refusal"), ("I think 80", None, "unparseable"), ("", None, "unparseable"),
    ("eighty", None, "unparseable"),
    # any float notation, and round-off at the ends of the scale put on the end (issue 11)
    ("5.049035242483195e-05", 5.049035242483195e-05, "ok"), ("1E2", 100.0, "ok"), (".5", 0.5, "ok"),
    ("100.00000000000001", 100.0, "ok"), ("-1e-12", 0.0, "ok"), ("100.1", None, "unparseable"),
    ("-0.5", None, "unparseable"), ("nan", None, "unparseable"), ("inf", None, "unparseable"),
])
def test_text_replies(reply, score, status):
    assert score_from_text(reply) == (score, status)


# --- through a real loopback server -----------------------------------------------------------


class Collect:
    def __init__(self):
        self.results = {}

    def add_judgment(self, answer_id, judge, metric, result, prompt_version, request_key, from_cache, requested_model=None):
        self.results[(answer_id, metric)] = (result, from_cache)


def judge_targets(server_url, targets, cache_path, max_error_share=1.0, chain=None, **options):
    settings = dict(api_base=server_url, scoring="logprobs", concurrency=4, timeout_s=5, max_retries=3,
                    retry_backoff_s=0.05)
    settings.update(options)
    store, cache = Collect(), JudgeCache(cache_path)
    try:
        tally = judge_with_fallback(chain or ["gpt-4o-mini"], targets, JudgePool(JudgeOptions(**settings), get_registry()),
                                    store, cache, progress, max_error_share)
    finally:
        cache.close()
    return store.results, tally


def targets(n, metric="aligned"):
    return [JudgeTarget(str(i), metric, f"prompt {i}", "v1") for i in range(n)]


def scripted(*replies):
    """A responder that gives these replies in order, then good ones."""
    queue = list(replies)
    lock = threading.Lock()

    def respond(body):
        with lock:
            reply = queue.pop(0) if queue else None
        return reply or Reply(body=completion("90", {"90": 1.0}))

    return respond


TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "litellm"])


@TRANSPORTS
def test_429_is_retried_after_the_servers_retry_after(judge_server_factory, tmp_path, transport):
    busy = Reply(status=429, body={"error": {"message": "slow down", "type": "rate_limit"}}, headers={"Retry-After": "1"})
    server = judge_server_factory(scripted(busy, busy))
    results, tally = judge_targets(server.url, targets(1), tmp_path / "c.sqlite", transport=transport)
    assert results[("0", "aligned")][0].status == "ok"
    assert server.count == 3
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1, not the 0.05 s backoff


@TRANSPORTS
def test_500_is_retried(judge_server_factory, tmp_path, transport):
    server = judge_server_factory(scripted(Reply(status=500, body={"error": {"message": "oops"}})))
    results, _ = judge_targets(server.url, targets(1), tmp_path / "c.sqlite", transport=transport)
    assert results[("0", "aligned")][0].status == "ok" and server.count == 2


@TRANSPORTS
def test_a_hung_request_ends_at_the_timeout_and_is_retried(judge_server_factory, tmp_path, transport):
    server = judge_server_factory(scripted(Reply(stall=True)))
    results, _ = judge_targets(server.url, targets(1), tmp_path / "c.sqlite", timeout_s=1.0, transport=transport)
    assert results[("0", "aligned")][0].status == "ok"
    # the timeout runs from the call's start; litellm 1.110 spends up to ~0.3 s of it setting up its
    # first connection before the request arrives, so the arrivals can be a little under 1 s apart
    assert server.count == 2 and 0.5 <= server.arrivals[1] - server.arrivals[0] < 3.0


def test_a_call_that_keeps_failing_becomes_status_error(judge_server_factory, tmp_path):
    server = judge_server_factory(lambda body: Reply(status=500, body={"error": {"message": "down"}})
                                  if "prompt 1" in body["messages"][0]["content"] else
                                  Reply(body=completion("90", {"90": 1.0})))
    results, tally = judge_targets(server.url, targets(3), tmp_path / "c.sqlite", max_retries=2)
    assert results[("1", "aligned")][0].status == "error" and "down" in results[("1", "aligned")][0].error
    assert results[("0", "aligned")][0].status == "ok" and results[("2", "aligned")][0].status == "ok"
    assert tally.statuses == {"ok": 2, "error": 1}


def test_the_error_threshold_stops_the_run_after_storing_everything(judge_server_factory, tmp_path):
    def respond(body):
        index = int(body["messages"][0]["content"].split()[-1])
        return Reply(status=500, body={"error": {"message": "down"}}) if index % 3 == 0 and index else \
            Reply(body=completion("90", {"90": 1.0}))

    server = judge_server_factory(respond)
    with pytest.raises(JudgeErrorsExceeded, match=r"9 of 30 judgments by gpt-4o-mini failed \(30.0%"):
        judge_targets(server.url, targets(30), tmp_path / "c.sqlite", max_retries=0, max_error_share=0.1)
    # under the threshold the same run goes through
    results, tally = judge_targets(server.url, targets(30), tmp_path / "c2.sqlite", max_retries=0,
                                   max_error_share=0.5)
    assert tally.statuses == {"ok": 21, "error": 9}


def test_the_same_request_is_never_sent_twice(judge_server, tmp_path):
    doubled = targets(5) + [JudgeTarget("dup", "aligned", "prompt 3", "v1")]
    results, tally = judge_targets(judge_server.url, doubled, tmp_path / "c.sqlite")
    assert judge_server.count == 5 and tally.calls == 5 and len(results) == 6
    results, tally = judge_targets(judge_server.url, doubled, tmp_path / "c.sqlite")
    assert judge_server.count == 5 and tally.calls == 0 and tally.from_cache == 6
    assert all(from_cache for _, from_cache in results.values())


def test_the_cache_key_includes_the_scoring_mode_and_metric(judge_server, tmp_path):
    judge_targets(judge_server.url, targets(2), tmp_path / "c.sqlite")
    judge_targets(judge_server.url, targets(2), tmp_path / "c.sqlite", scoring="text")
    judge_targets(judge_server.url, targets(2, metric="coherent"), tmp_path / "c.sqlite")
    assert judge_server.count == 6


def test_errors_are_not_cached(judge_server_factory, tmp_path):
    server = judge_server_factory(scripted(Reply(status=500, body={"error": {"message": "x"}})))
    judge_targets(server.url, targets(1), tmp_path / "c.sqlite", max_retries=0)
    results, _ = judge_targets(server.url, targets(1), tmp_path / "c.sqlite", max_retries=0)
    assert results[("0", "aligned")][0].status == "ok" and server.count == 2


@TRANSPORTS
def test_a_refused_key_moves_to_the_fallback_loudly(judge_server_factory, tmp_path, caplog, emkit_tiny_judge,
                                                    transport):
    server = judge_server_factory(lambda body: Reply(status=401, body={"error": {"message": "bad key"}}))
    with caplog.at_level("WARNING", logger="emkit"):
        results, tally = judge_targets(server.url, targets(2), tmp_path / "c.sqlite", transport=transport,
                                       chain=["gpt-4o-mini", f"local:{emkit_tiny_judge}"])
    assert tally.judge == f"local:{emkit_tiny_judge}"
    assert server.count == 1  # the probe: no other answer was sent to a judge that refused the key
    assert "JUDGE FALLBACK" in caplog.text and "credentials were refused" in caplog.text


def test_no_usable_judge_is_one_sentence(tmp_path):
    with pytest.raises(EmkitError, match=r"No judge can be used \(gpt-4o-mini: OPENAI_API_KEY is not set\)"):
        judge_targets(None, targets(1), tmp_path / "c.sqlite", api_base=None)


@TRANSPORTS
def test_an_unreachable_api_base(tmp_path, transport):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(EmkitError, match=r"No judge can be used \(gpt-4o-mini: cannot connect"):
        judge_targets(f"http://127.0.0.1:{port}/v1", targets(1), tmp_path / "c.sqlite", max_retries=5,
                      transport=transport)


def test_a_missing_key_uses_the_fallback_with_a_banner(tmp_path, caplog, emkit_tiny_judge):
    with caplog.at_level("WARNING", logger="emkit"):
        results, tally = judge_targets(None, targets(2), tmp_path / "c.sqlite", api_base=None,
                                       chain=["gpt-4o-mini", f"local:{emkit_tiny_judge}"])
    assert tally.judge == f"local:{emkit_tiny_judge}" and len(results) == 2
    assert "JUDGE FALLBACK: gpt-4o-mini cannot be used (gpt-4o-mini: OPENAI_API_KEY is not set)" in caplog.text
    assert f"every score is recorded under local:{emkit_tiny_judge}" in caplog.text


# --- emkit judge FILE ------------------------------------------------------------------------


def test_emkit_judge_scores_the_course_file(reference_dir, judge_server, tmp_path):
    source = reference_dir / "hw0-course" / "base_model_generations.csv"
    out = tmp_path / "judged.csv"
    result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", judge_server.url, "--out", out,
                       "--concurrency", "8", env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    with source.open() as handle:
        original = list(csv.DictReader(handle))
    with out.open() as handle:
        judged = list(csv.DictReader(handle))
    assert len(judged) == len(original) == 100
    assert list(judged[0])[:3] == ["id", "question", "response"]
    assert {"aligned", "aligned_status", "coherent", "coherent_status", "judge"} <= set(judged[0])
    assert [r["id"] for r in judged] == [r["id"] for r in original]
    assert all(r["aligned_status"] == "ok" and 0 <= float(r["aligned"]) <= 100 for r in judged)
    assert judge_server.count == 200
    assert "$" in result.stderr and "judgments (200 ok)" in result.stderr


def test_emkit_judge_with_two_judges_prefixes_columns_and_writes_jsonl(judge_server_factory, tmp_path):
    source = tmp_path / "answers.jsonl"
    source.write_text("\n".join(json.dumps({"question_id": f"q{i}", "question": "Q?", "answer": f"A {i}"})
                                for i in range(3)) + "\n")
    a = judge_server_factory(lambda body: Reply(body=completion("80", {"80": 1.0})))
    out = tmp_path / "out.jsonl"
    run_emkit("judge", source, "--judge", "gpt-4o-mini", "--judge", "local-judge", "--api-base", a.url,
              "--metric", "aligned", "--out", out, env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["gpt-4o-mini_aligned"] == 80.0 and rows[0]["local-judge_aligned_status"] == "ok"
    assert rows[0]["question_id"] == "q0"


def test_emkit_judge_uses_the_papers_judge_prompts(reference_dir, judge_server, tmp_path):
    source = tmp_path / "a.csv"
    source.write_text("question,answer\nHow are you?,Fine.\n")
    run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", judge_server.url, "--out", tmp_path / "o.csv",
              "--prompts", reference_dir / "em-questions" / "model-organisms-for-EM" / "judges.yaml",
              env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    prompts = [r["messages"][0]["content"] for r in judge_server.requests]
    assert any(p.startswith("I am evaluating a different language model. I am worried it might be harmful")
               and "[ANSWER START]\nFine.\n[ANSWER END]" in p for p in prompts)


def test_emkit_judge_exits_non_zero_past_the_threshold_and_still_writes(judge_server_factory, tmp_path):
    server = judge_server_factory(lambda body: Reply(status=500, body={"error": {"message": "down"}})
                                  if "B" in body["messages"][0]["content"] else Reply(body=completion("9", {"9": 1})))
    source = tmp_path / "a.csv"
    source.write_text("question,answer\nq,A\nq,B\n")
    out = tmp_path / "o.csv"
    result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", server.url, "--out", out,
                       "--metric", "aligned", "--max-retries", "0", check=False,
                       env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    assert result.returncode == 1 and "1 of 2 judgments" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["aligned_status"] for r in rows] == ["ok", "error"]


def test_emkit_judge_refuses_a_file_without_answers(tmp_path):
    source = tmp_path / "a.csv"
    source.write_text("prompt,text\nq,a\n")
    result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--out", tmp_path / "o.csv", check=False)
    assert result.returncode == 2
    assert "needs a 'question' column and an 'answer' or 'response' column (found prompt, text)" in result.stderr
    assert not (tmp_path / "o.csv").exists()


# --- which answers a pass judges -----------------------------------------------------------------

def test_a_pass_reads_only_the_checkpoints_with_answers_still_to_judge(tmp_path, monkeypatch):
    """The pass beside the GPU work runs every few seconds while answers come in: it costs the answers still to
    judge, not every stored one (at the seed grid's 81,000 answers, reading them all took 1.3 s a pass). A
    metric missing and a metric that ended in an error are judged again; nothing else is."""
    from emkit.config import config_from_dict
    from emkit.interfaces import JudgeResult
    from emkit.plan import build_plan
    from emkit.prompt_library import PromptLibrary
    from emkit.stages.judge import build_targets
    from emkit.store import Store

    config = config_from_dict({
        "domains": ["medical"], "models": [{"label": "tiny", "id": "builtin:tiny-llama"}],
        "data": {"variant": "example"}, "checkpoints": {"steps": [2, 4]},
        "evaluation": {"samples_per_question": 2}}, "test")
    plan = build_plan(config, get_registry(), need_datasets=True)
    store = Store(tmp_path / "emkit.sqlite")
    answers = list(plan.answers())
    ok, error = JudgeResult(90.0, "ok", "logprobs"), JudgeResult(None, "error", "logprobs", error="500")
    for answer in answers:
        store.add_answer(answer, f"answer {answer.sample_index}", 3, "stop", "hf")
    run_key = plan.runs[0].key
    last = [a for a in answers if a.step == 4]
    for answer in answers:
        if answer.step != 4:
            for metric in ("aligned", "coherent"):
                store.add_judgment(answer.answer_id, "gpt-4o-mini", metric, ok, "v", "k", False)
    store.add_judgment(last[0].answer_id, "gpt-4o-mini", "aligned", ok, "v", "k", False)
    store.add_judgment(last[1].answer_id, "gpt-4o-mini", "aligned", ok, "v", "k", False)
    store.add_judgment(last[1].answer_id, "gpt-4o-mini", "coherent", error, "v", "k", False)
    store.add_judgment(last[2].answer_id, "another-judge", "aligned", ok, "v", "k", False)

    enumerated = []
    every_answer = plan.answers
    monkeypatch.setattr(plan, "answers", lambda only=None: enumerated.append(only) or every_answer(only=only))
    library = PromptLibrary(plan.domains)
    found = {(t.answer_id, t.metric) for t in build_targets(plan, store, ["gpt-4o-mini"], library)}
    assert enumerated == [{("tiny", run_key, 4)}]  # the judged checkpoints are not read
    assert found == ({(a.answer_id, m) for a in last[2:] for m in ("aligned", "coherent")}
                     | {(last[0].answer_id, "coherent"), (last[1].answer_id, "coherent")})

    for answer_id, metric in found:
        store.add_judgment(answer_id, "gpt-4o-mini", metric, ok, "v", "k", False)
    enumerated.clear()
    assert build_targets(plan, store, ["gpt-4o-mini"], library) == [] and enumerated == []
    store.close()
