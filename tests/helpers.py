"""Helpers the tests share."""

import os
import subprocess
import sys


def run_emkit(*args, env=None, cwd=None, timeout=600, check=True):
    """Run the installed `emkit` command in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "emkit", *map(str, args)], capture_output=True, text=True,
                            env=full_env, cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"emkit {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


SKIP_WHEN_COPYING = ("venv", ".venv", ".venv-*", ".git", ".pytest_cache", "build", "dist", "*.egg-info", "__pycache__", "runs")


def fresh_venv(work, source_root):
    """A new virtual environment with emkit installed from a copy of ``source_root`` by a plain,
    non-editable `pip install`. This environment's dependencies are visible to it through a
    .pth file (installing torch again would take minutes); emkit itself is the fresh copy."""
    import shutil
    import site
    import sysconfig
    from pathlib import Path

    work = Path(work)
    source = work / "source"
    shutil.copytree(source_root, source, ignore=shutil.ignore_patterns(*SKIP_WHEN_COPYING))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    outer = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "outer-dependencies.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    pip_install(venv, source)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return venv, purelib, elsewhere


def pip_install(venv, path):
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                             "--no-index", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def run_in_venv(venv, cwd, *args, env=None, timeout=600):
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env or {})
    return subprocess.run([str(venv / "bin" / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)
