"""The HTML report: analysis tables rendered with Jinja2, figures inlined. Installed as emkit.reports."""
