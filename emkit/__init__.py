"""emkit: reproduce and extend emergent-misalignment experiments.

The package is importable without torch; heavy libraries are imported by the stage
or plugin that needs them.
"""

__version__ = "0.1.0"

from emkit.hookspecs import hookimpl  # noqa: E402  (plugins write `from emkit import hookimpl`)

__all__ = ["__version__", "hookimpl", "load"]


def load(source, em=None):
    """Load a run directory's results, or a judged-answer file (CSV or JSONL), as pandas
    DataFrames (see emkit.analysis.RunTables). ``em``: a definition's name (seed, betley,
    model-organisms) or an ``EMDefinition``; default: the run's config, else seed."""
    from emkit.analysis import em_definition, load_source

    if isinstance(em, str):
        em = em_definition(em)
    return load_source(source, em)
