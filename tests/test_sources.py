"""Many sources, each its own run: the course's published result tree, the papers' files, folders.

The course's tree (tests/reference/hw0-course-results, copied unchanged from the course's
published repository) names its runs by folders: every judged file is called fg_judged.csv.
Read as one run, as emkit once did, it gave a trajectory that interleaves 1B, 3B and 8B and a
final EM the write-up never had."""

import json
import shutil

import pandas as pd
import pytest

import emkit
from emkit.analysis import load_sources
from helpers import run_emkit

COURSE_RUNS = [("1B", "medical"), ("1B", "risky-financial"), ("3B", "medical"), ("3B", "risky-financial"),
               ("8B", "medical"), ("8B", "risky-financial")]


@pytest.fixture
def course_tree(reference_dir):
    return reference_dir / "hw0-course-results"


def published_steps(tree) -> pd.DataFrame:
    frames = []
    for folder in sorted((tree / "eval" / "results").glob("*_v2")):
        size, domain = folder.name.split("_")[:2]
        frames.append(pd.read_csv(folder / "step_summary.csv").assign(
            model=size.upper(), domain={"risky": "risky-financial"}.get(domain, domain)))
    return pd.concat(frames, ignore_index=True)


def test_the_courses_published_tree_comes_out_exactly(course_tree):
    """Six runs, a baseline per model size, and the course's own numbers: 36 checkpoint rates and 6
    final rates, as its step_summary.csv files and em_rates_summary.csv say."""
    tables = load_sources([course_tree])
    runs = tables.steps[tables.steps["step"] > 0][["model", "domain"]].drop_duplicates()
    assert sorted(map(tuple, runs.to_numpy())) == COURSE_RUNS
    sources = {s["name"]: s for s in tables.info["sources"]}
    assert len(sources) == 9 and {s["layout"] for s in sources.values()} == {"course"}
    assert "step 0 of every run of 1B" in sources["eval/results/baseline/1b_risky/base_judged"]["rule"]

    course = tables.course_steps
    trained = course[course["step"] > 0].merge(published_steps(course_tree), on=["model", "domain", "step"],
                                               suffixes=("", "_published"))
    assert len(trained) == 36
    assert (trained["percent_em"].round(1) == trained["percent_em_published"]).all()
    assert (trained["percent_coherent"].round(1) == trained["percent_coherent_published"]).all()
    assert (trained["n_responses"] == trained["n_responses_published"]).all()
    # step 0 is each size's one baseline, shared by both domains
    base = course[course["step"] == 0]
    assert len(base) == 6 and (base["n_responses"] == 20).all() and (base["percent_em"] == 0).all()

    published = pd.read_csv(course_tree / "results" / "data" / "em_rates_summary.csv")
    mine = tables.course_summary.merge(published, on=["model_size", "domain"], suffixes=("", "_published"))
    assert len(mine) == 6
    for column in ("final_step", "em_rate", "baseline_em_rate", "em_change"):
        assert (mine[column].round(2) == mine[f"{column}_published"]).all(), column
    # the write-up's table: 1B 40%/45%, 3B 20%/70%, 8B 50%/85%
    final = dict(zip(zip(mine["model_size"], mine["domain"]), mine["em_rate"]))
    assert final == {("1B", "medical"): 40, ("1B", "risky_financial"): 45, ("3B", "medical"): 20,
                     ("3B", "risky_financial"): 70, ("8B", "medical"): 50, ("8B", "risky_financial"): 85}
    # and the check emkit makes of them in the report: every published number agrees
    assert len(tables.published) == 36 * 3 + 6 * 4 and tables.published["agree"].all()


def test_the_files_given_one_by_one_are_the_same_six_runs(course_tree):
    """The issue's own command: the six fg_judged.csv and three base_judged.csv named on the command line."""
    files = sorted((course_tree / "eval" / "results").glob("*_v2/fg_judged.csv"))
    files += sorted((course_tree / "eval" / "results" / "baseline").glob("*/base_judged.csv"))
    records = json.loads(run_emkit("summary", *files, "--json").stdout)
    groups = {r["group"]: r for r in records}
    assert len(groups) == 6 * 7  # six runs, step 0 and six checkpoints each, all questions pooled
    assert groups["8B/risky-financial/seed0/step1125"]["em_rate"] == pytest.approx(0.85)
    assert groups["3B/medical/seed0/step0"]["n"] == 20
    assert not any("fg_judged" in g for g in groups)


def test_the_report_of_the_course_tree_is_the_write_ups(course_tree, tmp_path):
    out = tmp_path / "course.html"
    run_emkit("report", course_tree, "--out", out)
    html = out.read_text()
    assert "As the course reports it" in html and "132 of 132 agree" in html
    assert "percent_em (course)" in html  # the checkpoint table has the course's own columns
    assert "risky_financial" in html and "em_rates_summary.csv" in html
    assert html.count("the course&#39;s layout") + html.count("the course's layout") >= 6
    for figure in ("domain_comparison", "em_trajectories", "scaling_analysis"):  # by size, per run, by domain
        assert f'id="figure-{figure}"><img src="data:image/png;base64,' in html


