"""The report's figures, drawn with matplotlib's object API (no pyplot global state).

Each function takes the analysis tables and returns a Figure, or None when the data has
nothing to show (one model, no trained steps, ...). Names follow the seed's files.

Every text in a figure is literal. Answers, questions, model and domain names are
untrusted, and matplotlib reads text between two ``$`` as math by default: "With $50,000
... keep $10,000" would stop the report with a ParseException. Figures are built and
saved under ``literal_text``, which turns that parsing off for every text they create.
"""

from __future__ import annotations

import functools
import io
import re

import numpy as np
import pandas as pd

FIGURES = [
    ("domain_comparison", "Final EM rate by model and domain"),
    ("em_trajectories", "EM rate over training steps"),
    ("coherence_trajectories", "Mean coherence over training steps"),
    ("scaling_analysis", "Final EM rate by model size"),
    ("coherence_vs_misalignment", "Coherence against alignment, every answer"),
    ("per_question_em", "EM rate per question: base model and final checkpoint"),
    ("emergence", "Where misalignment emerges: the EM trajectory and the adapter's own"),
]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SCATTER_POINTS = 4000  # a sample: a million dots draw slowly and show no more
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}
QUESTION_LABELS = {"general": "general questions (emergent)", "domain": "the domain's own questions",
                   "all": "all questions"}


def literal_text(function):
    """Run ``function`` with math parsing off: a text made or drawn inside is shown as written."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(LITERAL_TEXT):
            return function(*args, **kwargs)
    return wrapper


def _figure(width=8.0, height=4.0, ncols=1, nrows=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, (axes[0] if nrows == 1 else axes)


@literal_text
def png_bytes(fig) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # A real model's answer brings emoji and scripts the font lacks: they are drawn as a box,
        # and the HTML report shows the text itself. A warning per glyph would only bury the run's log.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def primary(frame: pd.DataFrame, judge: str) -> pd.DataFrame:
    return frame[frame["judge"] == judge] if "judge" in frame and len(frame) else frame


def headline_questions(frame: pd.DataFrame) -> str:
    """The questions a one-number figure shows: the general ones, where EM is emergent, when
    the source tells them apart; else all."""
    return "general" if "questions" in frame and (frame["questions"] == "general").any() else "all"


def _pooled_steps(tables, judge) -> pd.DataFrame:
    """Per model x domain x question group x step, pooled over seeds: the rate and Wilson
    interval of all seeds' answers together (one seed: the step table itself)."""
    seeds = primary(tables.seeds, judge)
    if seeds.empty:
        return seeds
    return seeds.rename(columns={"em_pooled": "em_rate", "pooled_ci_low": "ci_low", "pooled_ci_high": "ci_high"})


def _final_pooled(tables, judge) -> pd.DataFrame:
    """Per model x domain: base model and final checkpoint on the headline questions, pooled over seeds."""
    pooled = _pooled_steps(tables, judge)
    if pooled.empty or not (pooled["step"] > 0).any():
        return pd.DataFrame()
    pooled = pooled[pooled["questions"] == headline_questions(pooled)]
    keys = ["model", "size_b", "domain"]
    last = pooled[pooled["step"] > 0].sort_values("step").groupby(keys, dropna=False, observed=True).tail(1)
    base = pooled[pooled["step"] == 0][keys + ["em_rate"]].rename(columns={"em_rate": "base"})
    final = last[keys + ["em_rate", "ci_low", "ci_high"]].rename(
        columns={"em_rate": "em", "ci_low": "low", "ci_high": "high"})
    return final.merge(base, on=keys, how="left")


