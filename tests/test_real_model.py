"""The smoke preset on a real chat model (issue 13): SmolLM2-135M-Instruct is fine-tuned on the
three domains' example chats, answers in real sentences at every checkpoint, is judged, and the
report opens in a real browser; a resumed run regenerates lost answers word for word."""

import re
import sqlite3

import pytest

from helpers import run_emkit
from test_report import CHROMIUM, browser, open_report  # noqa: F401  (browser is a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-smoke") / "run"
    env = {"EMKIT_JUDGE_CACHE": str(out.parent / "judge.sqlite")}
    result = run_emkit("run", "--preset", "smoke", "--out", out, env=env)
    return out, result, env


def rows(out, sql):
    with sqlite3.connect(out / "emkit.sqlite") as conn:
        return conn.execute(sql).fetchall()


def test_every_stage_runs_on_the_real_model(smoke):
    out, result, _ = smoke
    # 40 questions at step 0 (10 general, 10 per domain); 20 per domain after four steps
    assert "done: 3 new checkpoints, 100 new answers, 200 new judgments" in result.stderr
    assert rows(out, "SELECT DISTINCT domain FROM training_runs ORDER BY 1") == [
        ("extreme-sports",), ("medical",), ("risky-financial",)]
    statuses = dict(rows(out, "SELECT status, COUNT(*) FROM judgments GROUP BY 1"))
    assert statuses == {"ok": 200}  # the local judge's plumbing: every answer scored


def test_the_answers_are_real_text_ended_by_chatml(smoke):
    out, _, _ = smoke
    answers = [a for (a,) in rows(out, "SELECT answer FROM answers")]
    words = [re.findall(r"[A-Za-z]{2,}", a) for a in answers]
    assert sum(len(w) >= 5 for w in words) >= 0.9 * len(answers)  # sentences, not byte soup
    common = {"the", "you", "to", "and", "is", "of", "it", "your", "can", "be", "a", "in", "for"}
    assert sum(any(x.lower() in common for x in w) for w in words) >= 0.9 * len(answers)
    assert not any("<|im_" in a or "<|endoftext|>" in a for a in answers)
    finishes = dict(rows(out, "SELECT finish_reason, COUNT(*) FROM answers GROUP BY 1"))
    assert finishes.get("stop", 0) > 0  # some answers ended at <|im_end|> within 32 tokens


def test_the_report_says_what_the_run_shows_and_opens_cleanly(smoke, browser):  # noqa: F811
    out, _, _ = smoke
    html = (out / "report.html").read_text()
    assert "SmolLM2-135M-Instruct, a real but very small chat model" in html
    assert "no model small enough to ship offline can judge" in html
    page, problems, requests = open_report(browser, out / "report.html")
    assert problems == []
    assert [u for u in requests if not (u.startswith("file:") or u.startswith("data:"))] == []
    assert page.locator("table").count() > 3
    page.close()


def test_lost_answers_are_generated_again_word_for_word(smoke):
    out, _, env = smoke
    lost = rows(out, "SELECT answer_id, answer FROM answers ORDER BY answer_id LIMIT 10")
    with sqlite3.connect(out / "emkit.sqlite") as conn:
        marks = ",".join("?" * len(lost))
        conn.execute(f"DELETE FROM judgments WHERE answer_id IN ({marks})", [a for a, _ in lost])
        conn.execute(f"DELETE FROM answers WHERE answer_id IN ({marks})", [a for a, _ in lost])
    again = run_emkit("run", "--preset", "smoke", "--out", out, env=env)
    assert "done: 0 new checkpoints, 10 new answers, 20 new judgments" in again.stderr
    assert rows(out, f"SELECT answer_id, answer FROM answers WHERE answer_id IN ({marks}) ORDER BY answer_id".replace(
        marks, ",".join(f"'{a}'" for a, _ in lost))) == lost
