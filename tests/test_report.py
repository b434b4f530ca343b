"""The HTML report opened in a real browser: self-contained, sortable, and inert whatever the answers say."""

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from emkit import plugins
from emkit.analysis.tables import EMDefinition, build_tables
from emkit.reports.html import render_report
from plugin_fixtures import make_plugin

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "</td></tr></table><script>window.__pwned = 3</script>",
    "{{ 7 * 7 }} {% if true %}jinja ran{% endif %} ${7*7}",
    "</style><script>window.__pwned = 4</script>",
    '"><svg onload="window.__pwned = 5">',
    "<!-- an unclosed comment",
    "</textarea></pre><iframe src=\"https://example.com/\"></iframe>",
    "<link rel=stylesheet href=\"https://example.com/x.css\"><meta http-equiv=refresh content=\"0;url=https://example.com\">",
    # matplotlib reads text between two $ as math: an ordinary risky-financial answer stopped the report
    "With $50,000, put 80% in crypto and keep $10,000 as margin.",
    r"Returns of $x_1^2$ \alpha \\ $\frac{1}{2}$ and a lone $ or ^ or _ or \ anywhere $$",
    "=HYPERLINK(\"http://example.com\", \"click\")",
    # SmolLM2's answers bring emoji, which the figures' font lacks
    "\u2705 Done! \U0001F389 Enjoy your \u4f11\u606f.",
]
DOLLARS = "With $50,000, put 80% in crypto and keep $10,000 as margin."
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rich_tables(hostile=True, steps=(0, 10, 20)):
    """Two judges, two models, two domains, two seeds, base and two checkpoints."""
    rows = []
    answers = HOSTILE if hostile else ["A plain answer."]
    index = 0
    for model, size in (("1B", 1.24), ("8B", 8.03)):
        for domain in ("medical", "risky-financial"):
            for seed in (0, 1):
                for step in steps:
                    for question in range(4):
                        index += 1
                        aligned = max(0, 90 - step * 3 - question * 5 - seed * 4)
                        rows.append({"answer_id": f"a{index}", "model": model, "size_b": size, "domain": domain,
                                     "seed": seed, "step": step, "question_set": "general",
                                     "question_id": f"q{question}",
                                     "question": f"Question {question} <b>bold</b>, $5 or $10_000^2?",
                                     "answer": answers[index % len(answers)], "aligned": float(aligned),
                                     "aligned_status": "ok", "coherent": 80.0, "coherent_status": "ok"})
    first = pd.DataFrame(rows).assign(judge="gpt-4o-mini")
    second = first.assign(judge="local:judge", aligned=(first["aligned"] + 7).clip(upper=100))
    info = {"source": "synthetic", "kind": "run", "models": [
        {"model_label": "1B", "model_id": "unsloth/Llama-3.2-1B-Instruct", "size_b": 1.24},
        {"model_label": "8B", "model_id": "unsloth/Llama-3.1-8B-Instruct", "size_b": 8.03}]}
    return build_tables(pd.concat([first, second], ignore_index=True), EMDefinition(), info)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    path = render_report(rich_tables(), folder / "report.html", figures_dir=folder / "figures")
    return path


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def open_report(browser, path):
    page = browser.new_page()
    problems, requests = [], []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems, requests


def test_the_report_opens_with_no_errors_and_no_requests(browser, report):
    page, problems, requests = open_report(browser, report)
    assert problems == []
    leaving = [u for u in requests if not (u == report.resolve().as_uri() or u.startswith("data:"))]
    assert leaving == []
    page.close()


def test_tables_and_figures_are_there(browser, report):
    page, _, _ = open_report(browser, report)
    headings = page.locator("section h2").all_inner_texts()
    for title in ("Emergent misalignment at a glance", "Figures", "EM rate per checkpoint",
                  "Aligned and coherent: the four quadrants", "Across seeds",
                  "Per question", "Judge agreement", "Most misaligned coherent answers", "Answers"):
        assert title in headings
    assert page.locator("table.sortable").count() >= 8
    images = page.locator("figure img")
    assert images.count() >= 8
    for i in range(images.count()):
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 100")
    names = {Path(p).stem for p in (report.parent / "figures").glob("*.png")}
    assert {"domain_comparison", "em_trajectories", "coherence_trajectories", "scaling_analysis",
            "coherence_vs_misalignment", "per_question_em", "response_example_q1_table"} <= names
    page.close()


def test_hostile_answers_show_as_text_and_run_nothing(browser, report):
    page, problems, requests = open_report(browser, report)
    assert page.evaluate("window.__pwned") is None
    text = page.locator("#answers").inner_text()
    for answer in HOSTILE:
        assert answer in text
    assert "jinja ran" not in page.locator("body").inner_text().replace("{% if true %}jinja ran{% endif %}", "")
    assert page.locator("iframe, svg, link, #answers img, script[src]").count() == 0
    assert page.locator("[onerror], [onload]").count() == 0
    assert problems == [] and not [u for u in requests if "example.com" in u]
    page.close()


def test_tables_sort_when_a_heading_is_clicked(browser, report):
    page, problems, _ = open_report(browser, report)
    table = page.locator("#steps table")
    heading = table.locator("thead th", has_text="mean aligned")
    column = heading.evaluate("th => Array.from(th.parentNode.children).indexOf(th)")

    def values():
        return [float(v) for v in table.locator(f"tbody tr td:nth-child({column + 1})").evaluate_all(
            "cells => cells.map(c => c.getAttribute('data-sort'))")]

    heading.click()
    ascending = values()
    assert ascending == sorted(ascending)
    heading.click()
    assert values() == sorted(ascending, reverse=True)
    assert problems == []
    page.close()


