"""Many sources, each its own run: run directories, judged files and folders of them.

``emkit report``, ``emkit summary`` and ``emkit.load`` take any number of paths. A folder is
searched for run directories (a folder with ``emkit.sqlite``, not looked inside) and judged
files (``.csv``/``.jsonl`` with a question, an answer and an aligned score; other files, such as
a tree's own summaries, are passed over and listed). A file's run is named by its path below the
folder given (several files given one by one: below the folder they share), never by its stem
alone: a results tree's files are often all called ``fg_judged.csv``. A layout that says more
(emkit.analysis.layouts) names the runs by what the tree means, and the report shows which
rule read each file.

Sources combine into one set of tables. A model label two sources both use for the same cell
(model, domain, seed and step) is prefixed with each source's name, so their answers never
pool; a baseline file (step 0, no domain) is the step 0 of every run of its model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emkit.analysis.tables import EMDefinition, RunTables, build_tables
from emkit.errors import EmkitError

STORE_FILE = "emkit.sqlite"
NOT_SEARCHED = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ipynb_checkpoints"}


@dataclass
class Source:
    path: Path
    name: str
    kind: str  # "run" (a run directory) or "file" (a judged file)


def _judged_suffix(path: Path) -> bool:
    from emkit.analysis.files import JUDGED_SUFFIXES

    return path.suffix.lower() in JUDGED_SUFFIXES


def _search(folder: Path, sources: list[Source], skipped: list[dict]) -> None:
    from emkit.analysis.files import is_judged, read_header

    for current, dirs, files in os.walk(folder):
        here = Path(current)
        if (here / STORE_FILE).is_file():
            sources.append(Source(here, here.relative_to(folder).as_posix() if here != folder else folder.name, "run"))
            dirs[:] = []  # a run directory's exports are its own tables, read from its store
            continue
        dirs[:] = sorted(d for d in dirs if d not in NOT_SEARCHED and not d.startswith("."))
        for name in sorted(files):
            path = here / name
            if not _judged_suffix(path):
                continue
            columns = read_header(path)
            relative = path.relative_to(folder)
            if is_judged(columns):
                sources.append(Source(path, relative.with_suffix("").as_posix(), "file"))
            else:
                skipped.append({"path": str(path), "reason": "no question, answer and aligned score columns "
                                                              "(not a judged file)"})


def _unique(sources: list[Source]) -> list[Source]:
    """Names that two sources share get more of their path until they differ."""
    counts: dict[str, int] = {}
    for source in sources:
        counts[source.name] = counts.get(source.name, 0) + 1
    for source in sources:
        if counts[source.name] > 1:
            parts = source.path.resolve().with_suffix("").parts if source.kind == "file" else source.path.resolve().parts
            source.name = "/".join(parts[-3:])
    return sources


def discover(paths) -> tuple[list[Source], list[dict]]:
    """The sources under ``paths``, and the files passed over (with why)."""
    sources: list[Source] = []
    skipped: list[dict] = []
    given_files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and (path / STORE_FILE).is_file():
            sources.append(Source(path, path.resolve().name, "run"))
        elif path.is_dir():
            found_before = len(sources)
            _search(path, sources, skipped)
            if len(sources) == found_before:
                raise EmkitError(f"{path}: no run directory (emkit.sqlite) and no judged file (.csv or .jsonl with a "
                                 f"question, an answer and an aligned score) in it; pass the folder of a run or of "
                                 f"judged files.")
        elif path.is_file():
            given_files.append(len(sources))
            sources.append(Source(path, path.stem, "file"))
        else:
            raise EmkitError(f"{path} does not exist; pass a run directory, a judged CSV or JSONL file, or a folder "
                             f"of them.")
    if len(given_files) > 1:  # named by their path below the folder they share
        shared = Path(os.path.commonpath([str(sources[i].path.resolve().parent) for i in given_files]))
        for i in given_files:
            sources[i].name = sources[i].path.resolve().relative_to(shared).with_suffix("").as_posix()
    return _unique(sources), skipped


# --- combining ----------------------------------------------------------------------------


def _prefix_clashing_models(parts: list[tuple[Source, pd.DataFrame]]) -> None:
    """A model label whose cells (domain, seed, step) two sources both fill is prefixed with each
    source's name: the same label in two trees is two models unless their cells fit together
    (the course's 1B medical, 1B risky and 1B baseline files are one model)."""
    owners: dict[tuple, set[int]] = {}
    for index, (_, frame) in enumerate(parts):
        cells = frame[["model", "domain", "seed", "step"]].astype(str).drop_duplicates()
        for cell in cells.itertuples(index=False):
            owners.setdefault(tuple(cell), set()).add(index)
    clashing = {cell[0] for cell, who in owners.items() if len(who) > 1}
    for source, frame in parts:
        if clashing:
            models = frame["model"].astype(str)
            frame["model"] = models.where(~models.isin(clashing), source.name + "/" + models)


def _expand_file_baselines(judged: pd.DataFrame) -> pd.DataFrame:
    """A baseline row (step 0, no domain) becomes the step 0 of every domain its model was trained in."""
    base = (judged["step"] == 0) & (judged["domain"].astype(str) == "")
    if not base.any():
        return judged
    domains = judged.loc[~base & (judged["domain"].astype(str) != ""), ["model", "domain"]].drop_duplicates()
    expanded = judged[base].drop(columns="domain").merge(domains, on="model", how="inner")
    unserved = judged[base & ~judged["model"].isin(domains["model"])]
    return pd.concat([judged[~base], expanded, unserved], ignore_index=True)


def _source_info(source: Source, layout: str, rule: str) -> dict:
    return {"name": source.name, "path": str(source.path), "kind": source.kind, "layout": layout, "rule": rule}


def load_sources(paths, em: EMDefinition | None = None, text: bool = False, all_questions: bool = False) -> RunTables:
    """One set of tables of every source under ``paths``."""
    from emkit.analysis.course import check_published
    from emkit.analysis.files import read_table
    from emkit.analysis.layouts import read_judged
    from emkit.analysis.runs import em_from_config, library_versions, load_run, read_run

    sources, skipped = discover(paths)
    if len(sources) == 1 and sources[0].kind == "run":
        tables = load_run(sources[0].path, em, text=text, all_questions=all_questions)
        tables.info["sources"] = [_source_info(sources[0], "run", "an emkit run directory")]
        tables.info["skipped"] = skipped
        return tables
    parts, described, step_files, rates_files = [], [], [], []
    config, infos = {}, []
    for source in sources:
        if source.kind == "run":
            read = read_run(source.path)
            judged = read.judged.merge(read.text_loader(None), on="answer_id", how="left")
            for column in judged.columns:  # categories differ between sources; the tables make their own
                if isinstance(judged[column].dtype, pd.CategoricalDtype):
                    judged[column] = judged[column].astype(str)
            config = config or read.config
            infos.append(read.info)
            described.append(_source_info(source, "run", "an emkit run directory"))
        else:
            reading = read_judged(source.path, source.name, read_table(source.path))
            judged = reading.judged
            step_files += reading.step_summaries
            rates_files += [r for r in reading.rates_summaries if not any(r["file"].iloc[0] == f["file"].iloc[0]
                                                                          for f in rates_files)]
            described.append(_source_info(source, reading.layout, reading.rule))
            infos.append({"answers_total": judged["answer_id"].nunique()})
        parts.append((source, judged))
    _prefix_clashing_models(parts)
    if len(parts) > 1:
        for source, judged in parts:
            judged["answer_id"] = source.name + ":" + judged["answer_id"].astype(str)
    judged = _expand_file_baselines(pd.concat([frame for _, frame in parts], ignore_index=True))
    # a tree's own summaries are read as what it published, not passed over
    used = {str(Path(f["file"].iloc[0]).resolve()) for f in step_files + rates_files}
    for entry in skipped:
        if str(Path(entry["path"]).resolve()) in used:
            entry["reason"] = "a summary the tree published: checked against emkit's numbers"
    single_file = len(sources) == 1
    info = {
        "source": ", ".join(str(Path(p)) for p in paths), "kind": "file" if single_file else "combined",
        "sources": described, "skipped": skipped, "config": config,
        "layouts": sorted({d["layout"] for d in described}),
        "models": [m for i in infos for m in i.get("models", [])],
        "runs": [r for i in infos for r in i.get("runs", [])],
        "judges": [j for i in infos for j in i.get("judges", [])],
        "answers_total": sum(i.get("answers_total", 0) for i in infos),
        "answers_kept": sum(i.get("answers_kept", 0) for i in infos),
        "versions": library_versions(),
    }
    tables = build_tables(judged, em_from_config(config, em, all_questions), info)
    if step_files or rates_files:
        tables.published = check_published(step_files, rates_files, tables.course_steps, tables.course_summary,
                                           tables.primary_judge)
    return tables
