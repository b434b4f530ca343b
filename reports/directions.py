"""The report's "Where misalignment lives" section: directions, their timeline, their cosines, interventions.

Shown where `emkit directions` (and `emkit intervene`) stored something. A figure per training
run puts, on one step axis, the EM rate, the answers' mean projection on the run's reference
direction at its best layer, and the adapter's norm; a fourth panel gives the held-out AUROC of
the final checkpoint's direction at every layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emkit.reports.figures import _figure, headline_questions, literal_text, png_bytes, primary

MOST_FIGURES = 12  # runs drawn; the tables and exports/directions.csv have every one


def direction_judge(directions: pd.DataFrame, judge: str) -> str | None:
    """The report's judge where the directions were found with it, else the judge they were found with."""
    if directions.empty:
        return None
    judges = list(pd.unique(directions["judge"]))
    return judge if judge in judges else judges[0]


def best_layers(directions: pd.DataFrame) -> dict[str, int]:
    """run_key -> the layer whose final-checkpoint direction separates held-out answers best (ties: the first)."""
    out = {}
    for run_key, part in directions.groupby("run_key", sort=True):
        final = part[part["step"] == part["step"].max()].dropna(subset=["auroc"])
        if len(final):
            out[run_key] = int(final.sort_values(["auroc", "layer"], ascending=[False, True]).iloc[0]["layer"])
    return out


@literal_text
def run_figure(run: dict, directions: pd.DataFrame, steps: pd.DataFrame, adapters: pd.DataFrame, layer: int):
    fig, axes = _figure(width=16.0, height=3.3, ncols=4)
    if len(steps):
        steps = steps.sort_values("step")
        axes[0].plot(steps["step"], steps["em_rate"].to_numpy(float) * 100, marker="o", ms=3)
        if "boot_low" in steps:
            axes[0].fill_between(steps["step"], steps["boot_low"].to_numpy(float) * 100,
                                 steps["boot_high"].to_numpy(float) * 100, alpha=0.15)
        axes[0].set_title(f"EM rate, {headline_questions(steps)} questions", fontsize=9)
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("EM rate (%), cluster 95% band")
    at_layer = directions[directions["layer"] == layer].sort_values("step")
    for column, style, label in (("projection_all", "-", "all answers"), ("projection_misaligned", "--", "misaligned"),
                                 ("projection_aligned", ":", "aligned")):
        if column in at_layer and at_layer[column].notna().any():
            axes[1].plot(at_layer["step"], at_layer[column].to_numpy(float), ls=style, marker="o", ms=3, label=label)
    axes[1].set_title(f"mean projection on the final direction, layer {layer}", fontsize=9)
    axes[1].legend(fontsize=7)
    if len(adapters):
        adapters = adapters.sort_values("step")
        axes[2].plot(adapters["step"], adapters["norm_ba"].to_numpy(float), marker="o", ms=3)
    axes[2].set_title("norm of the adapter's update dW", fontsize=9)
    final = directions[directions["step"] == directions["step"].max()].sort_values("layer")
    axes[3].plot(final["layer"], final["auroc"].to_numpy(float), marker="o", ms=3)
    axes[3].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[3].set_ylim(0, 1.02)
    axes[3].set_title(f"held-out AUROC by layer, step {int(final['step'].max())}", fontsize=9)
    axes[3].set_xlabel("layer")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[:3]:
        ax.set_xlabel("training step (0 = base model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[3].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{run['model']} {run['domain']} seed {run['seed']}", fontsize=10)
    return fig


