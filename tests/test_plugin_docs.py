"""docs/plugins.md: every hook documented and tested, and its walkthrough plugin really works."""

import ast
import json
import re
from pathlib import Path

import pytest

from emkit import hookspecs
from helpers import fresh_venv, pip_install, run_in_venv

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("register_"))


def test_every_hook_is_documented():
    text = DOCS.read_text()
    for name in HOOKS:
        assert re.search(rf"^### {name}\((register|cli)\)$", text, re.MULTILINE), f"no section for {name}"


def test_every_hook_has_a_test_of_its_own():
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    for name in HOOKS:
        assert f"def test_hook_{name}(" in sources, f"no test_hook_{name}"


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.DOTALL)


def test_the_python_examples_compile():
    blocks = code_blocks("python")
    assert len(blocks) >= 8
    for block in blocks:
        ast.parse(block)


def walkthrough_files():
    """The files the walkthrough writes, each block preceded by <!-- file: PATH -->."""
    return {path: body for path, body in re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DOCS.read_text(),
                                                  re.DOTALL)}


@pytest.mark.slow
def test_the_walkthrough_domain_runs_in_the_smoke_pipeline(tmp_path):
    files = walkthrough_files()
    assert {"emkit-legal/setup.cfg", "emkit-legal/emkit_legal/plugin.py", "emkit-legal/emkit_legal/example.jsonl"} \
        <= set(files)
    for relative, body in files.items():
        path = tmp_path / "author" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    venv, _, elsewhere = fresh_venv(tmp_path / "env", ROOT)
    pip_install(venv, tmp_path / "author" / "emkit-legal")
    listed = json.loads(run_in_venv(venv, elsewhere, "emkit", "plugins", "--json").stdout)
    legal = next(p for p in listed if p["name"] == "legal")
    assert legal["provides"]["domains"] == ["legal"] and legal["provides"]["question_sets"] == ["legal"]
    result = run_in_venv(venv, elsewhere, "emkit", "run", "--preset", "tiny", "--domain", "legal", "--out", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: " in result.stderr
    summary = json.loads(run_in_venv(venv, elsewhere, "emkit", "summary", "run", "--json").stdout)
    assert {r["domain"] for r in summary} == {"legal"}
    answers = {r["questions"]: r["answers"] for r in summary}
    assert answers == {"general": 20, "domain": 6, "all": 26}  # (10 general + 3 legal questions) x 2 samples
