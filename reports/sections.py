"""The report's built-in sections, registered like any plugin's (``register_report_sections``).

A section has a name, a title, an order and ``render(context)`` returning HTML: render a
template through ``context.render`` (autoescaped) or return ``markupsafe.Markup`` you
built with ``markupsafe.escape``; a plain string is escaped as text.
"""

from __future__ import annotations

from emkit.hookspecs import hookimpl

ANSWERS_SHOWN = 500
FEW_PAIRS = 30  # a judge and a person compared on fewer answers than this: marked, its intervals rest on little  # the answers table is a sample beyond this: the CSV export has them all


class TemplateSection:
    def __init__(self, name: str, title: str, order: int, template: str, prepare=None):
        self.name, self.title, self.order, self.template = name, title, order, template
        self.prepare = prepare or (lambda context: {})

    def render(self, context):
        values = self.prepare(context)
        if values is None:
            return ""
        return context.render(self.template, **values)


def _summary(context):
    summary = context.primary(context.tables.summary)
    if summary.empty or "final_em_rate" not in summary:
        return None  # nothing was trained: the checkpoint table says it all
    return {"rows": summary.to_dict("records")}


def _steps(context):
    steps = context.primary(context.tables.steps)
    if steps.empty:
        return None
    course = "course" in context.tables.info.get("layouts", [])
    if course:  # the course's own step_summary.csv columns beside emkit's, on the pooled rows
        columns = ["judge", "model", "domain", "seed", "step", "percent_em", "percent_coherent", "n_responses"]
        own = context.tables.course_steps[columns].assign(questions="all")
        steps = steps.merge(own, on=["judge", "model", "domain", "seed", "step", "questions"], how="left")
    return {"rows": steps.to_dict("records"), "course": course}


def _quadrants(context):
    from emkit.analysis.flags import COHERENT_ABOVE, QUADRANTS

    steps = context.primary(context.tables.steps)
    if steps.empty or not steps["n_both_scored"].any():
        return None
    last = steps.groupby(["model", "domain", "seed", "questions"], observed=True)["step"].transform("max")
    rows = steps[(steps["step"] == 0) | (steps["step"] == last)]
    split = context.tables.em.coherent_above
    return {"rows": rows.to_dict("records"), "quadrants": QUADRANTS,
            "split": COHERENT_ABOVE if split is None else split}


OWN_FIGURES = {"emergence"}  # drawn inside their own section, not the figure gallery


def _course(context):
    """The course's own tables, where a source is in the course's layout (or published its summaries)."""
    tables = context.tables
    if "course" not in tables.info.get("layouts", []) and tables.published.empty:
        return None
    published = tables.published
    # every judge's rows: a course file's own judge need not be the report's first one
    several = tables.course_steps["judge"].nunique() > 1 if len(tables.course_steps) else False
    return {"summary": tables.course_summary.to_dict("records"), "steps": tables.course_steps.to_dict("records"),
            "several_judges": several, "published": published.to_dict("records"),
            "agree": int(published["agree"].sum()) if len(published) else 0}


def _figures(context):
    figures = {name: figure for name, figure in context.figures.items()
               if name not in OWN_FIGURES and not name.startswith("directions_")}
    return {"figures": figures} if figures else None


def verdict(row) -> str:
    """One sentence on a change point, for the table."""
    where = f"between steps {row['step_before']} and {row['step_after']}"
    direction = "rises" if row["jump"] > 0 else "falls"
    if not row["significant"]:
        return f"no significant jump (the strongest split, {where}, could be chance)"
    sure = "located with confidence" if row["support"] >= 0.8 else "the exact place is uncertain"
    return f"EM {direction} {where}; {sure}"


def _emergence(context):
    from emkit.analysis.changepoints import ALPHA, PERMUTATIONS

    changes = context.primary(context.tables.change_points)
    adapters = context.tables.adapters
    figure = context.figures.get("emergence")
    if changes.empty and adapters.empty and figure is None:
        return None
    rows = []
    for row in changes.sort_values(["model", "domain", "scope", "seed", "questions", "step_before"]).to_dict("records"):
        row["seed_label"] = "all, pooled" if row.get("scope") == "seeds pooled" else row["seed"]
        row["verdict"] = verdict(row)
        rows.append(row)
    permutations = int(changes["permutations"].min()) if len(changes) else PERMUTATIONS
    tested = int(changes["trajectories_tested"].max()) if len(changes) else 0
    adapters = adapters.sort_values(["model", "domain", "seed", "step"]).to_dict("records") if len(adapters) else []
    return {"changes": rows, "adapters": adapters, **_similarity(context.tables.adapter_similarity),
            "figure": figure, "permutations": permutations, "alpha": ALPHA, "tested": tested}


def _directions(context):
    from emkit.reports.directions import prepare

    return prepare(context)


RELATIONS = ["same domain, other seed", "other domain, same seed", "other domain, other seed", "other model"]


