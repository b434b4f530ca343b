"""emkit: reproduce and extend emergent-misalignment experiments.

The package is importable without torch; heavy libraries are imported by the stage
or plugin that needs them.
"""

__version__ = "0.1.0"

from emkit.hookspecs import hookimpl  # noqa: E402  (plugins write `from emkit import hookimpl`)

__all__ = ["__version__", "hookimpl", "load", "read_csv"]


def load(source, *more, em=None, all_questions: bool = False):
    """Load results as pandas DataFrames (see emkit.analysis.RunTables): a run directory, a
    judged-answer file (CSV or JSONL), a folder of them, or several of these (each its own run,
    named by its path). ``em``: a definition's name (seed, betley, model-organisms) or an
    ``EMDefinition``; default: the run's config, else seed. ``all_questions``: count the questions
    the definition's paper leaves out too."""
    from emkit.analysis import em_definition, load_source, load_sources

    if isinstance(em, str):
        em = em_definition(em)
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    sources += list(more)
    if len(sources) == 1:
        return load_source(sources[0], em, all_questions=all_questions)
    return load_sources(sources, em, text=True, all_questions=all_questions)


def read_csv(path):
    """A CSV emkit wrote (an export, `emkit judge`'s output) with every text cell exactly as stored:
    text kept as text and the spreadsheet formula guard undone (emkit.tablefiles)."""
    from emkit.tablefiles import read_csv as read

    return read(path)
