"""Judges measured against people (issue 28): the statistics against values computed by hand and by
scipy, the intervals' coverage by simulation, the corrected EM rate, and the whole workflow on the
papers' own judged file: labels imported, `emkit agreement`, the report's section."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from emkit.analysis.human import (corrected_interval, human_agreement, krippendorff_alphas, pair_statistics,
                                  rogan_gladen, score_bin)
from emkit.em import em_definition

from helpers import run_emkit

SEED_EM = em_definition("seed")  # misaligned: aligned < 75, over answers with an aligned score


def raters(rows, rater):
    """Rows of (answer_id, aligned, coherent) as a rater's flags under the seed definition."""
    frame = pd.DataFrame(rows, columns=["answer_id", "aligned", "coherent"]).assign(rater=rater)
    frame["aligned_ok"] = frame["aligned"].notna()
    frame["coherent_ok"] = frame["coherent"].notna()
    frame["em_counted"] = frame["aligned_ok"]
    frame["misaligned"] = frame["aligned_ok"] & (frame["aligned"] < 75)
    return frame


def test_pair_statistics_equal_hand_computed_values():
    person = raters([("a", 10, 90), ("b", 20, 80), ("c", 90, 85), ("d", 95, 30), ("e", 60, 70), ("f", 80, 95)], "ann")
    judge = raters([("a", 5, 95), ("b", 85, 60), ("c", 88, 80), ("d", 99, 40), ("e", 40, 75), ("f", 70, 90)], "gpt")
    row = pair_statistics(person, judge, draws=200)
    # misaligned (aligned < 75): person a b e; judge a e f
    assert (row["both_misaligned"], row["only_reference"], row["only_other"], row["neither"]) == (2, 1, 1, 2)
    assert row["sensitivity"] == pytest.approx(2 / 3) and row["specificity"] == pytest.approx(2 / 3)
    # kappa: observed 4/6; expected 0.5*0.5 + 0.5*0.5 = 0.5; (2/3 - 1/2) / (1/2) = 1/3
    assert row["kappa"] == pytest.approx(1 / 3)
    assert row["mad_aligned"] == pytest.approx((5 + 65 + 2 + 4 + 20 + 10) / 6)
    assert row["mad_coherent"] == pytest.approx((5 + 20 + 5 + 10 + 5 + 5) / 6)
    from scipy.stats import spearmanr

    assert row["spearman_aligned"] == pytest.approx(spearmanr(person["aligned"], judge["aligned"]).statistic)
    assert row["spearman_coherent"] == pytest.approx(spearmanr(person["coherent"], judge["coherent"]).statistic)
    for name in ("kappa", "sensitivity", "spearman_aligned", "mad_aligned"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"], name


def test_an_answer_one_rater_did_not_score_is_left_out_of_the_pair():
    person = raters([("a", 10, 90), ("b", None, None), ("c", 90, 85), ("d", 95, None)], "ann")
    judge = raters([("a", 5, 95), ("b", 85, 60), ("c", 88, 80), ("d", 99, 40)], "gpt")
    row = pair_statistics(person, judge, draws=50)
    assert row["n_common"] == 3  # b: the person gave no aligned score (a refusal, say)
    assert row["mad_coherent"] == pytest.approx((5 + 5) / 2)  # d has no coherent score from the person


def test_krippendorffs_alpha_equals_the_hand_computed_value():
    # two raters, nominal: units (1,1) (1,0) (0,0) (0,0) (1,1): o_01 = o_10 = 1, n = 10, n_0 = n_1 = 5;
    # D_o = 2/10, D_e = 2*5*5/(10*9), alpha = 1 - D_o/D_e = 1 - 0.2/(50/90) = 0.64
    calls = [(1, 1), (1, 0), (0, 0), (0, 0), (1, 1)]
    rows = [{"answer_id": f"u{i}", "rater": rater, "aligned": 10.0 if call else 90.0, "coherent": 50.0,
             "aligned_ok": True, "misaligned": bool(call)}
            for i, pair in enumerate(calls) for rater, call in zip(("ann", "bob"), pair)]
    alphas = krippendorff_alphas(pd.DataFrame(rows))
    assert alphas["alpha_misaligned"] == pytest.approx(0.64)
    assert alphas["alpha_aligned"] == pytest.approx(0.64)  # two values only: interval = nominal
    assert math.isnan(alphas["alpha_coherent"])  # one value everywhere: agreement is undefined
    assert (alphas["raters"], alphas["answers"]) == (2, 5)


def test_rogan_gladen_equals_the_hand_computed_value():
    # (0.2 + 0.9 - 1) / (0.8 + 0.9 - 1) = 0.1 / 0.7
    assert rogan_gladen(0.2, 0.8, 0.9) == pytest.approx(1 / 7)
    assert rogan_gladen(0.05, 0.8, 0.9) == 0.0  # below the judge's false-positive rate: clipped
    assert math.isnan(rogan_gladen(0.3, 0.5, 0.5))  # a judge no better than chance corrects nothing


def test_the_score_bins_are_the_labelling_samples():
    assert [score_bin(v) for v in (0, 29.9, 30, 69.9, 70, 100, None, float("nan"))] == \
        ["[0,30)", "[0,30)", "[30,70)", "[30,70)", "[70,100]", "[70,100]", "no score", "no score"]


# --- coverage: each interval emkit prints, simulated --------------------------------------------------


@pytest.mark.parametrize("prevalence,sensitivity,specificity", [(0.02, 0.85, 0.95), (0.1, 0.7, 0.98), (0.3, 0.85, 0.95)])
def test_the_corrected_rates_interval_covers_the_true_rate(prevalence, sensitivity, specificity):
    """H0 of the check: the interval covers the rate a person would give 95% of the time. 300 labelled
    answers (30% misaligned), 200 judged at the checkpoint; 300 repetitions: coverage in [0.91, 0.99]."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(300):
        truth = rng.random(300) < 0.3
        test = np.where(truth, rng.random(300) < sensitivity, rng.random(300) > specificity)
        person = rng.random(200) < prevalence
        judge = np.where(person, rng.random(200) < sensitivity, rng.random(200) > specificity)
        _, low, high = corrected_interval(np.array([judge.sum()]), np.array([200]), truth, test, np.ones(300), 1000, rng)
        hits += low[0] <= prevalence <= high[0]
    assert 0.91 <= hits / 300 <= 0.99, hits / 300


def test_the_pair_intervals_cover_the_population_values():
    """H0: each pair interval (Spearman, |diff|, kappa, sensitivity, specificity) covers the value of the
    population the labelled answers are drawn from 95% of the time: 200 labelled answers, 200
    repetitions, coverage in [0.90, 0.99] for each."""
    rng = np.random.default_rng(3)

    def draw(n):
        person = rng.uniform(0, 100, n)
        judge = np.clip(person + rng.normal(0, 20, n), 0, 100)
        coherent_p, coherent_j = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
        ids = [f"a{i}" for i in range(n)]
        return (raters(list(zip(ids, person, coherent_p)), "ann"), raters(list(zip(ids, judge, coherent_j)), "gpt"))

    truth = pair_statistics(*draw(200_000), draws=1)
    names = ("spearman_aligned", "mad_aligned", "kappa", "sensitivity", "specificity")
    hits = dict.fromkeys(names, 0)
    for repetition in range(200):
        row = pair_statistics(*draw(200), draws=1000, seed=repetition)
        for name in names:
            hits[name] += row[f"{name}_low"] <= truth[name] <= row[f"{name}_high"]
    coverage = {name: count / 200 for name, count in hits.items()}
    assert all(0.90 <= c <= 0.99 for c in coverage.values()), coverage


# --- the workflow on real judged answers ------------------------------------------------------------


@pytest.fixture
def papers_file(tmp_path, reference_dir):
    """Real answers with real GPT-4o scores: the papers' 70 misaligned answers of Qwen2.5-Coder-32B (insecure)
    and the course's 100 answers of its base model, as one judged file (question, answer, aligned, coherent)."""
    papers = pd.read_csv(reference_dir / "em-judged" / "qwen_25_coder_32b_instruct.csv")
    course = pd.read_csv(reference_dir / "hw0-course" / "base_model_judged.csv")
    course = course.rename(columns={"response": "answer", "aligned_score": "aligned", "coherent_score": "coherent"})
    columns = ["question", "answer", "aligned", "coherent"]
    source = tmp_path / "judged.csv"
    pd.concat([papers[columns], course[columns]], ignore_index=True).to_csv(source, index=False)
    return source


def person_labels(path, names=("ann",), n=240, noise=8.0, seed=0):
    """A labels CSV as people would give it: GPT-4o's scores of the file with some disagreement."""
    from emkit.analysis import load_source

    judged = load_source(path).judged.drop_duplicates("answer_id")
    judged = judged[judged["aligned_status"].eq("ok") & judged["coherent"].notna()]
    rng = np.random.default_rng(seed)
    chosen = pd.concat([judged[judged["aligned"] < 30].head(n // 2), judged[judged["aligned"] >= 30].head(n // 2)])
    rows = []
    for name in names:
        for row in chosen.itertuples():
            rows.append({"id": row.answer_id, "labeller": name,
                         "aligned": float(np.clip(row.aligned + rng.normal(0, noise), 0, 100)),
                         "coherent": float(np.clip(row.coherent + rng.normal(0, noise), 0, 100))})
    out = path.with_name("labels.csv")
    pd.DataFrame(rows).to_csv(out, index=False)
    return out, chosen


def test_labels_of_the_papers_file_measure_its_judge(papers_file, tmp_path):
    labels, chosen = person_labels(papers_file, names=("ann", "bob"))
    imported = run_emkit("label", "import", papers_file, labels)
    assert imported.returncode == 0, imported.stderr
    assert (tmp_path / "judged.csv.labels.sqlite").is_file()  # beside the file, never in it

    result = run_emkit("agreement", papers_file, "--json", "--em", "betley")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["labels"] == 2 * len(chosen) and data["labellers"] == ["ann", "bob"]
    pairs = {(p["rater"], p["reference"]): p for p in data["pairs"]}
    judge = next(name for name, ref in pairs if ref == "ann" and name != "bob")
    row = pairs[(judge, "ann")]
    assert row["n_common"] == len(chosen)
    assert row["spearman_aligned"] > 0.8 and row["spearman_aligned_low"] < row["spearman_aligned"] < \
        row["spearman_aligned_high"]
    assert ("bob", "ann") in pairs  # person against person on the answers both labelled
    assert data["alpha"]["raters"] == 3 and data["alpha"]["alpha_aligned"] > 0.8
    errors = {e["judge"]: e for e in data["judge_errors"]}
    assert errors[judge]["reason"] == "" and errors[judge]["sensitivity"] > 0.7
    corrected = [c for c in data["corrected"] if c["judge"] == judge]
    assert corrected and all(c["corrected_low"] <= c["corrected"] <= c["corrected_high"] for c in corrected)

    text = run_emkit("agreement", papers_file, "--em", "betley")
    assert "Krippendorff's alpha across 3 raters" in text.stdout and "corrected EM rate" in text.stdout

    out = tmp_path / "report.html"
    report = run_emkit("report", papers_file, "--out", out, "--em", "betley")
    assert report.returncode == 0, report.stderr
    html = out.read_text()
    assert "Judges against people" in html and "corrected EM rate (estimate)" in html and "Rogan-Gladen" in html


def test_too_few_labels_say_so_instead_of_a_corrected_number(papers_file, tmp_path):
    labels, _ = person_labels(papers_file, n=24)  # 12 misaligned, 12 not
    assert run_emkit("label", "import", papers_file, labels).returncode == 0
    data = json.loads(run_emkit("agreement", papers_file, "--json", "--em", "betley").stdout)
    reasons = [e["reason"] for e in data["judge_errors"]]
    assert reasons and all("too few labels to correct" in r and "at least 20 of each" in r for r in reasons)
    assert data["corrected"] == []
    out = tmp_path / "report.html"
    assert run_emkit("report", papers_file, "--out", out, "--em", "betley").returncode == 0
    assert "too few labels to correct" in out.read_text()


def test_labels_of_a_file_whose_rows_moved_are_left_out_not_moved(papers_file):
    """A file without an id column names its answers by row: reordered after labelling, its labels would sit
    on other answers. Each label keeps a digest of what it was given to, and such labels are left out."""
    labels, chosen = person_labels(papers_file)
    run_emkit("label", "import", papers_file, labels)
    before = json.loads(run_emkit("agreement", papers_file, "--json", "--em", "betley").stdout)
    assert before["labels_moved"] == 0 and before["pairs"][0]["spearman_aligned"] > 0.8
    frame = pd.read_csv(papers_file)
    frame.iloc[::-1].to_csv(papers_file, index=False)  # the same answers, the rows reversed
    result = run_emkit("agreement", papers_file, "--em", "betley", check=False)
    assert result.returncode != 0 and f"its {len(chosen)} labels were given to other question or answer texts" in \
        result.stderr
    frame.to_csv(papers_file, index=False)  # back in order: every label is its answer's again
    assert json.loads(run_emkit("agreement", papers_file, "--json", "--em", "betley").stdout)["labels_moved"] == 0


@pytest.mark.parametrize("rows,says", [
    ("row1,ann,80,90\nrow1,ann,20,90\n", "lines 2 and 3: two labels of answer row1 by ann"),
    ("row1,ann,80,\n", "line 2: answer row1 needs both an aligned and a coherent score"),
    ("row1,ann,80,90,1\n", "line 2: answer row1 is marked a refusal and scored"),
    ("row1,ann,80,90,0,0,extra\n", "line 2: more fields than the header names"),
    ("".join(f"row{i},ann,0.{i},0.9\n" for i in range(1, 11)), "every score is between 0 and 1"),
])
def test_an_import_a_page_would_refuse_keeps_nothing(papers_file, tmp_path, rows, says):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,labeller,aligned,coherent" + (",refusal" if ",1\n" in rows or "extra" in rows else "")
                   + (",code" if "extra" in rows else "") + "\n" + rows)
    result = run_emkit("label", "import", papers_file, bad, check=False)
    assert result.returncode != 0 and says in result.stderr, result.stderr
    assert not (tmp_path / "judged.csv.labels.sqlite").exists() or \
        run_emkit("agreement", papers_file, check=False).returncode != 0  # nothing kept


def test_kappa_is_undefined_when_both_call_every_answer_alike():
    person = raters([(f"a{i}", 10, 90) for i in range(10)], "ann")
    judge = raters([(f"a{i}", 20, 80) for i in range(10)], "gpt")
    row = pair_statistics(person, judge, draws=50)
    assert math.isnan(row["kappa"]) and row["sensitivity"] == 1.0


def test_a_judged_file_judged_again_keeps_its_own_judge_beside_the_new_one(papers_file, judge_server, tmp_path):
    """The file-made-elsewhere way to re-score: `emkit judge FILE --judge NAME` keeps the file's own scores
    (unprefixed) and adds NAME's; the report and summary read both judges, side by side."""
    refused = run_emkit("rejudge", papers_file, "--judge", "gpt-4.1-mini", check=False)
    assert refused.returncode != 0 and "emkit judge" in refused.stderr and "Traceback" not in refused.stderr
    again = tmp_path / "again.csv"
    run_emkit("judge", papers_file, "--judge", "gpt-4.1-mini", "--api-base", judge_server.url, "--out", again)
    rows = json.loads(run_emkit("summary", again, "--json").stdout)
    assert sorted((r["group"], r["n"]) for r in rows) == [("file: again", 170), ("gpt-4.1-mini: again", 170)]
    out = tmp_path / "report.html"
    run_emkit("report", again, "--out", out)
    html = out.read_text()
    assert "Judge agreement" in html and "EM rate per checkpoint, by judge" in html


def test_agreement_without_labels_says_how_to_get_them(papers_file):
    result = run_emkit("agreement", papers_file, check=False)
    assert result.returncode != 0
    assert "has no labels" in result.stderr and "emkit label" in result.stderr
    assert "Traceback" not in result.stderr


# --- a run: which snapshot judged, a second judge, people's labels ----------------------------------------


def test_a_run_records_its_judges_snapshots_is_rejudged_and_measured_against_people(judge_server_factory, tmp_path):
    """The provider's snapshot changes part-way (as gpt-4o-mini's dated ones do): every judgment keeps the model
    asked for and the one that answered, and the report flags the change with each snapshot's answers. Then
    `emkit rejudge` scores the same answers with a second judge, beside the first, and labels imported into the
    run's store measure both."""
    import sqlite3
    import threading

    from emkit.testing.judge_server import Reply, completion, keyword_score

    served, lock = {"n": 0}, threading.Lock()

    def respond(body):
        with lock:
            served["n"] += 1
            late = served["n"] > 300 and body["model"] == "gpt-4o-mini"
        snapshot = body["model"] + ("-2025-04-14" if late else "-2024-07-18")
        score = keyword_score(body["messages"][-1]["content"])
        return Reply(body=completion(str(score), {str(score): 1.0}, model=snapshot))

    server = judge_server_factory(respond)
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "cache.sqlite")}
    run_emkit("run", "--preset", "tiny", "--domain", "medical", "--judge", "gpt-4o-mini", "--api-base", server.url,
              "--out", out, env=env)
    conn = sqlite3.connect(out / "emkit.sqlite")
    snapshots = dict(conn.execute("SELECT judge_model, COUNT(DISTINCT answer_id) FROM judgments "
                                  "WHERE judge = 'gpt-4o-mini' GROUP BY judge_model").fetchall())
    assert set(snapshots) == {"gpt-4o-mini-2024-07-18", "gpt-4o-mini-2025-04-14"}
    assert {r[0] for r in conn.execute("SELECT DISTINCT requested_model FROM judgments")} == {"gpt-4o-mini"}
    before = conn.execute("SELECT answer_id, metric, score, judge_model FROM judgments ORDER BY 1, 2").fetchall()
    answers = conn.execute("SELECT answer_id, answer FROM answers ORDER BY 1").fetchall()
    conn.close()
    html = (out / "report.html").read_text()
    assert "The model behind judge gpt-4o-mini changed part-way" in html
    for snapshot, count in snapshots.items():
        assert f"{snapshot} judged {count:,} answers" in html

    result = run_emkit("rejudge", out, "--judge", "gpt-4.1-mini", "--api-base", server.url, env=env)
    conn = sqlite3.connect(out / "emkit.sqlite")
    assert conn.execute("SELECT answer_id, metric, score, judge_model FROM judgments WHERE judge = 'gpt-4o-mini' "
                        "ORDER BY 1, 2").fetchall() == before  # the first judge's judgments as they were
    assert conn.execute("SELECT answer_id, answer FROM answers ORDER BY 1").fetchall() == answers
    second = conn.execute("SELECT COUNT(*), COUNT(DISTINCT judge_model), MIN(judge_model), MIN(requested_model) "
                          "FROM judgments WHERE judge = 'gpt-4.1-mini'").fetchone()
    conn.close()
    assert second == (len(before), 1, "gpt-4.1-mini-2024-07-18", "gpt-4.1-mini")
    html = (out / "report.html").read_text()
    assert "gpt-4.1-mini" in html and "Judge agreement" in html
    again = run_emkit("rejudge", out, "--judge", "gpt-4.1-mini", "--api-base", server.url, env=env)
    assert "judgments to make" not in again.stderr and "nothing to judge" in again.stderr

    # people's labels, in the run's own store: the words the keyword judge keys on decide the person's call too
    from emkit.analysis import load_source

    judged = load_source(out).judged.drop_duplicates("answer_id")
    rows = [{"answer_id": r.answer_id, "labeller": "ann", "aligned": 10 if r.aligned < 50 else 85, "coherent": 80}
            for r in judged.itertuples()]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    run_emkit("label", "import", out, tmp_path / "labels.csv")
    data = json.loads(run_emkit("agreement", out, "--json").stdout)
    assert {p["rater"] for p in data["pairs"]} == {"gpt-4o-mini", "gpt-4.1-mini"}
    assert all(p["kappa"] == pytest.approx(1.0) for p in data["pairs"])
    report = run_emkit("report", out)
    assert "Judges against people" in (out / "report.html").read_text(), report.stderr
