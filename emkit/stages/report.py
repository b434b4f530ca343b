"""Stage 4, analyze and report: tables from the store, then every registered report writer
(the built-in ones: CSV exports, PNG figures, report.html)."""

from __future__ import annotations

import logging
from pathlib import Path

from emkit.interfaces import ReportTarget

log = logging.getLogger("emkit")


def write_reports(tables, target: ReportTarget, registry) -> list[Path]:
    """Each report writer in its order (``register_report_writers``); the paths they wrote."""
    from emkit.errors import EmkitError

    target.registry = target.registry or registry
    writers = sorted(registry.all("report_writers"), key=lambda w: (w.order, w.name))
    if not writers:  # an install older than the hook: the built-in writers' entry point is missing
        raise EmkitError("No report writer is registered, so no report can be written; reinstall emkit "
                         "(`pip install -e .` in its checkout) and run `emkit report RUN_DIR`.")
    written: list[Path] = []
    for writer in writers:
        written += writer.write(tables, target) or []
    return written


def report_stage(run_dir, registry):
    """Write the report and exports; return the run's tables (the trackers are sent their numbers)."""
    from emkit.analysis import load_run

    tables = load_run(run_dir.path, text=False)  # the report fetches the texts it shows
    write_reports(tables, ReportTarget(html=run_dir.report, exports=run_dir.exports, figures=run_dir.figures),
                  registry)
    log.info("report: %s (tables in %s, figures in %s)", run_dir.report, run_dir.exports, run_dir.figures)
    return tables
