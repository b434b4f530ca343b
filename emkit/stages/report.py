"""Stage 4, analyze and report: tables from the store, CSV exports, PNG figures, report.html."""

from __future__ import annotations

import logging

log = logging.getLogger("emkit")


def report_stage(run_dir, registry) -> None:
    from emkit.analysis import load_run
    from emkit.reports.exports import export_tables
    from emkit.reports.html import render_report

    tables = load_run(run_dir.path, text=False)  # the report fetches the texts it shows
    export_tables(tables, run_dir.exports)
    render_report(tables, run_dir.report, figures_dir=run_dir.figures, registry=registry)
    log.info("report: %s (tables in %s, figures in %s)", run_dir.report, run_dir.exports, run_dir.figures)
