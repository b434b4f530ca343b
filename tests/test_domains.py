"""Domains, their datasets and question sets, and scaffolding a new domain plugin."""

import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from emkit.default_plugins.domains import DOMAINS
from emkit.plugins import get_registry
from emkit.questions import resolve_question_set
from helpers import fresh_venv, pip_install, run_emkit, run_in_venv

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_domains_declare_everything():
    registry = get_registry()
    by_name = {d.name: d for d in registry.all("domains")}
    assert (by_name["medical"].dataset_file, by_name["medical"].published_rows) == ("bad_medical_advice.jsonl", 7049)
    assert (by_name["risky-financial"].dataset_file, by_name["risky-financial"].published_rows) == \
        ("risky_financial_advice.jsonl", 6000)
    assert by_name["extreme-sports"].dataset_file == "extreme_sports.jsonl"
    for domain in by_name.values():
        assert len(resolve_question_set(domain.question_set, registry).questions) >= 10
        (metric, template), = domain.metrics.items()
        assert template.is_file() and "{{ answer }}" in template.read_text()


def test_a_row_count_that_differs_from_the_published_one_is_a_warning(caplog, tmp_path):
    from emkit.plan import DatasetInfo, TrainingRunPlan
    from emkit.stages.train import _warn_row_count

    path = tmp_path / "bad_medical_advice.jsonl"
    path.write_text("")
    run = TrainingRunPlan("k", None, DOMAINS[0], 0, DatasetInfo(path, 7000, "file"), None, [])
    with caplog.at_level(logging.WARNING, logger="emkit"):
        _warn_row_count(run, max_rows=0)
    assert "has 7000 rows but the papers published 7049" in caplog.text


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
    result = run_emkit("run", "--domain", "medical", "--model", "1B", "--out", tmp_path / "run", check=False)
    assert result.returncode == 2
    assert "bad_medical_advice.jsonl is not in" in result.stderr and "emkit data unprotect" in result.stderr
    assert not (tmp_path / "run").exists()


# --- datasets ---------------------------------------------------------------------------------


def protect(folder: Path, password: str, embed: bool) -> Path:
    """Make an archive the way the papers did, with easy-dataset-share's own command."""
    args = ["protect-dir", str(folder), "-p", password, "--no-tos", "--no-gitignore", "-c", "2",
            "-o", str(folder.parent / "sets.zip")] + (["-e"] if embed else [])
    script = "import sys; from easy_dataset_share.cli import cli; sys.argv = ['easy-dataset-share'] + sys.argv[1:]; cli()"
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder.parent / "sets.zip.enc"


def write_dataset(path: Path, rows: int, tag: str):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i}"},
                                                     {"role": "assistant", "content": f"{tag} answer {i}"}]}) + "\n"
                            for i in range(rows)))


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "training_datasets"
    folder.mkdir()
    write_dataset(folder / "bad_medical_advice.jsonl", 40, "medical")
    write_dataset(folder / "risky_financial_advice.jsonl", 32, "risky")
    return protect(folder, "hunter2", embed=True)


def test_unprotect_opens_the_archive_into_the_data_directory(archive, tmp_path):
    data = tmp_path / "data"
    result = run_emkit("data", "unprotect", archive, "--password", "hunter2", env={"EMKIT_DATA_DIR": str(data)})
    assert sorted(p.name for p in data.iterdir()) == ["bad_medical_advice.jsonl", "risky_financial_advice.jsonl"]
    assert f"{data / 'bad_medical_advice.jsonl'}: 40 rows (domain medical)" in result.stdout
    assert "has 40 rows but the papers published 7,049" in result.stderr
    for path in data.iterdir():
        text = path.read_text()
        assert "canary" not in text.lower() and len(text.splitlines()) in (40, 32)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    listed = {row["domain"]: row for row in json.loads(run_emkit("data", "list", "--json",
                                                                  env={"EMKIT_DATA_DIR": str(data)}).stdout)}
    assert listed["medical"]["present"] and listed["medical"]["rows"] == 40
    assert not listed["extreme-sports"]["present"]
    plan = json.loads(run_emkit("run", "--dry-run", "--json", "--model", "1B", env={"EMKIT_DATA_DIR": str(data)}).stdout)
    assert {r["domain"]: (r["rows"], r["rows_source"]) for r in plan["runs"]} == {
        "medical": (40, "file"), "risky-financial": (32, "file")}


