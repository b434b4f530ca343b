"""Batch judging (emkit.judging.batch) and live pacing (emkit.judging.pacing), against the loopback
server's Files and Batch APIs and its per-minute limits, which behave as OpenAI's do."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from emkit.interfaces import JudgeOptions, JudgeRequest
from emkit.judges.litellm_judge import LiteLLMBatchAPI, LiteLLMJudge
from emkit.judging.pacing import Pacer, limit_headers, parse_reset
from emkit.progress import progress
from emkit.testing.batch_api import BatchBehaviour
from emkit.testing.judge_server import JudgeServer, Reply, completion, default_responder
from emkit.testing.rate_limits import RateLimits
from helpers import run_emkit


def requests(n: int, words: str = "an ordinary answer") -> list[JudgeRequest]:
    return [JudgeRequest(key=f"key-{i}", metric="aligned",
                         prompt=f"Rate this. <answer>{words} number {i}</answer> " + "context " * 40)
            for i in range(n)]


def judge_with(server, ledger, _requests=None, **options) -> dict:
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url, ledger=str(ledger), batch_poll_s=0.05,
                                                     **options))
    results = {}
    judge.score(_requests or REQUESTS, lambda r, res: results.__setitem__(r.key, res), progress)
    return results


REQUESTS = requests(12)


def chat_calls(server) -> int:
    return server.count


def api_calls(server, method: str, path: str) -> int:
    return sum(1 for m, p in server.api_calls if m == method and p.rstrip("/").endswith(path))


# --- batch mode -----------------------------------------------------------------------------


def test_a_batch_scores_by_logprobs_exactly_as_live_calls_do(judge_server_factory, tmp_path):
    live_server, batch_server = judge_server_factory(), judge_server_factory()
    live = judge_with(live_server, tmp_path / "live.sqlite")
    batched = judge_with(batch_server, tmp_path / "batch.sqlite", mode="batch", batch_max_requests=5)
    assert chat_calls(batch_server) == 0 and chat_calls(live_server) == 12
    assert api_calls(batch_server, "POST", "/v1/files") == 3  # 12 requests cut at 5 a batch
    assert len(batch_server.batches.batches) == 3
    assert {k: (r.score, r.status, r.scoring, r.raw) for k, r in batched.items()} == \
           {k: (r.score, r.status, r.scoring, r.raw) for k, r in live.items()}
    assert {r.scoring for r in batched.values()} == {"logprobs"}
    # the batch API's price: half of gpt-4o-mini's live price (litellm's table)
    assert sum(r.cost_usd for r in batched.values()) == pytest.approx(sum(r.cost_usd for r in live.values()) / 2)


def test_a_batch_file_is_what_openai_takes(judge_server, tmp_path):
    judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")
    (batch,) = judge_server.batches.batches.values()
    assert batch["status"] == "completed" and batch["errors"] is None
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
    upload = judge_server.batches.files[batch["input_file_id"]]
    assert upload["purpose"] == "batch" and upload["filename"].endswith(".jsonl")


def test_emkit_judge_in_batch_mode_scores_the_course_file(reference_dir, judge_server_factory, tmp_path):
    source = reference_dir / "hw0-course" / "base_model_generations.csv"
    outputs = {}
    servers = {}
    for mode in ("live", "batch"):
        servers[mode] = judge_server_factory()
        out = tmp_path / f"{mode}.csv"
        result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", servers[mode].url, "--out", out,
                           "--judge-mode", mode, "--batch-poll", "0.05",
                           env={"EMKIT_JUDGE_CACHE": str(tmp_path / f"{mode}.sqlite")})
        with out.open() as handle:
            outputs[mode] = list(csv.DictReader(handle))
    assert len(outputs["batch"]) == 100 and servers["batch"].count == 0
    assert [(r["id"], r["aligned"], r["coherent"]) for r in outputs["batch"]] == \
           [(r["id"], r["aligned"], r["coherent"]) for r in outputs["live"]]
    assert "submitted batch" in result.stderr and "200 of 200 done" in result.stderr


def test_two_servers_that_number_their_files_alike_share_one_cache(reference_dir, judge_server_factory, tmp_path):
    """Both loopback servers call their first file file-emkit000001: the ledger keys files by judge and file id
    (before: sqlite3.IntegrityError: UNIQUE constraint failed: judge_batches.file_id)."""
    source = reference_dir / "hw0-course" / "base_model_generations.csv"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "shared.sqlite")}
    for name in ("a", "b"):
        server = judge_server_factory()
        out = tmp_path / f"{name}.csv"
        result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", server.url, "--out", out,
                           "--judge-mode", "batch", "--batch-poll", "0.05", env=env)
        assert "200 of 200 done" in result.stderr, result.stderr[-2000:]
        assert any(path.endswith("/files") for method, path in server.api_calls if method == "POST")
        assert "file-emkit000001" in server.batches.files


def _start_judging(source, server, out, cache):
    return subprocess.Popen([sys.executable, "-m", "emkit", "judge", str(source), "--judge", "gpt-4o-mini",
                             "--api-base", server.url, "--out", str(out), "--judge-mode", "batch", "--batch-poll",
                             "0.1"], env={**os.environ, "EMKIT_JUDGE_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_run_killed_while_polling_polls_again_and_never_submits_twice(reference_dir, judge_server_factory,
                                                                        tmp_path):
    source = reference_dir / "hw0-course" / "base_model_generations.csv"
    gate = threading.Event()  # the provider holds the batch in progress until the test opens it
    server = judge_server_factory()
    server.batches.behaviour = BatchBehaviour(gate=gate)
    process = _start_judging(source, server, tmp_path / "out.csv", tmp_path / "cache.sqlite")
    deadline = time.monotonic() + 120
    while not any(m == "GET" and "/batches/" in p for m, p in server.api_calls):  # polling has begun
        assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out.csv").exists()
    gate.set()
    result = run_emkit("judge", source, "--judge", "gpt-4o-mini", "--api-base", server.url, "--out",
                       tmp_path / "out.csv", "--judge-mode", "batch", "--batch-poll", "0.05",
                       env={"EMKIT_JUDGE_CACHE": str(tmp_path / "cache.sqlite")})
    assert api_calls(server, "POST", "/v1/files") == 1 and api_calls(server, "POST", "/v1/batches") == 1
    assert "already at the provider; polling it, not sending it again" in result.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and all(r["aligned_status"] == "ok" for r in rows)
    assert server.count == 0


def test_a_batch_made_but_never_recorded_is_found_by_its_file(judge_server, tmp_path, monkeypatch):
    """Killed between the provider making the batch and the ledger writing its id: the next run
    finds the batch among the provider's by the file it was made from, and makes no second one."""
    original = LiteLLMBatchAPI.create

    async def create_then_die(self, file_id, metadata):
        await original(self, file_id, metadata)
        raise KeyboardInterrupt  # the process dies before the id is written

    monkeypatch.setattr(LiteLLMBatchAPI, "create", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")
    monkeypatch.setattr(LiteLLMBatchAPI, "create", original)
    # the organisation made 250 batches since: the one sought is on the list's third page of 100
    for i in range(250):
        judge_server.batches.batches[f"batch_other{i:06d}"] = {
            "id": f"batch_other{i:06d}", "object": "batch", "status": "completed", "input_file_id": f"file-other{i}",
            "endpoint": "/v1/chat/completions", "completion_window": "24h", "created_at": 0}
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    assert len(judge_server.batches.batches) == 251 and api_calls(judge_server, "POST", "/v1/files") == 1
    assert api_calls(judge_server, "POST", "/v1/batches") == 1
    assert any("after=batch_other000050" in p for m, p in judge_server.api_calls)  # it went on to page 3


def test_a_failed_download_of_a_batchs_results_is_tried_again_at_the_next_look(judge_server, tmp_path, caplog):
    # the client library tries each download again itself, so six failures are one look or more
    judge_server.batches.behaviour = BatchBehaviour(content_failures=6)
    with caplog.at_level("WARNING", logger="emkit"):
        results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    assert len(judge_server.batches.batches) == 1 and judge_server.count == 0
    assert caplog.text.count("could not download the results of batch batch_emkit") >= 1
    assert judge_server.batches.behaviour.content_failures == 0


def test_a_resumed_batch_that_expired_sends_what_it_left_with_the_real_prompts(judge_server, tmp_path, monkeypatch):
    judge_server.batches.behaviour = BatchBehaviour(expire_after=5)
    original = LiteLLMBatchAPI.retrieve

    async def killed_while_polling(self, batch_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(LiteLLMBatchAPI, "retrieve", killed_while_polling)
    with pytest.raises(KeyboardInterrupt):
        judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")
    monkeypatch.setattr(LiteLLMBatchAPI, "retrieve", original)
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch", batch_resend="live")
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    assert len(judge_server.batches.batches) == 1 and judge_server.count == 7
    sent = {body["messages"][0]["content"] for body in judge_server.requests}
    assert sent <= {r.prompt for r in REQUESTS}  # the real prompts: the ledger holds only keys and metrics


@pytest.mark.parametrize("resend", ["batch", "live"])
def test_an_expired_batch_has_what_it_left_undone_sent_again(judge_server, tmp_path, resend):
    judge_server.batches.behaviour = BatchBehaviour(expire_after=5)
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch", batch_resend=resend)
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    statuses = sorted(b["status"] for b in judge_server.batches.batches.values())
    if resend == "live":
        assert statuses == ["expired"] and judge_server.count == 7
    else:  # the 7 left go in a new batch, which expires after 5 again: a third takes the last 2
        assert statuses == ["completed", "expired", "expired"] and judge_server.count == 0


def test_batches_that_keep_expiring_end_in_errors_not_forever(judge_server, tmp_path):
    judge_server.batches.behaviour = BatchBehaviour(expire_after=0)  # the window runs out before anything runs
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch", max_retries=2)
    assert {r.status for r in results.values()} == {"error"} and len(results) == 12
    assert len(judge_server.batches.batches) == 3  # the first and two resends


def test_errors_inside_a_batch_are_handled_as_live_errors_are(judge_server_factory, tmp_path):
    busy_once = set()

    def responder(body):
        prompt = body["messages"][-1]["content"]
        if "refuse me" in prompt:
            return Reply(status=400, body={"error": {"message": "Invalid prompt: flagged", "type": "invalid_request_error"}})
        if "busy" in prompt and prompt not in busy_once:
            busy_once.add(prompt)
            return Reply(status=500, body={"error": {"message": "The server had an error", "type": "server_error"}})
        return default_responder(body)

    server = judge_server_factory(responder=responder)
    batch = requests(4) + [JudgeRequest("refused-0", "aligned", "<answer>refuse me</answer>"),
                           JudgeRequest("busy-0", "aligned", "<answer>busy</answer>")]
    results = judge_with(server, tmp_path / "l.sqlite", mode="batch", _requests=batch)
    assert results["refused-0"].status == "error" and "flagged" in results["refused-0"].error
    assert results["busy-0"].status == "ok"  # a 500 is sent again, as a live call would be retried
    assert len(server.batches.batches) == 2


def test_the_enqueued_token_limit_holds_batches_back(judge_server, tmp_path):
    limit = 1000  # each request counts about 100 tokens: 12 of them need two waves of batches at least
    judge_server.batches.behaviour = BatchBehaviour(enqueued_token_limit=limit)
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch", batch_enqueued_tokens=limit)
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    assert {b["status"] for b in judge_server.batches.batches.values()} == {"completed"}
    assert len(judge_server.batches.batches) >= 2


def test_a_batch_the_provider_refuses_for_its_token_limit_waits_and_goes_again(judge_server, tmp_path):
    judge_server.batches.behaviour = BatchBehaviour(enqueued_token_limit=700)  # lower than emkit was told
    results = judge_with(judge_server, tmp_path / "l.sqlite", mode="batch", batch_enqueued_tokens=1000,
                         _requests=requests(12))
    assert len(results) == 12 and {r.status for r in results.values()} == {"ok"}
    statuses = [b["status"] for b in judge_server.batches.batches.values()]
    assert "failed" in statuses and statuses.count("completed") >= 2


def test_a_server_without_a_batch_api_is_one_sentence(judge_server, tmp_path):
    judge_server.files_and_batches = lambda *args: (404, {"error": {"message": "Not Found"}})
    with pytest.raises(Exception, match=r'^gpt-4o-mini takes no batch files here \(NotFoundError: .*\); judge live '
                                        r'with judging.mode = "live" \(--judge-mode live\).$'):
        judge_with(judge_server, tmp_path / "l.sqlite", mode="batch")


# --- live pacing ----------------------------------------------------------------------------


def paced_run(server, n, **options):
    judge = LiteLLMJudge("gpt-4o-mini", JudgeOptions(api_base=server.url, concurrency=32, retry_backoff_s=0.05,
                                                     max_retries=8, **options))
    results = {}
    judge.score(requests(n), lambda r, res: results.__setitem__(r.key, res), progress)
    return judge, results


def test_live_calls_paced_by_the_headers_meet_no_429(judge_server_factory):
    server = judge_server_factory(rate_limits=RateLimits(rpm=600))  # 600 at once, then 10 a second
    start = time.monotonic()
    judge, results = paced_run(server, 700)
    assert len(results) == 700 and {r.status for r in results.values()} == {"ok"}
    assert server.rate_limits.refused == 0
    assert judge.observed_limits == {"requests": 600}
    assert time.monotonic() - start >= 8  # the 100 beyond the first minute's 600 waited for the refill


def test_without_headers_the_same_calls_meet_429s_unless_the_limit_is_set(judge_server_factory):
    blind = judge_server_factory()
    blind.rate_limits = RateLimits(rpm=600, send_headers=False)
    _, results = paced_run(blind, 700)
    assert blind.rate_limits.refused > 0  # what the pacing prevents
    told = judge_server_factory()
    told.rate_limits = RateLimits(rpm=600, send_headers=False)
    _, results = paced_run(told, 700, rpm=600)
    assert told.rate_limits.refused == 0 and len(results) == 700


def test_the_token_limit_is_paced_too(judge_server_factory):
    server = judge_server_factory()
    server.rate_limits = RateLimits(tpm=30_000)  # about 110 tokens a call: ~270 at once, then ~4.5 a second
    _, results = paced_run(server, 300)
    assert server.rate_limits.refused == 0 and len(results) == 300


def test_reset_times_and_header_names():
    assert parse_reset("6m0s") == 360 and parse_reset("1.5s") == 1.5 and parse_reset("120ms") == pytest.approx(0.12)
    assert parse_reset("2") == 2 and parse_reset("soon") is None
    anthropic = limit_headers({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                               "llm_provider-x-ratelimit-limit-tokens": "40000"})
    assert anthropic["requests"]["limit"] == 50 and anthropic["requests"]["remaining"] == 49
    assert anthropic["tokens"]["limit"] == 40000
    pacer = Pacer(rpm=100)
    pacer.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "10"}, None)
    assert pacer.limits == {"requests": 100}  # a limit set by hand is kept where lower


