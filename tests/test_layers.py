"""The import contract (.importlinter) holds on the tree pip installs, and the checker would
catch a break: a core module that imports a plugin, a circle. The architecture picture in
docs/architecture.md is the one the imports draw."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from installed_tree import install_tree  # noqa: E402

LINT = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return install_tree(tmp_path_factory.mktemp("layers") / "site")


def lint(site: Path, work: Path) -> subprocess.CompletedProcess:
    work.mkdir(exist_ok=True)  # an empty folder: only the installed tree is on the path
    result = subprocess.run([str(LINT), str(ROOT / ".importlinter"), "--no-cache"], cwd=work, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}, timeout=300)
    result.stdout = " ".join(result.stdout.split())  # the linter wraps its lines at 80 columns
    return result


def planted(tree: Path, tmp_path: Path, module: str, line: str) -> Path:
    site = tmp_path / "site"
    shutil.copytree(tree, site)
    path = site / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    return site


def test_the_import_contract_holds(tree, tmp_path):
    result = lint(tree, tmp_path / "work")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout
    assert (tree / "emkit" / "default_plugins" / "hf_generator.py").is_file()  # plugins/ read where pip puts it


def test_a_core_module_that_imports_a_plugin_breaks_it(tree, tmp_path):
    site = planted(tree, tmp_path, "emkit.stages.generate", "from emkit.default_plugins import hf_generator")
    result = lint(site, tmp_path / "work")
    assert result.returncode != 0
    assert "never imports a plugin, the judges, the reports or the command line" in result.stdout
    assert "emkit.stages.generate -> emkit.default_plugins.hf_generator" in result.stdout


def test_a_circle_or_an_upward_import_breaks_it(tree, tmp_path):
    site = planted(tree, tmp_path, "emkit.models.loading", "from emkit.models import tiny")  # tiny imports loading
    result = lint(site, tmp_path / "work")
    assert result.returncode != 0
    assert "No circles between the modules of any package BROKEN" in result.stdout
    site = planted(tree, tmp_path / "upward", "emkit.store", "from emkit import runner")
    result = lint(site, tmp_path / "work")
    assert "Core layers: each imports only the layers below it BROKEN" in result.stdout


def test_the_architecture_picture_is_drawn_from_the_code():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "draw_architecture.py"), "--check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
