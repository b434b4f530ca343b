"""Draw docs/architecture.md's picture of emkit's rooms from the imports themselves.

The rooms are the layers of .importlinter; an arrow A --> B means some module of A imports one
of B. Imports of the shared base (errors, interfaces, config, progress and the like: everything
imports them) are left out, so the picture shows the design, not the plumbing. Plugins reach
core through the registry only; their arrows are drawn dotted.

    python scripts/draw_architecture.py           # rewrite the picture in docs/architecture.md
    python scripts/draw_architecture.py --check   # exit 1 if the picture no longer matches the code
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from installed_tree import install_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- picture: drawn by scripts/draw_architecture.py -->", "<!-- end of picture -->"

# room -> the modules (and their descendants) it holds, in the order the flow runs
ROOMS = {
    "cli": ["emkit.cli"],
    "refine": ["emkit.refine"],
    "rejudge": ["emkit.rejudge"],
    "labelling": ["emkit.labelling"],
    "directions": ["emkit.directions"],
    "interop": ["emkit.interop"],
    "runner": ["emkit.runner"],
    "execution": ["emkit.execution"],
    "tracking": ["emkit.tracking"],
    "stages": ["emkit.stages"],
    "training": ["emkit.training"],
    "judging": ["emkit.judging"],
    "analysis": ["emkit.analysis"],
    "plan": ["emkit.plan"],
    "models": ["emkit.models"],
    "store": ["emkit.store", "emkit.rundir", "emkit.labels"],
    "registry": ["emkit.plugins"],
}
PLUGIN_ROOMS = {
    "built-in plugins": ["emkit.default_plugins"],
    "judges": ["emkit.judges"],
    "reports": ["emkit.reports"],
}
LABELS = {
    "cli": "cli: emkit run, report, status, ...",
    "refine": "refine: checkpoints where EM emerges",
    "rejudge": "rejudge: stored answers, another judge",
    "labelling": "labelling: people label answers (emkit label)",
    "directions": "directions: misalignment in the activations",
    "interop": "interop: a run as Inspect eval logs",
    "runner": "runner: plan → units → judge → report",
    "execution": "execution: units on local, local-gpus, slurm, ...",
    "tracking": "tracking: runs sent to MLflow, W&B, ...",
    "stages": "stages: train, generate, judge, report",
    "training": "training: the loop, adapters, state",
    "judging": "judging: cache, calls, batches, scores",
    "analysis": "analysis: loading, statistics, tables, change points",
    "plan": "plan: config → runs, checkpoints, answers",
    "models": "models: hub ids, paths, built-ins, base weights",
    "store": "store: SQLite, run directory, labels",
    "registry": "registry: plugins by kind (pluggy)",
    "built-in plugins": "plugins/: trainers, generators, executors, trackers, domains, question sets",
    "judges": "judges/: litellm, local",
    "reports": "reports/: sections, writers, figures",
}


def room_of(module: str, rooms: dict[str, list[str]]) -> str | None:
    for room, prefixes in rooms.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return room
    return None


def edges() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(core arrows, plugin arrows) between rooms, read from the installed tree's imports."""
    import grimp

    every = {**ROOMS, **PLUGIN_ROOMS}
    with tempfile.TemporaryDirectory() as scratch:
        site = install_tree(Path(scratch) / "site")
        sys.path.insert(0, str(site))
        try:
            graph = grimp.build_graph("emkit", cache_dir=None)
        finally:
            sys.path.remove(str(site))
    core, plugins = set(), set()
    for module in graph.modules:
        source = room_of(module, every)
        if source is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = room_of(imported, every)
            if target is None or target == source or source == "cli":  # the cli imports every room
                continue
            (plugins if source in PLUGIN_ROOMS else core).add((source, target))
    return core, plugins


def mermaid() -> str:
    core, plugins = edges()
    ids = {room: room.replace(" ", "_").replace("-", "_") for room in {**ROOMS, **PLUGIN_ROOMS}}
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {ids[room]}["{LABELS[room]}"]' for room in ROOMS]
    lines.append('    subgraph plugin_side["registered through hooks"]')
    lines += [f'        {ids[room]}["{LABELS[room]}"]' for room in PLUGIN_ROOMS]
    lines.append("    end")
    lines += [f"    {ids['cli']} --> {ids[room]}" for room in ("refine", "runner")]
    order = list(ROOMS) + list(PLUGIN_ROOMS)
    lines += [f"    {ids[a]} --> {ids[b]}" for a, b in sorted(core, key=lambda e: (order.index(e[0]), order.index(e[1])))]
    lines += [f"    {ids[a]} -.-> {ids[b]}" for a, b in sorted(plugins, key=lambda e: (order.index(e[0]), order.index(e[1])))]
    lines.append(f"    {ids['registry']} -. finds .-> plugin_side")
    lines.append("```")
    return "\n".join(lines)


def with_picture(text: str, picture: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + picture + "\n" + text[end:]


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    drawn = with_picture(text, mermaid())
    if "--check" in argv:
        if drawn != text:
            print(f"{DOC.relative_to(ROOT)}: the picture no longer matches the imports; run "
                  f"python scripts/draw_architecture.py and commit the result.", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(drawn)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
