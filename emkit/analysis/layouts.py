"""What a judged file means, read from where it lies and what it holds.

A results tree written by someone else names its runs by folders, not by the file, whose stem
is the same everywhere (``fg_judged.csv``). Each rule below recognises one layout and says how
it read the file; the first rule that recognises a file reads it, and the report shows which
rule that was, so a reader can check that emkit understood the tree as its authors meant it:

- **the course's layout** (Harvard CS 2881 HW0, the seed experiment):
  ``.../{size}b_{domain}[_v2]/fg_judged.csv`` with a ``step`` column is the run of that model size
  and domain, and ``.../baseline/{size}b_{domain}/base_judged.csv`` is step 0 of every run of
  that size (the course evaluated each base model once). Judged by gpt-4o-mini, as the course's
  ``eval/judge.py`` does. The ``step_summary.csv`` beside a run and
  ``results/data/em_rates_summary.csv`` above it are read too, to check emkit's numbers against
  the ones the course published.
- **a model column** (Betley et al.'s and Model Organisms' files, emkit's own exports): one run
  per model; a ``group`` column (Betley et al.'s training set: insecure, secure, ...) is the
  domain where there is no ``domain`` column; the model's size is read from its name (``32B``).
- **anything else**: one run, named by the file's path below the folder given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emkit.analysis.files import judged_rows

COURSE_JUDGE = "gpt-4o-mini"
SIZE = r"(?P<size>\d+(?:\.\d+)?)b"
COURSE_RUN = re.compile(rf"^(?:eval_results_)?{SIZE}_(?P<domain>[a-z][a-z_]*?)(?:_v\d+)?$", re.IGNORECASE)
COURSE_BASELINE = re.compile(rf"^(?:eval_results_)?(?:base(?:line)?_)?{SIZE}_(?P<domain>[a-z][a-z_]*?)(?:_v\d+)?$",
                             re.IGNORECASE)
COURSE_DOMAINS = {"medical": "medical", "risky": "risky-financial", "risky_financial": "risky-financial",
                  "financial": "risky-financial", "sports": "extreme-sports", "extreme_sports": "extreme-sports"}
MODEL_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![A-Za-z])")


@dataclass
class FileReading:
    """A judged file read by a layout: its rows in emkit's columns, and how they were read."""

    layout: str
    rule: str  # one sentence, shown in the report
    judged: pd.DataFrame
    step_summaries: list = field(default_factory=list)  # summaries published beside the file
    rates_summaries: list = field(default_factory=list)


def size_from_name(name: str) -> float:
    found = MODEL_SIZE.search(str(name))
    return float(found.group(1)) if found else float("nan")


def _size_label(size: str) -> str:
    return f"{float(size):g}B"


def _course_domain(word: str) -> str:
    return COURSE_DOMAINS.get(word.lower(), word.lower().replace("_", "-"))


def _is_baseline(path: Path, frame: pd.DataFrame) -> bool:
    if "step" in frame:
        return False
    named = path.name.lower().startswith("base") or path.parent.parent.name.lower() == "baseline" \
        or path.parent.name.lower().startswith(("base_", "eval_results_base_"))
    marked = "epoch" in frame and set(frame["epoch"].astype(str).str.lower()) <= {"base", "0"}
    return named or marked


def read_course(path: Path, name: str, frame: pd.DataFrame) -> FileReading | None:
    folder = path.parent.name
    if _is_baseline(path, frame):
        found = COURSE_BASELINE.match(folder)
        if not found:
            return None
        model = _size_label(found.group("size"))
        judged = judged_rows(frame, str(path), {"model": model, "size_b": float(found.group("size")), "domain": "",
                                                "step": 0, "judge": COURSE_JUDGE})
        return FileReading("course", f"the course's baseline layout (…/{path.parent.parent.name}/{folder}/{path.name}): "
                                     f"the base model {model}, step 0 of every run of {model}; judge {COURSE_JUDGE} "
                                     f"(the course's eval/judge.py)", judged,
                           rates_summaries=_rates_summaries(path))
    found = COURSE_RUN.match(folder)
    if not found or "step" not in frame:
        return None
    model, domain = _size_label(found.group("size")), _course_domain(found.group("domain"))
    judged = judged_rows(frame, str(path), {"model": model, "size_b": float(found.group("size")), "domain": domain,
                                            "judge": COURSE_JUDGE})
    from emkit.analysis.course import read_step_summary

    beside = path.parent / "step_summary.csv"
    summaries = [s for s in [read_step_summary(beside, model, domain)] if s is not None] if beside.is_file() else []
    return FileReading("course", f"the course's layout (…/{folder}/{path.name}): model {model}, domain {domain}, "
                                 f"checkpoints from the step column; judge {COURSE_JUDGE} (the course's "
                                 f"eval/judge.py)", judged, step_summaries=summaries,
                       rates_summaries=_rates_summaries(path))


def _rates_summaries(path: Path) -> list:
    """The course's results/data/em_rates_summary.csv, looked for above the file."""
    from emkit.analysis.course import read_rates_summary

    for folder in list(path.parents)[1:5]:
        candidate = folder / "results" / "data" / "em_rates_summary.csv"
        if candidate.is_file():
            found = read_rates_summary(candidate)
            return [found] if found is not None else []
    return []


def read_model_column(path: Path, name: str, frame: pd.DataFrame) -> FileReading | None:
    if "model" not in frame:
        return None
    frame = frame.copy()
    notes = []
    if "domain" not in frame and "group" in frame:
        frame["domain"] = frame["group"]
        notes.append("the group column as the domain")
    if "size_b" not in frame:
        frame["size_b"] = frame["model"].map(size_from_name)
        if frame["size_b"].notna().any():
            notes.append("model sizes from the model names")
    judged = judged_rows(frame, str(path))
    models = judged["model"].nunique()
    return FileReading("model column", f"a model column: {models} model{'s' if models != 1 else ''}, one run each"
                                       + (f"; {', '.join(notes)}" if notes else "") + _no_steps(frame), judged)


def read_by_name(path: Path, name: str, frame: pd.DataFrame) -> FileReading:
    judged = judged_rows(frame, str(path), {"model": name})
    return FileReading("file", f"one run, named by its path: {name}{_no_steps(frame)}", judged)


def _no_steps(frame: pd.DataFrame) -> str:
    return "" if "step" in frame else ("; no step column: one evaluation, shown as step 0, which here is not an "
                                       "untouched base model")


LAYOUTS = (read_course, read_model_column)


def read_judged(path: Path, name: str, frame: pd.DataFrame) -> FileReading:
    """The file read by the first layout that recognises it."""
    for layout in LAYOUTS:
        reading = layout(path, name, frame)
        if reading is not None:
            return reading
    return read_by_name(path, name, frame)
