"""Every test runs offline: a guard fails any test that opens a connection beyond this
machine, hub downloads are off, and each test gets its own data directory and judge cache.
Tiny models are built once into .pytest_cache/emkit (kept between local runs)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("EMKIT_CACHE_DIR", str(ROOT / ".pytest_cache" / "emkit"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on a two-core machine: one thread each (and in the runs they start) beats four fighting
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# fixtures wider than one test (set up before the per-test ones below) get a judge cache of their own too
_session_cache = tempfile.mkdtemp(prefix="emkit-tests-")
atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
os.environ["EMKIT_JUDGE_CACHE"] = os.path.join(_session_cache, "judge-cache.sqlite")


def pytest_sessionstart(session):
    """Every emkit module imported once, now, before any test runs. emkit is a pytest plugin, so pytest
    rewrites its modules with ast.parse as they are first imported; on CPython 3.11 before 3.11.8 an
    exception landing inside the AST constructor (the Ctrl-C the judging tests send) leaves its global
    recursion counter off, and every later parse in that worker fails with "AST constructor recursion
    depth mismatch" (CPython gh-106905: test_sources failed so once). Imported here, nothing is parsed
    while a test interrupts."""
    import importlib
    import pkgutil

    for package in ("emkit", "emkit.default_plugins", "emkit.judges", "emkit.reports"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, package + "."):
            if module.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as missing:
                # a plugin whose optional extra this venv lacks (submitit in .venv-vllm): its own
                # tests skip or are not collected here; emkit's own modules must all import
                if (missing.name or "").split(".")[0] in ("emkit", "plugins", "judges"):
                    raise


# The papers' and the course's published files, copied unchanged into the repository
# (tests/reference/README.md), so no test skips on a contributor's clone.
REFERENCE = Path(__file__).resolve().parent / "reference"


@pytest.fixture(autouse=True)
def _offline(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("EMKIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMKIT_JUDGE_CACHE", str(tmp_path / "judge-cache.sqlite"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("EMKIT_PLUGINS", raising=False)
    yield


@pytest.fixture
def reference_dir():
    return REFERENCE