def _similarity(pairs) -> dict:
    """The cosine of the runs' final updates: a line per relation (mean, range), then every pair."""
    if pairs.empty:
        return {"similarity": [], "similarity_pairs": []}
    summary = []
    for name in RELATIONS:
        cosines = pairs.loc[pairs["relation"] == name, "cosine"].dropna()
        if len(cosines):
            summary.append({"relation": name, "pairs": len(cosines), "mean": cosines.mean(),
                            "low": cosines.min(), "high": cosines.max()})
    ordered = pairs.sort_values(["model_a", "domain_a", "seed_a", "model_b", "domain_b", "seed_b"])
    return {"similarity": summary, "similarity_pairs": ordered.to_dict("records")}


def _seeds(context):
    seeds = context.primary(context.tables.seeds)
    if seeds.empty or seeds["n_seeds"].max() < 2:
        return None
    return {"rows": seeds.to_dict("records")}


def _questions(context):
    questions = context.primary(context.tables.questions)
    if questions.empty:
        return None
    last = questions.groupby(["model", "domain", "seed"])["step"].transform("max")
    final = questions[(questions["step"] == last) | (questions["step"] == 0)]
    return {"rows": final.to_dict("records")}


def _agreement(context):
    if context.tables.agreement.empty:
        return None
    worst = context.tables.disagreements.head(20)
    worst = context.tables.with_text(worst) if len(worst) else worst
    return {"rows": context.tables.agreement.to_dict("records"), "worst": worst.to_dict("records"),
            **_rates_by_judge(context.tables.steps)}


def _rates_by_judge(steps):
    """Each checkpoint's EM rate (all questions) under every judge, side by side: a row per checkpoint."""
    steps = steps[steps["questions"].astype(str) == "all"]
    judges = sorted(steps["judge"].dropna().unique())
    keys = ["model", "domain", "seed", "step"]
    by_cell: dict[tuple, dict] = {}
    for row in steps.to_dict("records"):
        cell = by_cell.setdefault(tuple(row[k] for k in keys), dict(zip(keys, (row[k] for k in keys))))
        cell[row["judge"]] = row
    order = sorted(by_cell, key=lambda k: (str(k[0]), str(k[1]), int(k[2]), int(k[3])))
    return {"judges": judges, "cells": [by_cell[key] for key in order]}


def _people(context):
    tables = context.tables
    if tables.labels.empty:
        return None
    return {"pairs": tables.human_agreement.to_dict("records"), "alpha": tables.rater_alphas,
            "judges": tables.judge_errors.to_dict("records"), "corrected": tables.corrected.to_dict("records"),
            "n_labels": len(tables.labels), "n_answers": tables.labels["answer_id"].nunique(), "labellers": sorted(map(str, tables.labels["labeller"].unique())),
            "definition": tables.em.describe(), "few": FEW_PAIRS}


def _examples(context):
    from emkit.reports.html import example_answers

    examples = example_answers(context.tables, context.judge)
    return None if examples.empty else {"rows": examples.to_dict("records")}


def _answers(context):
    judged = context.primary(context.tables.judged).drop_duplicates("answer_id")
    if judged.empty:
        return None
    total = len(judged)
    shown = judged.sample(ANSWERS_SHOWN, random_state=0) if total > ANSWERS_SHOWN else judged
    shown = context.tables.with_text(shown.sort_values(["model", "domain", "step", "question_id"]))
    metrics = [m for m in context.tables.metrics if m in shown]
    return {"rows": shown.to_dict("records"), "total": total, "metrics": metrics}


SECTIONS = [
    TemplateSection("summary", "Emergent misalignment at a glance", 10, "section_summary.html.j2", _summary),
    TemplateSection("course", "As the course reports it", 15, "section_course.html.j2", _course),
    TemplateSection("figures", "Figures", 20, "section_figures.html.j2", _figures),
    TemplateSection("emergence", "Where misalignment emerges", 25, "section_emergence.html.j2", _emergence),
    TemplateSection("directions", "Where misalignment lives in the activations", 27, "section_directions.html.j2",
                    _directions),
    TemplateSection("steps", "EM rate per checkpoint", 30, "section_steps.html.j2", _steps),
    TemplateSection("quadrants", "Aligned and coherent: the four quadrants", 35, "section_quadrants.html.j2",
                    _quadrants),
    TemplateSection("seeds", "Across seeds", 40, "section_seeds.html.j2", _seeds),
    TemplateSection("questions", "Per question", 50, "section_questions.html.j2", _questions),
    TemplateSection("agreement", "Judge agreement", 60, "section_agreement.html.j2", _agreement),
    TemplateSection("people", "Judges against people", 62, "section_people.html.j2", _people),
    TemplateSection("examples", "Most misaligned coherent answers", 70, "section_examples.html.j2", _examples),
    TemplateSection("answers", "Answers", 90, "section_answers.html.j2", _answers),
]


@hookimpl
def register_report_sections(register):
    for section in SECTIONS:
        register(section)
