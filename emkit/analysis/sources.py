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

from emkit.analysis.tables import RunTables, build_tables
from emkit.em import EMDefinition
from emkit.errors import EmkitError

STORE_FILE = "emkit.sqlite"
NOT_SEARCHED = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ipynb_checkpoints"}


@dataclass
class Source:
    path: Path
    name: str
    kind: str  # "run" (a run directory) or "file" (a judged file)
    root: str = ""  # the path given that it was found under, named below the folder the paths share


def _judged_suffix(path: Path) -> bool:
    from emkit.analysis.files import JUDGED_SUFFIXES

    return path.suffix.lower() in JUDGED_SUFFIXES


def _search(folder: Path, found: list[tuple[Path, str, str]], skipped: list[dict]) -> None:
    """Run directories and judged files below ``folder``: (path, name below the folder, kind)."""
    from emkit.analysis.files import is_judged, read_header

    for current, dirs, files in os.walk(folder):
        here = Path(current)
        if (here / STORE_FILE).is_file():
            found.append((here, here.relative_to(folder).as_posix(), "run"))
            dirs[:] = []  # a run directory's exports are its own tables, read from its store
            continue
        dirs[:] = sorted(d for d in dirs if d not in NOT_SEARCHED and not d.startswith("."))
        for name in sorted(files):
            path = here / name
            if not _judged_suffix(path):
                continue
            relative = path.relative_to(folder)
            columns, problem = read_header(path)
            if problem:
                skipped.append({"path": str(path), "name": relative.as_posix(), "reason": problem})
            elif is_judged(columns):
                found.append((path, relative.with_suffix("").as_posix(), "file"))
            else:
                skipped.append({"path": str(path), "name": relative.as_posix(),
                                "reason": "no question, answer and aligned score columns (not a judged file)"})


def _labels(paths: list[Path]) -> list[str]:
    """Each path given, named below the folder they all share (a file without its extension); one
    path alone: no label, its sources are named by themselves."""
    if len(paths) < 2:
        return [""] * len(paths)
    resolved = [p.resolve() for p in paths]
    shared = Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in resolved]))
    labels = []
    for path in resolved:
        relative = path.relative_to(shared)
        labels.append((relative.with_suffix("") if path.is_file() else relative).as_posix().strip("."))
    return labels


def discover(paths) -> tuple[list[Source], list[dict]]:
    """The sources under ``paths``, and the files passed over (with why). A source found twice (a
    path given twice, a folder and a run inside it) is read once."""
    given: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EmkitError(f"{path} does not exist; pass a run directory, a judged CSV or JSONL file, or a folder "
                             f"of them.")
        if path.resolve() not in {g.resolve() for g in given}:
            given.append(path)
    sources: list[Source] = []
    skipped: list[dict] = []
    seen: set[Path] = set()
    for path, label in zip(given, _labels(given)):
        if path.is_dir() and (path / STORE_FILE).is_file():
            found, own = [(path, path.resolve().name, "run")], True
        elif path.is_dir():
            found, own = [], False
            _search(path, found, skipped)
            if not found:
                raise EmkitError(f"{path}: no run directory (emkit.sqlite) and no judged file (.csv or .jsonl with "
                                 f"a question, an answer and an aligned score) in it; pass the folder of a run or of "
                                 f"judged files.")
        else:
            found, own = [(path, path.stem, "file")], True
        for where, inner, kind in found:
            if where.resolve() in seen:
                continue
            seen.add(where.resolve())
            name = (label or inner) if own else (f"{label}/{inner}" if label else inner)
            sources.append(Source(where, name, kind, label))
    return sources, skipped


# --- combining ----------------------------------------------------------------------------


def _cells(frame: pd.DataFrame) -> set[tuple]:
    return set(map(tuple, frame[["model", "domain", "seed", "step"]].astype(str).drop_duplicates().to_numpy()))


def _clashes(parts: list[tuple[Source, pd.DataFrame]]) -> dict[tuple, set[int]]:
    owners: dict[tuple, set[int]] = {}
    for index, (_, frame) in enumerate(parts):
        for cell in _cells(frame):
            owners.setdefault(cell, set()).add(index)
    return {cell: who for cell, who in owners.items() if len(who) > 1}


