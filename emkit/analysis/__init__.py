"""Analysis: EM rates with intervals, per step, question and seed, and judge agreement.

``emkit.load(path, ...)`` returns the same tables the report and the exports are made of. A
source is a run directory, a file of judged answers made elsewhere (the course's CSV with
``aligned_score``, ``coherent_score``; the papers' with ``aligned``, ``coherent``; what ``emkit
judge`` writes), or a folder of them. The rooms:

- ``store_reader``, ``runs``: a run directory's store, read-only;
- ``files``, ``layouts``, ``sources``: judged files, the result trees they lie in, and many
  sources combined;
- ``tables``: the tables (``RunTables``); ``stats``, ``bootstrap``, ``changepoints``: their
  statistics; ``course``: the course's own columns; ``adapters``, ``compare``.
"""

from __future__ import annotations

from pathlib import Path

from emkit.analysis.files import read_table  # noqa: F401  (emkit judge reads files through it)
from emkit.analysis.runs import library_versions, load_run  # noqa: F401
from emkit.analysis.sources import discover, load_sources  # noqa: F401
from emkit.analysis.tables import NAMED_DEFINITIONS, EMDefinition, RunTables, em_definition

__all__ = ["EMDefinition", "NAMED_DEFINITIONS", "RunTables", "em_definition", "load_run", "load_judged_file",
           "load_source", "load_sources", "discover"]


def load_judged_file(path, em: EMDefinition | None = None) -> RunTables:
    """The tables of one judged file (CSV or JSONL)."""
    return load_sources([path], em)


def load_source(source, em: EMDefinition | None = None, text: bool = True, all_questions: bool = False) -> RunTables:
    """The tables of one path: a run directory, a judged file, or a folder of them."""
    path = Path(source)
    if path.is_dir() and (path / "emkit.sqlite").is_file():
        return load_run(path, em, text=text, all_questions=all_questions)
    return load_sources([path], em, text=text, all_questions=all_questions)
