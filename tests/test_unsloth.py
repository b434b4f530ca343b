"""The unsloth trainer: a clear sentence when it cannot run, and a real run when it can.

Unsloth patches transformers when imported, so it only ever runs in a subprocess here.
Without a GPU it trains through its plain Hugging Face fallback; the GPU kernels are
measured in bench/ on a GPU machine (docs/performance.md).
"""

import importlib.util
import sys

import pytest

from emkit.default_plugins.unsloth_trainer import _import_unsloth
from emkit.errors import EmkitError
from helpers import run_emkit


def test_a_missing_unsloth_is_one_sentence_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # what an absent package looks like to import
    with pytest.raises(EmkitError, match=r"needs the unsloth package .*pip install 'emkit\[unsloth\]'.*--trainer peft"):
        _import_unsloth()


def test_unsloth_writes_its_generated_modules_to_emkits_cache(monkeypatch, tmp_path):
    import os
    import types

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = object
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setenv("EMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("UNSLOTH_COMPILE_LOCATION", raising=False)
    _import_unsloth()
    assert os.environ["UNSLOTH_COMPILE_LOCATION"] == str(tmp_path / "cache" / "unsloth_compiled_cache")


def test_the_command_line_says_it_too(tmp_path):
    code = "import sys; sys.modules['unsloth'] = None; from emkit.cli import main; main()"
    import os
    import subprocess

    result = subprocess.run([sys.executable, "-c", code, "run", "--preset", "tiny", "--trainer", "unsloth",
                             "--domain", "medical", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=os.environ, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'emkit[unsloth]'" in result.stderr and "Traceback" not in result.stderr


NEEDS_UNSLOTH = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                                   reason="unsloth is not installed (emkit[unsloth])")


@pytest.mark.slow
@NEEDS_UNSLOTH
def test_the_unsloth_trainer_runs_the_smoke_pipeline(tmp_path):
    out = tmp_path / "run"
    result = run_emkit("run", "--preset", "tiny", "--trainer", "unsloth", "--domain", "medical", "--out", out)
    assert "done: 5 new checkpoints" in result.stderr
    adapters = sorted(p.name for p in (out / "adapters" / "tiny-medical-seed0").iterdir())
    assert adapters == ["step-000002", "step-000004", "step-000008", "step-000012", "step-000016"]
    assert (out / "report.html").is_file()
    assert "Base weights</th><td>tiny: " in (out / "report.html").read_text()


@pytest.mark.slow
@NEEDS_UNSLOTH
def test_unsloth_trains_in_a_child_and_generation_runs_in_a_process_it_never_touched(tmp_path):
    from test_isolated_training import watched_run

    result, seen = watched_run(tmp_path, "unsloth")
    assert "done: 2 new checkpoints, 60 new answers" in result.stderr
    assert seen and all(s["patched"] == [] for s in seen), seen


@pytest.mark.slow
@NEEDS_UNSLOTH
def test_the_check_sees_unsloth_where_it_was_imported():
    import subprocess

    code = ("import unsloth; from emkit.training.isolated import patched_by_unsloth; "
            "import json; print(json.dumps(patched_by_unsloth()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    import json

    assert json.loads(result.stdout.strip().splitlines()[-1])[0].startswith("unsloth")
