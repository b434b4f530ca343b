"""The report's built-in outputs, registered like any plugin's (``register_report_writers``):
the CSV exports of a run directory, then the HTML report with its figures."""

from __future__ import annotations

from pathlib import Path

from emkit.interfaces import ReportTarget
from emkit.hookspecs import hookimpl


class ExportsWriter:
    name = "exports"
    order = 10

    def write(self, tables, target: ReportTarget) -> list[Path]:
        if target.exports is None:
            return []
        from emkit.reports.exports import export_tables

        return export_tables(tables, target.exports)


class HtmlWriter:
    name = "html"
    order = 20

    def write(self, tables, target: ReportTarget) -> list[Path]:
        from emkit.reports.html import render_report

        return [render_report(tables, target.html, figures_dir=target.figures, registry=target.registry)]


@hookimpl
def register_report_writers(register):
    register(ExportsWriter())
    register(HtmlWriter())
