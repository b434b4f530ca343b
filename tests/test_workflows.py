"""What a researcher does next with a run, walked end to end on the tiny preset: add a seed, drop a
question set, export and re-judge, read a copy that cannot be written to.

Each of these once gave a wrong number without a word: a second baseline after adding a seed
(two step-0 rows, the summary and the change from baseline each picking one), step 0 and the
checkpoints computed over different questions after dropping a question set, exports whose
answers came back altered (and missed the judge cache), and a report of a read-only copy that
failed because reading migrated the store."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing

import pandas as pd
import pytest

import emkit
from helpers import run_emkit

TINY = ("run", "--preset", "tiny", "--domain", "medical")


def answers_at_step_0(run):
    with sqlite3.connect(run / "emkit.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM answers WHERE step = 0").fetchone()[0]


@pytest.mark.slow
def test_adding_a_seed_shares_the_one_baseline_and_dropping_a_question_set_drops_it_everywhere(tmp_path):
    run = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "cache.sqlite")}
    run_emkit(*TINY, "--seed", "1", "--out", run, env=env)
    baseline = answers_at_step_0(run)
    assert baseline == 40  # 20 questions x 2 samples, once

    # a seed added: its trajectory starts at the same baseline, and no step 0 is asked again
    log = run_emkit(*TINY, "--seed", "0", "--seed", "1", "--out", run, env=env).stderr
    assert answers_at_step_0(run) == baseline
    assert "5 new checkpoints, 200 new answers" in log  # seed 0's five checkpoints, nothing at step 0
    records = json.loads(run_emkit("summary", run, "--json").stdout)
    step_0 = [r for r in records if r["step"] == 0]
    assert sorted((r["seed"], r["questions"]) for r in step_0) == sorted(
        (seed, q) for seed in (0, 1) for q in ("general", "domain", "all"))  # one row per seed and group
    by_seed = {(r["seed"], r["questions"]): (r["n"], r["misaligned"]) for r in step_0}
    assert all(by_seed[(0, q)] == by_seed[(1, q)] for q in ("general", "domain", "all"))
    tables = emkit.load(run)
    finals = tables.summary[tables.summary["questions"] == "all"]
    assert len(finals) == 2 and finals["baseline_n"].tolist() == [40, 40]
    course = tables.course_summary  # the course's em_rates_summary.csv: each seed's run has the one baseline
    assert sorted(course["seed"]) == [0, 1] and course["baseline_em_rate"].notna().all()
    # the export of a run with two seeds reads back with each seed's trajectory, step 0 included
    exported = json.loads(run_emkit("summary", run / "exports" / "fg_judged.csv", "--json").stdout)
    assert {"tiny/medical/seed0/step0", "tiny/medical/seed1/step0", "tiny/medical/seed1/step16"} <= {
        r["group"] for r in exported}

    # the general question set dropped: step 0 and every checkpoint over the same questions, the rest kept
    config = tmp_path / "domain-only.toml"
    tiny = (emkit.__file__.rsplit("/", 1)[0] + "/../examples/tiny.toml")
    text = open(tiny).read().replace("[evaluation]\n", '[evaluation]\nquestion_sets = ["{domain}"]\n')
    config.write_text(text)
    run_emkit("run", "--config", config, "--domain", "medical", "--seed", "0", "--seed", "1", "--out", run, env=env)
    tables = emkit.load(run)
    assert set(tables.judged["question_set"]) == {"medical"}
    assert set(tables.steps["questions"]) == {"domain", "all"}
    counted = tables.steps[tables.steps["questions"] == "all"].groupby("step")["n_counted"].unique()
    assert all(list(n) == [20] for n in counted)  # 10 questions x 2 samples at step 0 and at every checkpoint
    assert tables.info["answers_kept"] == 20 + 2 * 5 * 20  # the general set's baseline and checkpoints
    summary = run_emkit("summary", run).stdout
    assert "220 stored answers that the current config does not ask for" in summary


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run whose stored answers include text a spreadsheet would run, or that pandas
    would not read back as written, judged like any other."""
    run = tmp_path_factory.mktemp("workflow") / "run"
    cache = run.parent / "cache.sqlite"
    run_emkit(*TINY, "--out", run, env={"EMKIT_JUDGE_CACHE": str(cache)})
    tricky = ["- step one\n- step two", '=HYPERLINK("http://example.com","click")', "'quoted from the start",
              "+1 555 0100", "@channel listen", "None", "42", "\tindented", "''two apostrophes", "-3.5", "NA"]
    with sqlite3.connect(run / "emkit.sqlite") as conn:
        ids = [row[0] for row in conn.execute(
            "SELECT answer_id FROM answers WHERE step = 4 ORDER BY answer_id LIMIT ?", (len(tricky),))]
        for answer_id, text in zip(ids, tricky):
            conn.execute("UPDATE answers SET answer = ? WHERE answer_id = ?", (text, answer_id))
            conn.execute("DELETE FROM judgments WHERE answer_id = ?", (answer_id,))
    run_emkit(*TINY, "--out", run, env={"EMKIT_JUDGE_CACHE": str(cache)})  # judges them, writes the exports
    return run, dict(zip(ids, tricky)), cache