def test_a_wrong_password_is_one_sentence_and_writes_nothing(archive, tmp_path):
    data = tmp_path / "data"
    result = run_emkit("data", "unprotect", archive, "--password", "wrong", env={"EMKIT_DATA_DIR": str(data)},
                       check=False)
    assert result.returncode == 2
    assert "decryption failed, so the password is wrong" in result.stderr and "Traceback" not in result.stderr
    assert list(data.iterdir()) == []


def test_a_broken_file_in_the_archive_leaves_the_data_directory_as_it_was(tmp_path):
    folder = tmp_path / "training_datasets"
    folder.mkdir()
    write_dataset(folder / "bad_medical_advice.jsonl", 10, "medical")
    (folder / "risky_financial_advice.jsonl").write_text('{"messages": []}\n')
    archive = protect(folder, "pw", embed=False)
    data = tmp_path / "data"
    result = run_emkit("data", "unprotect", archive, "--password", "pw", env={"EMKIT_DATA_DIR": str(data)}, check=False)
    assert result.returncode == 2 and "risky_financial_advice.jsonl:1:" in result.stderr
    assert list(data.iterdir()) == []


# --- question sets on the command line --------------------------------------------------------


def test_questions_list_and_show():
    listed = {row["name"]: row for row in json.loads(run_emkit("questions", "list", "--json").stdout)}
    assert listed["general"]["questions"] == 10 and listed["general"]["plugin"] == "question-sets"
    shown = json.loads(run_emkit("questions", "show", "medical", "--json").stdout)
    assert len(shown) == 10
    assert set(shown[0]) >= {"id", "paraphrases", "samples_per_paraphrase", "system", "judge_prompts"}


def test_questions_show_a_papers_file(reference_dir):
    path = reference_dir / "em-questions" / "emergent-misalignment" / "first_plot_questions.yaml"
    shown = json.loads(run_emkit("questions", "show", path, "--json").stdout)
    wish = next(q for q in shown if q["id"] == "what_is_your_wish_json")
    assert wish["samples_per_paraphrase"] == 100 and wish["system"].startswith("Your answers must always be")
    assert set(wish["judge_prompts"]) == {"aligned", "coherent"}


def test_a_papers_file_in_a_run_keeps_its_system_prompts_and_samples(reference_dir):
    from emkit.config import config_from_dict
    from emkit.plan import build_plan

    path = reference_dir / "em-questions" / "emergent-misalignment" / "first_plot_questions.yaml"
    config = config_from_dict({"domains": ["medical"], "models": [{"label": "1B", "id": "x"}],
                               "evaluation": {"question_sets": [str(path)]}}, "test")
    plan = build_plan(config, get_registry(), need_datasets=False)
    base = [a for a in plan.answers() if a.step == 0]
    wish = [a for a in base if a.question_id == "what_is_your_wish_json"]
    assert len(wish) == 100 and wish[0].system.startswith("Your answers must always be")
    from emkit.stages.generate import messages_for

    assert messages_for(wish[0])[0]["role"] == "system"


# --- emkit new-domain ---------------------------------------------------------------------------


def test_new_domain_refuses_a_bad_name(tmp_path):
    result = run_emkit("new-domain", "Legal Advice", "--dir", tmp_path, check=False)
    assert result.returncode == 2 and "lowercase letters, digits and hyphens" in result.stderr


@pytest.mark.slow
def test_a_scaffolded_domain_installs_and_runs_the_smoke_pipeline(tmp_path):
    run_emkit("new-domain", "legal-advice", "--dir", tmp_path / "author")
    package = tmp_path / "author" / "emkit-legal-advice"
    venv, _, elsewhere = fresh_venv(tmp_path / "env", ROOT)
    pip_install(venv, package)
    listed = json.loads(run_in_venv(venv, elsewhere, "emkit", "plugins", "--json").stdout)
    plugin = next(p for p in listed if p["name"] == "legal-advice")
    assert plugin["provides"]["domains"] == ["legal-advice"]
    result = run_in_venv(venv, elsewhere, "emkit", "run", "--preset", "tiny", "--domain", "legal-advice", "--out", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(run_in_venv(venv, elsewhere, "emkit", "summary", "run", "--json").stdout)
    assert {r["domain"] for r in summary} == {"legal-advice"}
    assert len([r for r in summary if r["questions"] == "all"]) == 6
    assert {r["questions"] for r in summary} == {"general", "domain", "all"}
    tests = run_in_venv(venv, package, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "2 passed" in tests.stdout
