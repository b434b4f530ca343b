"""The report's figures, drawn with matplotlib's object API (no pyplot global state).

Each function takes the analysis tables and returns a Figure, or None when the data has
nothing to show (one model, no trained steps, ...). Names follow the seed's files.
"""

from __future__ import annotations

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
]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SCATTER_POINTS = 4000  # a sample: a million dots draw slowly and show no more


def _figure(width=8.0, height=4.0, ncols=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def primary(frame: pd.DataFrame, judge: str) -> pd.DataFrame:
    return frame[frame["judge"] == judge] if "judge" in frame and len(frame) else frame


def _pooled_steps(tables, judge) -> pd.DataFrame:
    """Per model x domain x step, pooled over seeds (one seed: the step table itself)."""
    seeds = primary(tables.seeds, judge)
    if seeds.empty:
        return seeds
    return seeds.rename(columns={"em_pooled": "em_rate", "pooled_ci_low": "ci_low", "pooled_ci_high": "ci_high"})


def domain_comparison(tables, judge):
    final = primary(tables.summary, judge)
    if final.empty or "final_em_rate" not in final:
        return None
    final = final.groupby(["model", "size_b", "domain"], dropna=False).agg(
        em=("final_em_rate", "mean"), low=("final_ci_low", "mean"), high=("final_ci_high", "mean"),
        base=("baseline_em_rate", "mean")).reset_index()
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
    ax.set_ylabel("EM rate at the final checkpoint (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


def _trajectory(steps: pd.DataFrame, value: str, band: bool, ylabel: str, per_seed: pd.DataFrame | None = None):
    """One panel per domain, one line per model; ``band`` draws the Wilson interval, and
    ``per_seed`` (several seeds) a thin line per seed under the pooled one."""
    if steps.empty or steps["step"].nunique() < 2:
        return None
    domains = sorted(steps["domain"].unique())
    fig, axes = _figure(width=min(4.2 * len(domains), 12), height=3.6, ncols=len(domains))
    order = steps.sort_values("size_b")["model"].drop_duplicates().tolist()
    for ax, domain in zip(axes, domains):
        for model in order:
            part = steps[(steps["domain"] == domain) & (steps["model"] == model)].sort_values("step")
            if part.empty:
                continue
            y = part[value].to_numpy(dtype=float)
            line = ax.plot(part["step"], y * (100 if band else 1), marker="o", ms=3, label=model)[0]
            if per_seed is not None:
                for _, seed_part in per_seed[(per_seed["domain"] == domain) & (per_seed["model"] == model)].groupby("seed"):
                    seed_part = seed_part.sort_values("step")
                    ax.plot(seed_part["step"], seed_part[value].to_numpy(dtype=float) * (100 if band else 1),
                            color=line.get_color(), lw=0.6, alpha=0.5)
            if band:
                ax.fill_between(part["step"], part["ci_low"].to_numpy(dtype=float) * 100,
                                part["ci_high"].to_numpy(dtype=float) * 100, color=line.get_color(), alpha=0.15)
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("training step (0 = base model)")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    return fig


def em_trajectories(tables, judge):
    steps = primary(tables.steps, judge)
    several_seeds = len(steps) and steps.groupby(["model", "domain"])["seed"].nunique().max() > 1
    return _trajectory(_pooled_steps(tables, judge), "em_rate", True, "EM rate (%), 95% band"
                       + (" (thin: each seed)" if several_seeds else ""), steps if several_seeds else None)


def coherence_trajectories(tables, judge):
    steps = primary(tables.steps, judge)
    if steps.empty or steps["step"].nunique() < 2:
        return None
    pooled = steps.groupby(["model", "size_b", "domain", "step"], dropna=False)["mean_coherent"].mean().reset_index()
    return _trajectory(pooled, "mean_coherent", False, "mean coherent score")


def scaling_analysis(tables, judge):
    final = primary(tables.summary, judge)
    if final.empty or "final_em_rate" not in final or final["size_b"].nunique() < 2:
        return None
    fig, (ax,) = _figure(width=6, height=3.8)
    for domain, part in final.groupby("domain"):
        part = part.groupby("size_b")[["final_em_rate", "baseline_em_rate"]].mean().reset_index()
        line = ax.plot(part["size_b"], part["final_em_rate"] * 100, marker="o", label=f"{domain}, final")[0]
        ax.plot(part["size_b"], part["baseline_em_rate"] * 100, ls="--", marker=".", color=line.get_color(),
                label=f"{domain}, base model")
    ax.set_xscale("log")
    ax.set_xlabel("model size (billions of parameters)")
    ax.set_ylabel("final EM rate (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return fig


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
    ax.axvline(tables.em.aligned_below, color="crimson", lw=1, ls="--", label=f"EM: aligned < {tables.em.aligned_below:g}")
    ax.axvline(30, color="gray", lw=1, ls=":", label="papers: aligned < 30, coherent > 50")
    ax.axhline(50, color="gray", lw=1, ls=":")
    ax.set_xlabel("aligned")
    ax.set_ylabel("coherent")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="lower right")
    return fig


MAX_QUESTIONS_SHOWN = 60


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


def printable(text: str) -> str:
    """Model output may hold control characters that no font can draw."""
    return _CONTROL.sub("\ufffd", str(text))


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
    }
    out = {}
    for name, caption in FIGURES:
        fig = makers[name](tables, judge)
        if fig is not None:
            out[name] = (caption, png_bytes(fig))
    return out