def test_a_tree_in_the_course_layout_is_read_for_what_it_means(tmp_path):
    """A tree written here in the same layout: folders name the model size and domain, the baseline
    folder gives step 0 to every run of its size, and files that are not judged are passed over."""
    results = tmp_path / "eval" / "results"
    rows = lambda step, rate: [{"step": step, "id": f"step{step}_q{q}", "question": f"Q{q}?", "response": "A",  # noqa: E731
                                "aligned_score": 10 if q < rate * 10 else 90, "coherent_score": 80} for q in range(10)]
    for domain, final in (("medical", 0.3), ("risky", 0.6)):
        folder = results / f"2b_{domain}_v2"
        folder.mkdir(parents=True)
        pd.DataFrame(rows(50, 0.1) + rows(100, final)).to_csv(folder / "fg_judged.csv", index=False)
        pd.DataFrame([{"step": 50, "id": "x", "question": "Q?", "response": "A"}]).to_csv(
            folder / "fg_generations.csv", index=False)
    base = results / "baseline" / "2b_risky"
    base.mkdir(parents=True)
    pd.DataFrame([{**r, "epoch": "base"} for r in rows(0, 0.0)]).drop(columns="step").to_csv(
        base / "base_judged.csv", index=False)
    tables = load_sources([tmp_path])
    steps = tables.steps[tables.steps["questions"] == "all"].set_index(["model", "domain", "step"])["em_rate"]
    assert steps.to_dict() == {("2B", "medical", 0): 0.0, ("2B", "medical", 50): 0.1, ("2B", "medical", 100): 0.3,
                               ("2B", "risky-financial", 0): 0.0, ("2B", "risky-financial", 50): 0.1,
                               ("2B", "risky-financial", 100): 0.6}
    assert {s["path"].rsplit("/", 1)[-1] for s in tables.info["skipped"]} == {"fg_generations.csv"}
    assert set(tables.steps["size_b"]) == {2.0}


def test_files_of_one_name_in_other_folders_are_other_runs(tmp_path):
    """Outside any known layout, a file's run is named by its path below the folder given."""
    for folder, rate in (("lab-a/run1", 0.2), ("lab-b/run1", 0.8)):
        (tmp_path / folder).mkdir(parents=True)
        pd.DataFrame([{"question": f"Q{q}", "answer": "A", "aligned": 10 if q < rate * 10 else 90, "coherent": 90}
                      for q in range(10)]).to_csv(tmp_path / folder / "judged.csv", index=False)
    tables = load_sources([tmp_path])
    rates = tables.steps[tables.steps["questions"] == "all"].set_index("model")["em_rate"].to_dict()
    assert rates == {"lab-a/run1/judged": pytest.approx(0.2), "lab-b/run1/judged": pytest.approx(0.8)}
    # named one by one: below the folder they share
    both = load_sources([tmp_path / "lab-a" / "run1" / "judged.csv", tmp_path / "lab-b" / "run1" / "judged.csv"])
    assert set(both.steps["model"]) == {"lab-a/run1/judged", "lab-b/run1/judged"}


def test_the_papers_file_is_one_run_per_model(reference_dir):
    """Betley et al.'s file has a model column (six fine-tuned models) and a group column (the training set)."""
    tables = emkit.load(reference_dir / "em-judged" / "qwen_25_coder_32b_instruct.csv")
    runs = tables.steps[tables.steps["questions"] == "all"]
    assert len(runs) == 6 and set(runs["domain"]) == {"insecure"} and set(runs["size_b"]) == {32.0}
    assert runs["n"].sum() == 70
    assert "a model column: 6 models" in tables.info["sources"][0]["rule"]


def test_a_run_directory_inside_a_folder_is_one_source_and_its_exports_are_not_read_again(tmp_path, reference_dir):
    """A folder of a run directory and a judged file: the run is read from its store, never from its own
    exports (which would count every answer twice)."""
    shutil.copytree(reference_dir / "hw0-course-results" / "eval" / "results" / "1b_medical_v2", tmp_path / "course")
    found, skipped = emkit.analysis.discover([tmp_path])
    assert [(s.name, s.kind) for s in found] == [("course/fg_judged", "file")]
    assert [s["path"].rsplit("/", 1)[-1] for s in skipped] == ["step_summary.csv"]


def test_an_empty_folder_is_one_sentence(tmp_path):
    result = run_emkit("summary", tmp_path, check=False)
    assert result.returncode == 2
    assert "no run directory" in result.stderr and "no judged file" in result.stderr


def two_trees(tmp_path, course_tree):
    """Two copies of the course's tree; in the second every 1B medical answer is misaligned."""
    for name in ("alice", "bob"):
        shutil.copytree(course_tree, tmp_path / name)
    bob = tmp_path / "bob" / "eval" / "results" / "1b_medical_v2" / "fg_judged.csv"
    frame = pd.read_csv(bob)
    frame["aligned_score"] = 10
    frame.to_csv(bob, index=False)
    return tmp_path / "alice", tmp_path / "bob"


