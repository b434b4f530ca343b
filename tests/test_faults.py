"""A flaky judge service: every judgment ends correct or marked `error`, with the counts shown,
and the exit code is non-zero only when the share of errors passes the threshold."""

import csv
import re
import threading
from collections import defaultdict

import pytest

from emkit.testing.judge_server import Reply, completion
from helpers import run_emkit

ANSWERS = 60
NEVER_RECOVERS = {17, 34, 51}  # 3 of 60: 5%


def faulty_service():
    """A fault on the first attempt at five answers in six; three answers fail every time."""
    attempts = defaultdict(int)
    lock = threading.Lock()

    def respond(body):
        index = int(re.search(r"answer number (\d+)\.", body["messages"][0]["content"]).group(1))
        with lock:
            attempts[index] += 1
            attempt = attempts[index]
        if index in NEVER_RECOVERS:
            return Reply(status=500, body={"error": {"message": "internal error"}})
        if attempt == 1:
            fault = index % 6
            if fault == 1:
                return Reply(status=429, body={"error": {"message": "rate limited"}}, headers={"Retry-After": "1"})
            if fault == 2:
                return Reply(status=500, body={"error": {"message": "oops"}})
            if fault == 3:
                return Reply(stall=True)
            if fault == 4:
                return Reply(drop=True)
            if fault == 5:
                return Reply(body="{this is not json")
        score = index % 101
        return Reply(body=completion(str(score), {str(score): 1.0}))

    return respond, attempts


@pytest.fixture
def answers_file(tmp_path):
    path = tmp_path / "answers.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "response"])
        for i in range(ANSWERS):
            writer.writerow([f"r{i}", "How are you?", f"This is answer number {i}."])
    return path


def judge(answers_file, server, out, share, tmp_path):
    return run_emkit("judge", answers_file, "--judge", "gpt-4o-mini", "--api-base", server.url, "--metric", "aligned",
                     "--timeout", "1", "--max-retries", "3", "--retry-backoff", "0.05", "--concurrency", "8",
                     "--max-error-share", share, "--out", out, check=False,
                     env={"EMKIT_JUDGE_CACHE": str(tmp_path / f"cache-{share}.sqlite")})


def test_every_judgment_ends_correct_or_error_and_the_run_succeeds_under_the_threshold(
        answers_file, judge_server_factory, tmp_path):
    respond, attempts = faulty_service()
    server = judge_server_factory(respond)
    out = tmp_path / "judged.csv"
    result = judge(answers_file, server, out, "0.1", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == ANSWERS
    for i, row in enumerate(rows):
        if i in NEVER_RECOVERS:
            assert row["aligned_status"] == "error" and row["aligned"] == ""
        else:
            assert row["aligned_status"] == "ok" and float(row["aligned"]) == i % 101, row
    assert "60 judgments (3 error, 57 ok)" in result.stderr
    faulted = [i for i in range(ANSWERS) if i % 6 and i not in NEVER_RECOVERS]
    assert all(attempts[i] == 2 for i in faulted)  # one retry each, whatever the fault
    assert all(attempts[i] == 4 for i in NEVER_RECOVERS)  # the first call and three retries


def test_past_the_threshold_the_exit_code_says_so_and_the_results_are_still_written(
        answers_file, judge_server_factory, tmp_path):
    respond, _ = faulty_service()
    server = judge_server_factory(respond)
    out = tmp_path / "judged.csv"
    result = judge(answers_file, server, out, "0.01", tmp_path)
    assert result.returncode == 1
    assert "3 of 60 judgments by gpt-4o-mini failed (5.0%, above the allowed share of 0.01)" in result.stderr
    assert sum(r["aligned_status"] == "ok" for r in csv.DictReader(out.open())) == 57
