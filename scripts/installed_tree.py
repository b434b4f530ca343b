"""Install emkit as pip lays it out (emkit.default_plugins, emkit.judges, emkit.reports inside
emkit/) into a folder, for tools that read a package from the file system: import-linter (make
layers) and scripts/draw_architecture.py. An editable install maps those packages from plugins/,
judges/ and reports/ through an import hook, which such tools do not follow.

    python scripts/installed_tree.py OUT    # OUT/emkit/... from the files git tracks here
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    """The files git tracks, and those it does not ignore: what a clean checkout holds, and no
    build/ left behind by an earlier install (it would bring back modules since deleted)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def install_tree(out: Path) -> Path:
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "emkit"
        for name in tracked_files():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", str(out), str(copy)], check=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/installed_tree.py OUT")
    print(install_tree(Path(sys.argv[1])))