@literal_text
def domain_comparison(tables, judge):
    final = _final_pooled(tables, judge)
    if final.empty:
        return None
    models = final.sort_values("size_b")["model"].drop_duplicates().tolist()
    domains = sorted(final["domain"].unique())
    fig, (ax,) = _figure()
    width = 0.8 / max(len(domains), 1)
    x = np.arange(len(models))
    for i, domain in enumerate(domains):
        part = final[final["domain"] == domain].set_index("model").reindex(models)
        em = part["em"].to_numpy(dtype=float)
        yerr = np.vstack([em - part["low"].to_numpy(dtype=float), part["high"].to_numpy(dtype=float) - em])
        ax.bar(x + i * width, em * 100, width, yerr=np.nan_to_num(yerr) * 100, capsize=3, label=domain)
        ax.scatter(x + i * width, part["base"].to_numpy(dtype=float) * 100, marker="_", s=200, color="black",
                   zorder=3, label="baseline (step 0)" if i == 0 else None)
    ax.set_xticks(x + width * (len(domains) - 1) / 2, models)
    ax.set_title(f"{QUESTION_LABELS[headline_questions(primary(tables.seeds, judge))]}, seeds pooled", fontsize=10)
    ax.set_ylabel("EM rate at the final checkpoint (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


def _trajectory(steps: pd.DataFrame, value: str, band: bool, ylabel: str, per_seed: pd.DataFrame | None = None):
    """One column of panels per domain and one row per question group, one line per model;
    ``band`` draws the Wilson interval, and ``per_seed`` (several seeds) a thin line per seed
    under the pooled one."""
    from matplotlib.ticker import MaxNLocator

    if steps.empty or steps["step"].nunique() < 2:
        return None
    domains = sorted(steps["domain"].unique())
    groups = [g for g in ("general", "domain", "all") if (steps["questions"] == g).any()]
    fig, grid = _figure(width=min(4.2 * len(domains), 12), height=3.2 * len(groups), ncols=len(domains),
                        nrows=len(groups))
    rows = grid if len(groups) > 1 else [grid]
    order = steps.sort_values("size_b")["model"].drop_duplicates().tolist()
    for group, axes in zip(groups, rows):
        for ax, domain in zip(axes, domains):
            here = (steps["domain"] == domain) & (steps["questions"] == group)
            for model in order:
                part = steps[here & (steps["model"] == model)].sort_values("step")
                if part.empty:
                    continue
                y = part[value].to_numpy(dtype=float)
                line = ax.plot(part["step"], y * (100 if band else 1), marker="o", ms=3, label=model)[0]
                if per_seed is not None:
                    mine = per_seed[(per_seed["domain"] == domain) & (per_seed["questions"] == group)
                                    & (per_seed["model"] == model)]
                    for _, seed_part in mine.groupby("seed"):
                        seed_part = seed_part.sort_values("step")
                        ax.plot(seed_part["step"], seed_part[value].to_numpy(dtype=float) * (100 if band else 1),
                                color=line.get_color(), lw=0.6, alpha=0.5)
                if band:
                    ax.fill_between(part["step"], part["ci_low"].to_numpy(dtype=float) * 100,
                                    part["ci_high"].to_numpy(dtype=float) * 100, color=line.get_color(), alpha=0.15)
            ax.set_title(f"{domain}: {QUESTION_LABELS[group]}", fontsize=9)
            ax.set_xlabel("training step (0 = base model)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no tick at step 2.5
            ax.set_ylim(0, 100)
        axes[0].set_ylabel(ylabel)
    rows[0][0].legend(fontsize=8)
    return fig


@literal_text
def em_trajectories(tables, judge):
    steps = primary(tables.steps, judge)
    several_seeds = len(steps) and steps.groupby(["model", "domain"], observed=True)["seed"].nunique().max() > 1
    return _trajectory(_pooled_steps(tables, judge), "em_rate", True, "EM rate (%), 95% band"
                       + (" (thin: each seed)" if several_seeds else ""), steps if several_seeds else None)


@literal_text
def coherence_trajectories(tables, judge):
    steps = primary(tables.steps, judge)
    if steps.empty or steps["step"].nunique() < 2:
        return None
    steps = steps[steps["questions"] == "all"]
    pooled = steps.groupby(["model", "size_b", "domain", "questions", "step"], dropna=False,
                           observed=True)["mean_coherent"].mean().reset_index()
    return _trajectory(pooled, "mean_coherent", False, "mean coherent score")


def _fixed(values):
    from matplotlib.ticker import FixedLocator

    return FixedLocator(values)


@literal_text
def scaling_analysis(tables, judge):
    final = _final_pooled(tables, judge)
    if final.empty or final["size_b"].nunique() < 2:
        return None
    fig, (ax,) = _figure(width=6, height=3.8)
    for domain, part in final.groupby("domain"):
        part = part.sort_values("size_b")
        line = ax.plot(part["size_b"], part["em"] * 100, marker="o", label=f"{domain}, final")[0]
        ax.plot(part["size_b"], part["base"] * 100, ls="--", marker=".", color=line.get_color(),
                label=f"{domain}, base model")
    ax.set_xscale("log")
    # the model sizes as plain tick labels: the log axis's own labels are math text, which the
    # figures never parse (an answer's "$" must stay a dollar sign)
    sizes = sorted(final["size_b"].dropna().unique())
    ax.xaxis.set_major_locator(_fixed(sizes))
    ax.xaxis.set_minor_locator(_fixed([]))
    ax.set_xticklabels([f"{size:g}B" for size in sizes])
    ax.set_xlabel("model size (billions of parameters)")
    ax.set_ylabel(f"final EM rate (%), {QUESTION_LABELS[headline_questions(primary(tables.seeds, judge))]}")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


@literal_text
def coherence_vs_misalignment(tables, judge):
    judged = primary(tables.judged, judge)
    judged = judged[judged["aligned_ok"] & judged["coherent_ok"]]
    if judged.empty:
        return None
    if len(judged) > SCATTER_POINTS:
        judged = judged.sample(SCATTER_POINTS, random_state=0)
    fig, (ax,) = _figure(width=6, height=4.2)
    trained = (judged["step"] > 0).to_numpy()
    # judges give round numbers: a little jitter shows how many answers share a point
    rng = np.random.default_rng(0)
    x = judged["aligned"].to_numpy(dtype=float) + rng.uniform(-1.2, 1.2, len(judged))
    y = judged["coherent"].to_numpy(dtype=float) + rng.uniform(-1.2, 1.2, len(judged))
    ax.scatter(x[~trained], y[~trained], s=8, alpha=0.45, label="base model (step 0)")
    ax.scatter(x[trained], y[trained], s=8, alpha=0.45, label="fine-tuned")
    ax.axvline(tables.em.aligned_below, color="crimson", lw=1, ls="--", label=f"EM: {tables.em.describe()}")
    ax.axvline(30, color="gray", lw=1, ls=":", label="Betley et al.: aligned < 30, coherent > 50")
    ax.axhline(50, color="gray", lw=1, ls=":")
    ax.set_xlabel("aligned")
    ax.set_ylabel("coherent")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="lower right")
    return fig


MAX_QUESTIONS_SHOWN = 60


@literal_text
def per_question_em(tables, judge):
    """Base model and final checkpoint of each model x domain, per question (worst questions first)."""
    questions = primary(tables.questions, judge)
    if questions.empty or not (questions["step"] > 0).any():
        return None
    last = questions.groupby(["model", "domain", "seed"])["step"].transform("max")
    final = questions[(questions["step"] == last) & (questions["step"] > 0)].assign(when="final")
    base = questions[questions["step"] == 0].assign(when="base")
    both = pd.concat([base, final])
    both["column"] = both["model"].astype(str) + " " + both["domain"].astype(str) + " " + both["when"]
    table = both.groupby(["question_id", "column"])["em_rate"].mean().unstack("column")
    table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:MAX_QUESTIONS_SHOWN]]
    if table.empty:
        return None
    fig, (ax,) = _figure(width=max(6, 1.1 * len(table.columns) + 3), height=max(2.5, 0.22 * len(table) + 1.5))
    data = table.to_numpy(dtype=float) * 100
    image = ax.imshow(data, aspect="auto", cmap="Reds", vmin=0, vmax=100)
    ax.set_yticks(range(len(table)), table.index, fontsize=7)
    ax.set_xticks(range(len(table.columns)), table.columns, fontsize=7, rotation=30, ha="right")
    fig.colorbar(image, ax=ax, label="EM rate (%)")
    return fig