def keep_runs_apart(parts: list[tuple[Source, pd.DataFrame]]) -> dict[str, dict]:
    """Sources that fill the same cell (model, domain, seed and step) are other runs, never one
    pooled: sources under different paths given (two trees, two run directories) have their models
    prefixed with the path's name, each tree keeping its own baselines; two sources of one tree (a
    `_v1` and a `_v2` of one model and domain) have their domain suffixed with the source's name,
    so both keep the baseline their tree gives that model. The frames change in place; returns each
    source's renames (model and domain), for the summaries published beside it."""
    renames: dict[str, dict] = {source.name: {"model": {}, "domain": {}, "prefix": ""} for source, _ in parts}
    roots = {parts[i][0].root for who in _clashes(parts).values() if len({parts[j][0].root for j in who}) > 1
             for i in who}
    for source, frame in parts:
        if source.root and source.root in roots:
            models = frame["model"].astype(str)
            renames[source.name]["model"] = {m: f"{source.root}/{m}" for m in models.unique()}
            renames[source.name]["prefix"] = source.root + "/"
            frame["model"] = source.root + "/" + models
    for index in sorted({i for who in _clashes(parts).values() for i in who}):
        source, frame = parts[index]
        domains = frame["domain"].astype(str)
        inner = source.name[len(source.root) + 1:] if source.root and source.name.startswith(source.root + "/") \
            else source.name
        mapping = {d: f"{d} ({inner})" for d in domains.unique() if d}
        renames[source.name]["domain"] = mapping
        frame["domain"] = domains.map(lambda d: mapping.get(d, d))
    return renames


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


def load_source(source, em: EMDefinition | None = None, text: bool = True, all_questions: bool = False) -> RunTables:
    """The tables of one path: a run directory, a judged file, or a folder of them."""
    from emkit.analysis.runs import load_run

    path = Path(source)
    if path.is_dir() and (path / STORE_FILE).is_file():
        return load_run(path, em, text=text, all_questions=all_questions)
    return load_sources([path], em, text=text, all_questions=all_questions)


def load_judged_file(path, em: EMDefinition | None = None) -> RunTables:
    """The tables of one judged file (CSV or JSONL)."""
    return load_sources([path], em)


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
            judge = str(judged["judge"].iloc[0]) if len(judged) else ""
            # what the tree published beside the file: checked against the file's own judge
            step_files += [f.assign(source=source.name, judge=judge) for f in reading.step_summaries]
            rates_files += [r.assign(source=source.name, judge=judge) for r in reading.rates_summaries
                            if not any(r["file"].iloc[0] == f["file"].iloc[0] for f in rates_files)]
            described.append(_source_info(source, reading.layout, reading.rule))
            infos.append({"answers_total": judged["answer_id"].nunique()})
        parts.append((source, judged))
    renames = keep_runs_apart(parts)
    step_files = [_renamed(f, renames, "model", "domain") for f in step_files]
    rates_files = [_renamed(f, renames, "model_size", None, whole_tree=True) for f in rates_files]
    from emkit.labels import read_labels

    labels = []
    for source, judged in parts:
        own = read_labels(source.path)
        if len(parts) > 1:
            judged["answer_id"] = source.name + ":" + judged["answer_id"].astype(str)
            own["answer_id"] = source.name + ":" + own["answer_id"].astype(str)
        labels.append(own)
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
        "snapshots": [j for i in infos for j in i.get("snapshots", [])],
        "answers_total": sum(i.get("answers_total", 0) for i in infos),
        "answers_kept": sum(i.get("answers_kept", 0) for i in infos),
        "versions": library_versions(),
    }
    labels = pd.concat([part for part in labels if len(part)] or labels[:1], ignore_index=True)
    tables = build_tables(judged, em_from_config(config, em, all_questions), info, labels=labels)
    if step_files or rates_files:
        tables.published = check_published(step_files, rates_files, tables.course_steps, tables.course_summary)
    return tables


def _renamed(published: pd.DataFrame, renames: dict, model: str, domain: str | None,
             whole_tree: bool = False) -> pd.DataFrame:
    """A published summary with its source's models and domains as keep_runs_apart renamed them (a
    summary of the whole tree: every model with its tree's prefix)."""
    own = renames.get(published["source"].iloc[0], {"model": {}, "domain": {}, "prefix": ""})
    out = published.copy()
    if whole_tree:
        out[model] = own["prefix"] + out[model].astype(str)
    else:
        out[model] = out[model].astype(str).map(lambda m: own["model"].get(m, m))
    if domain:
        out[domain] = out[domain].astype(str).map(lambda d: own["domain"].get(d, d))
    return out
