"""emkit: reproduce and extend emergent-misalignment experiments.

The package is importable without torch; heavy libraries are imported by the stage
or plugin that needs them.
"""

__version__ = "0.1.0"

from emkit.hookspecs import hookimpl  # noqa: E402  (plugins write `from emkit import hookimpl`)

__all__ = ["__version__", "hookimpl", "load"]


def load(run_dir):
    """Load a run directory's results as pandas DataFrames (see emkit.analysis.RunTables)."""
    from emkit.analysis import load_run

    return load_run(run_dir)