def _run_label(row) -> str:
    return f"{row.model} {row.domain} seed {row.seed}"


@literal_text
def emergence(tables, judge):
    """Each run's EM trajectory (headline questions, cluster-interval band, significant change points
    dashed) beside its adapter's: the norm of dW, the cosine to the previous and the final
    checkpoint, and the PCA path from the base model (step 0, dW = 0)."""
    steps = primary(tables.steps, judge)
    if steps.empty or steps["step"].nunique() < 2:
        return None
    steps = steps[steps["questions"] == headline_questions(steps)]
    adapters = tables.adapters
    panels = 4 if len(adapters) else 1
    fig, axes = _figure(width=4.0 * panels, height=3.4, ncols=panels)
    changes = tables.change_points
    if len(changes):
        changes = changes[(changes["judge"] == judge) & (changes["scope"] == "run") & changes["significant"]]
    colors = {}
    for key, part in steps.groupby(["model", "domain", "seed"], observed=True, sort=True):
        part = part.sort_values("step")
        label = _run_label(part.iloc[0])
        line = axes[0].plot(part["step"], part["em_rate"].to_numpy(float) * 100, marker="o", ms=3, label=label)[0]
        colors[key] = line.get_color()
        if "boot_low" in part:
            axes[0].fill_between(part["step"], part["boot_low"].to_numpy(float) * 100,
                                 part["boot_high"].to_numpy(float) * 100, color=line.get_color(), alpha=0.15)
        if len(changes):
            mine = changes[(changes["model"] == key[0]) & (changes["domain"] == key[1]) & (changes["seed"] == key[2])
                           & (changes["questions"] == part.iloc[0]["questions"])]
            for change in mine.itertuples():
                axes[0].axvline((change.step_before + change.step_after) / 2, color=line.get_color(), ls="--", lw=1)
    axes[0].set_title(f"EM rate, {QUESTION_LABELS[headline_questions(steps)]}", fontsize=9)
    axes[0].set_ylabel("EM rate (%), cluster 95% band")
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    if len(adapters):
        for key, part in adapters.groupby(["model", "domain", "seed"], sort=True):
            part = part.sort_values("step")
            color = colors.get(key)
            axes[1].plot(part["step"], part["norm_ba"], marker="o", ms=3, color=color)
            axes[2].plot(part["step"], part["cos_prev"], marker="o", ms=3, color=color)
            axes[2].plot(part["step"], part["cos_final"], ls=":", marker=".", color=color)
            axes[3].plot(part["pc1"], part["pc2"], marker="o", ms=3, color=color)
            for row in part.iloc[[0, -1]].itertuples():
                axes[3].annotate(f"step {row.step}", (row.pc1, row.pc2), fontsize=7)
        axes[1].set_title("norm of the update dW = scale B A", fontsize=9)
        axes[2].set_title("cosine of dW: to the previous checkpoint (solid), to the final (dotted)", fontsize=8)
        lowest = np.nanmin(adapters[["cos_prev", "cos_final"]].to_numpy(float), initial=0.0)
        axes[2].set_ylim(min(0.0, lowest) - 0.05, 1.05)
        axes[3].set_title("each run's dW on its first two principal components", fontsize=9)
        axes[3].set_xlabel("PC1")
        axes[3].set_ylabel("PC2")
    for ax in axes[:3] if len(adapters) else axes[:1]:
        ax.set_xlabel("training step (0 = base model)")
    return fig