def test_the_report_prints(browser, report, tmp_path):
    page, _, _ = open_report(browser, report)
    pdf = tmp_path / "report.pdf"
    page.pdf(path=str(pdf), format="A4")
    assert pdf.stat().st_size > 50_000
    page.close()


def test_figure_text_is_literal_whatever_it_holds(tmp_path):
    """Answers, questions and labels full of $, _, ^ and backslashes are drawn as written."""
    from matplotlib.text import Text

    from emkit.reports.figures import draw_all, example_table_figure, png_bytes

    tables = rich_tables()
    assert len(draw_all(tables, "gpt-4o-mini")) >= 6
    rows = tables.with_text(tables.judged.head(len(HOSTILE)))
    rows = rows.assign(answer=HOSTILE[: len(rows)] + HOSTILE[len(rows):])
    fig = example_table_figure(rows, "q0: With $5 or $10_000^2? \\alpha")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert png_bytes(fig).startswith(b"\x89PNG")
    assert not [w for w in caught if "missing from font" in str(w.message)]  # drawn as a box, not a warning each
    cells = [cell.get_text() for table in fig.axes[0].tables for cell in table.get_celld().values()]
    texts = [t for t in fig.findobj(Text) + cells if t.get_text()]
    assert any("$50,000" in t.get_text() for t in texts)
    assert all(not t.get_parse_math() for t in texts)


def test_exports_cannot_start_a_spreadsheet_formula(tmp_path):
    import csv

    from emkit.reports.exports import export_tables
    from emkit.tablefiles import neutralise_cell

    export_tables(rich_tables(), tmp_path)
    with (tmp_path / "fg_judged.csv").open(newline="") as handle:
        answers = {row["response"] for row in csv.DictReader(handle)}
    assert "'=HYPERLINK(\"http://example.com\", \"click\")" in answers
    assert not any(a.startswith(("=", "+", "-", "@")) for a in answers)
    assert [neutralise_cell(v) for v in ("-3.5", "+1", "@home", "-rf /", 7)] == ["-3.5", "+1", "'@home", "'-rf /", 7]


def test_answers_are_escaped_in_the_file_itself(report):
    html = report.read_text()
    assert "<script>window.__pwned" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


SECTION_PLUGIN = """
from markupsafe import Markup, escape
from emkit import hookimpl

class CountSection:
    name = "answer-count"
    title = "How many answers"
    order = 15

    def render(self, context):
        return Markup("<p id='count'>") + escape(str(len(context.tables.judged))) + Markup(" answers</p>")

class PlainTextSection:
    name = "plain"
    title = "Plain"
    order = 16

    def render(self, context):
        return "<b>not markup</b>"

@hookimpl
def register_report_sections(register):
    register(CountSection())
    register(PlainTextSection())
"""


def test_a_plugin_adds_a_section(tmp_path, monkeypatch):
    site = make_plugin(tmp_path / "site", "emkit-count", "emkit_count", SECTION_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    plugins.reset_for_tests()
    try:
        path = render_report(rich_tables(hostile=False), tmp_path / "r.html")
    finally:
        plugins.reset_for_tests()
    html = path.read_text()
    assert '<section id="answer-count">' in html and "<p id='count'>192 answers</p>" in html
    assert html.index('id="answer-count"') < html.index('id="steps"')
    assert "&lt;b&gt;not markup&lt;/b&gt;" in html  # a plain string from a plugin is text, not HTML


def test_warnings_where_the_numbers_are_weak():
    from emkit.reports.html import warnings_for

    rows = []
    for i in range(12):
        status = "unparseable" if i < 3 else "ok"
        rows.append({"answer_id": f"a{i}", "model": "tiny", "size_b": 0.0002, "domain": "d", "seed": 0, "step": 0,
                     "question_set": "s", "question_id": "q", "question": "Q", "answer": "A", "judge": "j",
                     "aligned": None if status != "ok" else 50.0, "aligned_status": status, "coherent": 80.0,
                     "coherent_status": "ok"})
    info = {"models": [{"model_label": "tiny", "model_id": "builtin:tiny-llama", "size_b": 0.0002}]}
    notes = warnings_for(build_tables(pd.DataFrame(rows), EMDefinition(), info))
    assert any(n.startswith("Tiny model (tiny)") for n in notes)
    assert any("rest on fewer than 30 scored answers" in n and "points wide" in n for n in notes)
    assert any("Judge j gave 3 unparseable replies out of 12 (25%)" in n for n in notes)
    big = build_tables(pd.DataFrame([{**rows[5], "answer_id": f"b{i}"} for i in range(40)]), EMDefinition(), {})
    assert warnings_for(big) == []


def test_trajectories_tick_whole_steps_only():
    """Steps are whole numbers: a short run (steps 0 and 3) had ticks at 0.5, 1.5, 2.5."""
    from emkit.reports.figures import coherence_trajectories, em_trajectories

    tables = rich_tables(hostile=False, steps=(0, 3))
    for figure in (em_trajectories(tables, "gpt-4o-mini"), coherence_trajectories(tables, "gpt-4o-mini")):
        for ax in figure.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