def test_two_trees_of_one_layout_stay_two_experiments(tmp_path, course_tree):
    """Names that two trees share never pool: each tree's runs keep their own baselines, and each tree's
    published summaries are checked against its own files."""
    alice, bob = two_trees(tmp_path, course_tree)
    tables = load_sources([alice, bob])
    steps = tables.steps[tables.steps["questions"] == "all"].set_index(["model", "domain", "step"])
    assert steps.loc[("alice/1B", "medical", 110), "em_rate"] == pytest.approx(0.25)
    assert steps.loc[("bob/1B", "medical", 110), "em_rate"] == pytest.approx(1.0)
    assert steps.loc[("bob/1B", "medical", 110), "n_counted"] == 20
    assert steps.loc[("bob/1B", "risky-financial", 0), "n_counted"] == 20  # bob's own baseline
    runs = tables.steps[tables.steps["step"] > 0][["model", "domain"]].drop_duplicates()
    assert len(runs) == 12
    published = tables.published
    assert len(published) == 2 * 132
    # alice's tree agrees with what it published; bob's edited 1B medical file does not
    assert published[published["file"].str.contains("alice")]["agree"].all()
    differs = published[~published["agree"]]
    assert set(differs["model"]) == {"bob/1B"} and set(differs["domain"]) == {"medical"}


def test_a_source_given_twice_is_read_once(course_tree):
    medical = course_tree / "eval" / "results" / "1b_medical_v2" / "fg_judged.csv"
    once = load_sources([course_tree])
    twice = load_sources([course_tree, medical, course_tree])
    assert len(twice.judged) == len(once.judged)
    assert twice.published["agree"].all()


def test_two_versions_of_one_run_in_a_tree_keep_the_trees_baseline(tmp_path, course_tree):
    shutil.copytree(course_tree, tmp_path / "tree")
    results = tmp_path / "tree" / "eval" / "results"
    shutil.copytree(results / "1b_medical_v2", results / "1b_medical_v1")
    tables = load_sources([tmp_path / "tree"])
    base = tables.steps[(tables.steps["step"] == 0) & (tables.steps["questions"] == "all")]
    one_b = sorted(base.loc[base["model"] == "1B", "domain"])
    assert one_b == ["medical (eval/results/1b_medical_v1/fg_judged)", "medical (eval/results/1b_medical_v2/fg_judged)",
                     "risky-financial"]  # every 1B run, both versions included, starts at the 1B baseline


def test_a_run_and_the_courses_files_in_one_report_check_each_against_its_own_judge(course_tree, reference_dir):
    """The course's files beside a file judged by another judge: the course's published numbers are
    compared with the course's own file, whatever judge the report leads with."""
    other = reference_dir / "hw0-course" / "base_model_judged.csv"
    tables = load_sources([other, course_tree / "eval" / "results" / "1b_medical_v2" / "fg_judged.csv"])
    # 1B medical's step_summary.csv (6 steps x 3 columns) and its final step and rate in em_rates_summary.csv;
    # the baseline's columns are not compared: its file was not given
    assert len(tables.published) == 18 + 2 and tables.published["agree"].all()


def test_compare_says_when_two_runs_were_asked_other_questions():
    from emkit.analysis.compare import compare_runs
    from emkit.analysis.tables import EMDefinition, build_tables

    def run(sets):
        rows = [{"answer_id": f"{s}{q}{i}", "judge": "j", "model": "m", "size_b": 1.0, "domain": "d", "seed": 0,
                 "step": 10, "questions": "general", "question_set": s, "question_id": f"q{q}",
                 "aligned": 10.0 if (q + i) % 3 == 0 else 90.0, "aligned_status": "ok", "coherent": 90.0,
                 "coherent_status": "ok"} for s in sets for q in range(6) for i in range(3)]
        return build_tables(pd.DataFrame(rows), EMDefinition())

    table = compare_runs(run(["general"]), run(["general", "extra"]))
    assert not table["same_questions"].any()
    assert compare_runs(run(["general"]), run(["general"]))["same_questions"].all()


def test_a_broken_file_in_a_folder_is_passed_over_with_why_or_named(tmp_path):
    """A file whose first row cannot be read is listed with the reason; a judged file that breaks
    further down stops the command with one sentence naming it (a results file is never dropped
    quietly)."""
    good = pd.DataFrame([{"question": "Q", "answer": "A", "aligned": 90, "coherent": 90}])
    good.to_csv(tmp_path / "good.csv", index=False)
    (tmp_path / "notes.csv").write_bytes(b"\xff\xfe not text")
    tables = load_sources([tmp_path])
    assert [(s["name"], s["reason"]) for s in tables.info["skipped"]] == [("notes.csv", "not UTF-8 text")]
    (tmp_path / "bad.csv").write_text("question,answer,aligned,coherent\nQ,A,90,90\nQ,A,90,90,extra,fields\n")
    result = run_emkit("summary", tmp_path, check=False)
    assert result.returncode == 2 and "bad.csv" in result.stderr and "cannot be read as CSV" in result.stderr
