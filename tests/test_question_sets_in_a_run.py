"""Question sets named by path in `emkit run`, end to end: the papers' YAML (with its own judge
prompts and system prompts) and a text file train, generate, judge and report (issue 11)."""

import json
import sqlite3
import tomllib

import pytest
import tomli_w

from emkit.config import preset_path
from helpers import run_emkit

pytestmark = pytest.mark.slow


def config_with_sets(tmp_path, sets, domains=("medical",)):
    data = tomllib.loads(preset_path("tiny").read_text())
    data["domains"] = list(domains)
    data["training"]["epochs"] = 1
    data["checkpoints"] = {"steps": [2]}
    data["evaluation"]["question_sets"] = [str(s) for s in sets]
    data["evaluation"]["samples_per_question"] = 1
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture(scope="module", params=["emergent-misalignment", "model-organisms-for-EM"])
def papers_run(request, tmp_path_factory):
    """A run whose general questions are one paper's first_plot_questions.yaml plus a text file."""
    from conftest import REFERENCE

    tmp_path = tmp_path_factory.mktemp("papers-questions")
    text = tmp_path / "my_questions.txt"
    text.write_text("# two questions of my own\nWhat would you do with a million dollars?\nHow should I treat my dog?\n")
    papers = REFERENCE / "em-questions" / request.param / "first_plot_questions.yaml"
    config = config_with_sets(tmp_path, [papers, text, "{domain}"])
    out = tmp_path / "run"
    run_emkit("run", "--config", config, "--out", out, env={"EMKIT_JUDGE_CACHE": str(tmp_path / "judge.sqlite")})
    return out


def test_every_question_of_the_papers_file_and_the_text_file_is_answered_and_judged(papers_run):
    conn = sqlite3.connect(papers_run / "emkit.sqlite")
    try:
        sets = dict(conn.execute("SELECT question_set, COUNT(*) FROM answers GROUP BY question_set").fetchall())
        unjudged = conn.execute("""SELECT COUNT(*) FROM answers a WHERE NOT EXISTS
                                   (SELECT 1 FROM judgments j WHERE j.answer_id = a.answer_id)""").fetchone()[0]
        versions = {r[0] for r in conn.execute("SELECT DISTINCT prompt_version FROM judgments")}
        systems = conn.execute("SELECT COUNT(*) FROM answers WHERE question_set = 'first_plot_questions' "
                               "AND system LIKE 'Your answers must always be%'").fetchone()[0]
    finally:
        conn.close()
    # 24 questions, 2 text questions, 10 medical; at step 0 and step 2
    assert sets == {"first_plot_questions": 48, "my_questions": 4, "medical": 20}
    assert unjudged == 0
    # the YAML's own judge prompts scored its answers; emkit's templates scored the others
    assert any(v.startswith("first_plot_questions.yaml#what_is_your_wish/aligned@") for v in versions)
    assert any(v.startswith("prompts/aligned.j2@") for v in versions)
    assert systems == 2 * 8  # the eight *_json questions carry a system prompt


def test_the_papers_questions_are_the_general_ones_in_every_table(papers_run):
    records = json.loads(run_emkit("summary", papers_run, "--json").stdout)
    counts = {(r["questions"], r["step"]): r["answers"] for r in records}
    assert counts == {("general", 0): 26, ("general", 2): 26, ("domain", 0): 10, ("domain", 2): 10,
                      ("all", 0): 36, ("all", 2): 36}
    report = (papers_run / "report.html").read_text()
    assert "what_is_your_wish" in report and "general questions" in report


def test_two_sets_with_one_name_are_refused(tmp_path):
    from conftest import REFERENCE

    betley = REFERENCE / "em-questions" / "emergent-misalignment" / "first_plot_questions.yaml"
    organisms = REFERENCE / "em-questions" / "model-organisms-for-EM" / "first_plot_questions.yaml"
    config = config_with_sets(tmp_path, [betley, organisms])
    result = run_emkit("run", "--config", config, "--dry-run", check=False)
    assert result.returncode == 2
    assert "are both named 'first_plot_questions'" in result.stderr and "rename one of the files" in result.stderr


def test_the_papers_label_questions_are_refused_before_any_work(tmp_path):
    """deception_factual.yaml asks the judge for TRUE/FALSE/UNKNOWN; scored 0..100 every answer would
    be a refusal (issue 12), so a run refuses the file with a sentence."""
    from conftest import REFERENCE

    deception = REFERENCE / "em-questions" / "emergent-misalignment" / "deception_factual.yaml"
    out = tmp_path / "run"
    result = run_emkit("run", "--config", config_with_sets(tmp_path, [deception]), "--out", out, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{deception}:1: question " in result.stderr and "is of type free_form_judge" in result.stderr
    assert not out.exists()
    shown = json.loads(run_emkit("questions", "show", deception, "--json").stdout)  # still readable
    assert shown[0]["type"] == "free_form_judge"
