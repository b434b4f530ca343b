"""Make a third-party plugin distribution on disk: found through the `emkit` entry-point
group exactly as a pip-installed one would be."""

import textwrap
from pathlib import Path


def make_plugin(site: Path, dist: str, module: str, code: str, entry_name: str | None = None) -> Path:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"  # as pip names it
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[emkit]\n{entry_name or dist} = {module}\n")
    (info / "RECORD").write_text("")
    return site