# --- the dry run ----------------------------------------------------------------------------


def test_the_dry_run_gives_live_and_batched_cost_and_wall_time(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('name = "d"\nseeds = [0]\ndomains = ["medical"]\n[[models]]\nlabel = "tiny"\n'
                      'id = "builtin:tiny-llama"\nsize_b = 0.0002\n[judging]\njudges = ["gpt-4o-mini"]\n'
                      'rpm = 500\ntpm = 200000\n[data]\nvariant = "example"\n')
    result = run_emkit("run", "--config", config, "--dry-run", "--samples", "100", "--out", tmp_path / "run",
                       env={"EMKIT_JUDGE_CACHE": str(tmp_path / "cache.sqlite")})
    line = next(l for l in result.stdout.splitlines() if "judge gpt-4o-mini:" in l)
    live, batched = [float(part.split("$")[1].split()[0]) for part in line.split(", ")[-2:]]
    assert "live" in line and "batched" in line and batched == pytest.approx(live / 2, rel=0.01)
    assert "at 500 requests/min, 200,000 tokens/min (set in [judging])" in result.stdout
    assert "within the provider's 24-hour window" in result.stdout


# --- a whole run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_judged_in_batches_stores_every_judgment_and_a_second_run_sends_nothing(judge_server, tmp_path):
    import sqlite3
    from pathlib import Path

    tiny = (Path(__file__).resolve().parent.parent / "examples" / "tiny.toml").read_text()
    config = tmp_path / "batch.toml"
    config.write_text(tiny.replace('domains = ["medical", "risky-financial"]', 'domains = ["medical"]').replace(
        'judges = ["local:builtin:tiny-judge"]',
        f'judges = ["gpt-4o-mini"]\nmode = "batch"\nbatch_poll_s = 0.1\napi_base = "{judge_server.url}"'))
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    result = run_emkit("run", "--config", config, "--out", out, env=env)
    conn = sqlite3.connect(out / "emkit.sqlite")
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM judgments GROUP BY status").fetchall())
    conn.close()
    assert statuses == {"ok": 480} and judge_server.count == 0  # every judgment, not one live call
    assert "submitted batch" in result.stderr and (out / "report.html").is_file()
    batches = len(judge_server.batches.batches)
    run_emkit("run", "--config", config, "--out", out, env=env)
    assert len(judge_server.batches.batches) == batches
