"""A plain, non-editable `pip install .` into a fresh virtual environment carries every
built-in plugin, prompt, preset, question set, example dataset and report template.

The fresh environment sees this one's dependencies through a .pth file (installing torch
again would take minutes), but emkit itself is installed into it from a copy of the
source tree and used from a directory with no source in it.
"""

import json
from pathlib import Path

import pytest

from helpers import fresh_venv, run_in_venv

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    return fresh_venv(tmp_path_factory.mktemp("packaging"), ROOT)


def run_in(fresh_install, *args, **kwargs):
    venv, _, elsewhere = fresh_install
    return run_in_venv(venv, elsewhere, *args, **kwargs)


def test_the_installed_package_is_a_real_copy_not_the_checkout(fresh_install):
    _, purelib, _ = fresh_install
    result = run_in(fresh_install, "python", "-c", "import emkit, emkit.default_plugins; print(emkit.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(purelib))
    assert not (purelib / "emkit" / "__init__.py").is_symlink()


def test_every_builtin_plugin_is_registered(fresh_install):
    result = run_in(fresh_install, "emkit", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    provided = {kind: set() for kind in ("trainers", "generators", "judges", "domains", "question_sets")}
    for plugin in json.loads(result.stdout):
        for kind in provided:
            provided[kind] |= set(plugin["provides"].get(kind, []))
    assert provided == {
        "trainers": {"peft", "unsloth"}, "generators": {"hf", "vllm"}, "judges": {"litellm", "local"},
        "domains": {"medical", "risky-financial", "extreme-sports"},
        "question_sets": {"general", "medical", "financial", "sports"},
    }


def test_every_data_file_is_installed(fresh_install):
    _, purelib, _ = fresh_install
    package = purelib / "emkit"
    for relative in ("prompts/aligned.j2", "prompts/coherent.j2", "prompts/medical.j2", "presets/seed.toml",
                     "presets/smoke.toml", "presets/tiny.toml", "default_plugins/questions/general.yaml",
                     "default_plugins/data/medical_example.jsonl", "reports/templates/report.html.j2",
                     "reports/templates/report.css", "reports/templates/report.js"):
        assert (package / relative).is_file(), relative


def test_the_installed_emkit_plans_the_seed_experiment(fresh_install):
    result = run_in(fresh_install, "emkit", "run", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert len(plan["runs"]) == 6 and plan["totals"]["generations"] == 810


def test_the_installed_emkit_renders_a_report(fresh_install, tmp_path):
    code = (
        "import pandas as pd\n"
        "from emkit.analysis.tables import EMDefinition, build_tables\n"
        "from emkit.reports.html import render_report\n"
        "judged = pd.DataFrame({'answer_id': ['a', 'b'], 'judge': 'j', 'model': 'm', 'size_b': 1.0, 'domain': 'd',\n"
        "    'seed': 0, 'step': [0, 10], 'question_set': 's', 'question_id': 'q', 'question': 'Q?',\n"
        "    'answer': ['fine', 'bad'], 'aligned': [90.0, 10.0], 'aligned_status': 'ok', 'coherent': [90.0, 80.0],\n"
        "    'coherent_status': 'ok'})\n"
        f"render_report(build_tables(judged, EMDefinition()), r'{tmp_path / 'r.html'}')\n"
    )
    result = run_in(fresh_install, "python", "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EM rate per checkpoint" in (tmp_path / "r.html").read_text()


def test_every_source_package_is_installed(fresh_install):
    _, purelib, _ = fresh_install
    mapped = {"plugins": "default_plugins", "judges": "judges", "prompts": "prompts", "reports": "reports",
              "examples": "presets"}
    expected = [p.parent.relative_to(ROOT / "emkit") for p in (ROOT / "emkit").rglob("__init__.py")]
    expected += [Path(name) for folder, name in mapped.items() if (ROOT / folder / "__init__.py").is_file()]
    for package in expected:
        assert (purelib / "emkit" / package / "__init__.py").is_file(), package
