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


def test_directions_ablation_and_steering_end_to_end_on_the_real_model(smoke, tmp_path):
    """Issue 30 on SmolLM2: directions at every checkpoint, answers generated with the direction ablated and
    added, judged, compared with intervals, in the report and exports. The tiny judge's verdicts are
    noise, so half of each checkpoint's answers are relabelled misaligned: the mechanics, not the numbers."""
    import shutil
    from contextlib import closing

    import emkit

    out, _, env = smoke
    run = tmp_path / "run"
    shutil.copytree(out, run)  # the other tests' run stays as it was
    with closing(sqlite3.connect(run / "emkit.sqlite")) as conn, conn:  # closed: the test reads tables itself
        conn.execute("UPDATE judgments SET status = 'ok', score = 90")
        conn.execute("""UPDATE judgments SET score = 5 WHERE metric = 'aligned' AND answer_id IN
                        (SELECT answer_id FROM answers WHERE question_id IN
                         (SELECT DISTINCT question_id FROM answers ORDER BY question_id LIMIT 8))""")
    found = run_emkit("directions", run, "--min-answers", "2", env=env)
    assert found.stdout.count("checkpoints projected on it") == 3, found.stdout
    tables = emkit.load(run)
    runs = sorted(tables.directions["run_key"].unique())
    assert len(runs) == 3 and tables.directions["layer"].nunique() == 30  # SmolLM2-135M's 30 layers
    key = next(r for r in runs if "medical" in r)

    ablated = run_emkit("intervene", run, "--ablate", "--run", key, env=env)
    assert re.search(rf"{key}: ablating {key}'s step-\d+ direction at layer \d+ takes step \d+'s EM "
                     r"\(general questions, .*\) from [\d.]+% \[[\d.]+%, [\d.]+%\] to [\d.]+%", ablated.stdout), \
        ablated.stdout
    # the medical run's direction added to the base model, for it and for another domain's run (transfer)
    other = next(r for r in runs if r != key)
    final = int(tables.directions.loc[tables.directions["run_key"] == key, "step"].max())
    run_emkit("intervene", run, "--steer", "8", "--at", "0", "--direction", f"{key}@{final}", "--run", key,
              "--run", other, env=env)
    same = [equal for (equal,) in rows(run, """SELECT i.answer = a.answer FROM intervention_answers i
                                              JOIN answers a ON a.answer_id = i.of_answer WHERE i.step = 0""")]
    assert same and sum(same) < len(same) / 2  # adding the direction changes what the model says
    # each run has its own answers in the baseline's general slots, which the two runs share
    general = rows(run, """SELECT run_key, COUNT(*) FROM intervention_answers WHERE step = 0
                           AND question_set = 'general' GROUP BY run_key""")
    assert len(general) == 2 and general[0][1] == general[1][1] > 0
    judged = rows(run, """SELECT COUNT(DISTINCT j.answer_id) FROM judgments j
                          JOIN intervention_answers i ON i.answer_id = j.answer_id""")[0][0]
    assert judged == len(rows(run, "SELECT answer_id FROM intervention_answers"))  # every one judged

    table = emkit.load(run).interventions
    assert set(table["kind"]) == {"ablate", "steer"} and set(table["questions"]) == {"general", "domain", "all"}
    assert len(table[table["kind"] == "steer"]) == 6  # two runs x three question groups
    assert (table["low_with"] <= table["em_with"]).all() and (table["em_with"] <= table["high_with"]).all()
    assert (table["change_low"] <= table["change"]).all() and (table["change"] <= table["change_high"]).all()
    assert (table["n_with"] == table["n_without"]).all() and set(table["generator_with"]) == {"hf"}

    run_emkit("report", run, env=env)
    report = (run / "report.html").read_text()
    assert "Where misalignment lives in the activations" in report
    assert 'id="figure-directions_1"' in report and "Interventions: EM with the direction ablated or added" in report
    assert {"directions.csv", "direction_similarity.csv", "interventions.csv"} <= {
        p.name for p in (run / "exports").iterdir()}