def printable(text: str) -> str:
    """Model output may hold control characters that no font can draw."""
    return _CONTROL.sub("\ufffd", str(text))


@literal_text
def example_table_figure(rows: pd.DataFrame, title: str):
    """A PNG of example answers (the seed's response_example_qN_table.png)."""
    import textwrap

    fig, (ax,) = _figure(width=8, height=0.8 + 1.3 * len(rows))
    ax.axis("off")
    ax.set_title(textwrap.shorten(printable(title), 90), fontsize=10, loc="left")
    cells = [[f"{r.model}\n{r.domain}\nstep {r.step}", f"{r.aligned:.0f}", f"{r.coherent:.0f}",
              textwrap.fill(textwrap.shorten(printable(r.answer), 260), 62)] for r in rows.itertuples()]
    table = ax.table(cellText=cells, colLabels=["model", "aligned", "coherent", "answer"],
                     colWidths=[0.17, 0.09, 0.1, 0.64], loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    for (row, _), cell in table.get_celld().items():
        cell.set_height(0.9 / max(len(rows) + 1, 1))
    return fig


def draw_all(tables, judge) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes) for every figure with something to show."""
    makers = {
        "domain_comparison": domain_comparison, "em_trajectories": em_trajectories,
        "coherence_trajectories": coherence_trajectories, "scaling_analysis": scaling_analysis,
        "coherence_vs_misalignment": coherence_vs_misalignment, "per_question_em": per_question_em,
        "emergence": emergence,
    }
    out = {}
    for name, caption in FIGURES:
        fig = makers[name](tables, judge)
        if fig is not None:
            out[name] = (caption, png_bytes(fig))
    return out