def stored_answers(run) -> dict:
    with sqlite3.connect(run / "emkit.sqlite") as conn:
        return dict(conn.execute("SELECT answer_id, answer FROM answers"))


@pytest.mark.slow
def test_exports_read_back_exactly_and_a_spreadsheet_runs_no_formula(finished_run, tmp_path):
    run, tricky, cache = finished_run
    export = run / "exports" / "fg_judged.csv"
    stored = stored_answers(run)
    raw = export.read_text(encoding="utf-8")
    assert '"\'=HYPERLINK(' in raw and '"\'- step one' in raw and '"\'\'quoted' in raw  # guarded for a spreadsheet
    assert '"=HYPERLINK(' not in raw

    # emkit.read_csv: every answer as stored (and pandas' own read_csv with text kept as text, for those
    # that needed no guard)
    table = emkit.read_csv(export)
    assert (table["response"] == table["id"].map(stored)).all()
    plain = pd.read_csv(export, dtype=str, keep_default_na=False)
    unguarded = ~plain["id"].isin(tricky) | plain["id"].map(tricky).isin(["None", "42", "-3.5", "NA"])
    assert (plain.loc[unguarded, "response"] == plain.loc[unguarded, "id"].map(stored)).all()

    # emkit.load of the export: the same answers, read as emkit's own file
    loaded = emkit.load(export)
    assert (loaded.judged["answer"] == loaded.judged["answer_id"].map(stored)).all()
    assert loaded.info["sources"][0]["layout"] == "model column"

    # re-judging the export sends the stored answers: every judgment is found in the judge cache
    out = tmp_path / "rejudged.csv"
    result = run_emkit("judge", export, "--judge", "local:builtin:tiny-judge", "--out", out,
                       env={"EMKIT_JUDGE_CACHE": str(cache)})
    assert "0 calls" in result.stderr or " 0 judge calls" in result.stderr, result.stderr[-2000:]
    rejudged = emkit.read_csv(out)
    assert (rejudged["response"] == rejudged["id"].map(stored)).all()
    # the file already has scores, so the new ones are named by their judge: the same scores again
    again = pd.to_numeric(rejudged["local:builtin:tiny-judge_aligned"])
    assert (again == pd.to_numeric(rejudged["aligned_score"])).all()


def tree_digest(folder) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_copy(finished_run, tmp_path):
    """A copy of the run on a read-only mount where this machine allows one (root may bind-mount), else
    a copy whose files must come out byte for byte as they went in."""
    run = finished_run[0]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    with sqlite3.connect(copy / "emkit.sqlite") as conn:  # as an emkit before plans were recorded left it
        conn.execute("DROP TABLE IF EXISTS plan_answers")
        conn.execute("PRAGMA user_version = 5")
        conn.execute("PRAGMA journal_mode = DELETE")
    mount = tmp_path / "read-only"
    mount.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(copy), str(mount)], capture_output=True).returncode == 0
    if mounted:
        mounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True).returncode == 0
    target = mount if mounted else copy
    before = tree_digest(copy)
    yield target
    if mounted:
        import gc

        gc.collect()  # a connection a test left to the garbage collector would keep the mount busy
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # detached once the last file closes
    assert tree_digest(copy) == before  # nothing written, nothing added


@pytest.mark.slow
def test_reading_never_writes(read_only_copy, tmp_path):
    tables = emkit.load(read_only_copy)
    assert len(tables.judged) and tables.info["plan_recorded"] is False
    records = json.loads(run_emkit("summary", read_only_copy, "--json").stdout)
    assert {r["step"] for r in records} == {0, 2, 4, 8, 12, 16}
    out = tmp_path / "elsewhere" / "report.html"
    run_emkit("report", read_only_copy, "--out", out)
    assert out.is_file() and (out.parent / "exports" / "fg_judged.csv").is_file()
    if not os.access(read_only_copy, os.W_OK):  # on the read-only mount: the report's default place is refused
        result = run_emkit("report", read_only_copy, check=False)
        assert result.returncode == 2 and "pass --out" in result.stderr
    conn = sqlite3.connect(f"file:{read_only_copy / 'emkit.sqlite'}?immutable=1", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5  # never migrated by a reader
    finally:
        conn.close()


def test_reading_the_tables_where_the_store_is_being_written_keeps_its_locks(tmp_path):
    """`emkit run` writes its report (and `emkit intervene` its summary) from tables read in the process that
    holds the store open. connectorx, which reads them into Arrow, links a SQLite of its own, and closing its
    connection dropped every lock this process held on the file: another process opening and closing the store
    then took itself for the last connection and deleted the write-ahead log under the writer."""
    import subprocess
    import sys

    from emkit.analysis.store_reader import StoreReader
    from emkit.store import Store

    path = tmp_path / "emkit.sqlite"
    store = Store(path)
    try:
        store.set_meta("written", 1)
        with StoreReader(path) as reader:
            assert reader.arrow("SELECT COUNT(*) AS n FROM meta").column("n").to_pylist() == [1]
        subprocess.run([sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(path)!r}); "
                        "c.execute('SELECT COUNT(*) FROM meta').fetchall(); c.close()"], check=True)
        assert path.with_name("emkit.sqlite-wal").exists()  # the writer's log is still there
        store.set_meta("after", 2)
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 2