def draw(tables, judge: str) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG) of every run's figure (the first MOST_FIGURES runs)."""
    directions = tables.directions
    chosen = direction_judge(directions, judge)
    if chosen is None:
        return {}
    directions = directions[directions["judge"] == chosen]
    steps = primary(tables.steps, chosen)
    adapters = tables.adapters
    out = {}
    for number, (run_key, layer) in enumerate(sorted(best_layers(directions).items())):
        if number == MOST_FIGURES:
            break
        mine = directions[directions["run_key"] == run_key]
        run = mine.iloc[0][["model", "domain", "seed"]].to_dict()
        own_steps = steps[(steps["model"] == run["model"]) & (steps["domain"] == run["domain"])
                          & (steps["seed"] == run["seed"])] if len(steps) else steps
        if len(own_steps):
            own_steps = own_steps[own_steps["questions"] == headline_questions(own_steps)]
        own_adapters = adapters[adapters["run_key"] == run_key] if len(adapters) else adapters
        fig = run_figure(run, mine, own_steps, own_adapters, layer)
        out[f"directions_{number + 1}"] = (f"{run['model']} {run['domain']} seed {run['seed']}: EM, projection on "
                                           f"the direction, adapter norm, AUROC by layer", png_bytes(fig))
    return out


def prepare(context):
    """The section's values, or None where no direction was stored."""
    from emkit.directions.intervene import describe

    tables = context.tables
    directions = tables.directions
    interventions = context.primary(tables.interventions)
    chosen = direction_judge(directions, context.judge)
    if chosen is None and interventions.empty:
        return None
    runs, similarity, forming = [], [], []
    if chosen is not None:
        directions = directions[directions["judge"] == chosen]
        best = best_layers(directions)
        for run_key, part in directions.groupby("run_key", sort=True):
            final_step = part["step"].max()
            final = part[part["step"] == final_step]
            layer = best.get(run_key)
            row = final[final["layer"] == layer].iloc[0] if layer is not None else final.iloc[0]
            at_layer = part[part["layer"] == row["layer"]].set_index("step")
            runs.append({**row.to_dict(), "best_layer": layer, "final_step": final_step,
                         "projection_base": at_layer["projection_all"].get(0, np.nan),
                         "projection_final": at_layer["projection_all"].get(final_step, np.nan)})
        similarity = final_cosines(tables.direction_similarity, directions, best)
        # how each run's direction forms: every checkpoint's at the best layer, against the final one
        at_best = directions[directions["layer"] == directions["run_key"].map(best)]
        forming = at_best.sort_values(["model", "domain", "seed", "step"]).to_dict("records")
    rows = interventions.to_dict("records")
    for row in rows:
        row["layers_text"] = ",".join(map(str, row["layers"]))
        row["change_text"] = signed_points(row["change"])
        row["change_interval"] = f"[{signed_points(row['change_low'])}, {signed_points(row['change_high'])}]"
    # a sentence per intervention, on the headline questions (the general ones, where EM is emergent)
    headline = headline_questions(interventions) if len(interventions) else "all"
    sentences = [{**row, "sentence": describe(row)} for row in rows if row["questions"] == headline]
    figures = {name: figure for name, figure in context.figures.items() if name.startswith("directions_")}
    return {"judge": chosen, "runs": runs, "similarity": similarity, "forming": forming, "interventions": rows,
            "sentences": sentences, "figures": figures}


def signed_points(rate_change) -> str:
    """A change of rates in percentage points, signed, one decimal: +19.0, -4.5, 0.0."""
    if rate_change != rate_change:
        return "n/a"
    points = round(float(rate_change) * 100, 1)
    return f"{points:+.1f}" if points else "0.0"


def final_cosines(similarity: pd.DataFrame, directions: pd.DataFrame, best: dict[str, int]) -> list[dict]:
    """The cosine of every two runs' final directions (one model), at the layer of the first run's best."""
    if similarity.empty:
        return []
    finals = directions.groupby("run_key")["step"].max().to_dict()
    pairs = similarity[similarity["judge"].isin(directions["judge"].unique())
                       & (similarity["run_key_a"] != similarity["run_key_b"])
                       & (similarity["step_a"] == similarity["run_key_a"].map(finals))
                       & (similarity["step_b"] == similarity["run_key_b"].map(finals))]
    pairs = pairs[pairs["layer"] == pairs["run_key_a"].map(best)]
    return pairs.sort_values(["model_a", "domain_a", "seed_a", "domain_b", "seed_b"]).to_dict("records")
