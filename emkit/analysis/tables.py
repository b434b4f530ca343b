"""The tables every report, export and summary is made of: pandas over the judged answers.

``judged`` has one row per answer and judge (a baseline answer appears once per domain
it is the step-0 point of), with one score and one status column per metric, and the flags the
EM definition sets (emkit.analysis.flags). Every other table is a group-by of it: additive
counts per question, rolled up to checkpoints, question sets, runs and seeds pooled, with
Wilson's intervals (emkit.analysis.stats), the cluster bootstrap's and the changes between
checkpoints (emkit.analysis.bootstrap), change points (emkit.analysis.changepoints) and judge
agreement (emkit.analysis.agreement). ``build_tables`` makes them all; ``RunTables`` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from emkit.analysis.agreement import judge_agreement
from emkit.analysis.bootstrap import step_changes, with_bootstrap
from emkit.analysis.flags import ALL, NON_OK, QUADRANTS, QUESTION_GROUPS, add_flags
from emkit.analysis.stats import wilson_interval
from emkit.em import EMDefinition

RUN_KEYS = ["judge", "model", "size_b", "domain", "seed"]
TRAJECTORY = RUN_KEYS + ["questions"]  # one EM trajectory: its rates over the steps
# RunTables.interventions (emkit.analysis.interventions): what is described, then each arm and the change
INTERVENTION_COLUMNS = ["judge", "model", "size_b", "domain", "seed", "run_key", "step", "intervention", "questions",
                        "kind", "scale", "layers", "source", "n_with", "em_with", "low_with", "high_with", "n_without",
                        "em_without", "low_without", "high_without", "change", "change_low", "change_high",
                        "coherent_with", "coherent_without", "generator_with", "generator_without"]


@dataclass
class RunTables:
    """The analysis of one source. ``judged`` may leave the question and answer texts in the
    store; ``with_text(frame)`` adds them to the rows one needs."""

    judged: pd.DataFrame
    steps: pd.DataFrame
    by_question_set: pd.DataFrame
    questions: pd.DataFrame
    summary: pd.DataFrame
    seeds: pd.DataFrame
    agreement: pd.DataFrame
    disagreements: pd.DataFrame
    em: EMDefinition
    info: dict = field(default_factory=dict)
    text_loader: Callable | None = None  # answer ids (or None: all) -> answer_id, system, question, answer
    change_points: pd.DataFrame = field(default_factory=pd.DataFrame)
    # counts per question of every trajectory row (general, domain and all; step 0 in each seed):
    # what the cluster bootstrap resamples
    question_counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    adapter_loader: Callable | None = None  # () -> (per module, per checkpoint, similarity): emkit.analysis.adapters
    # the course's own step_summary.csv and em_rates_summary.csv columns (emkit.analysis.course)
    course_steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    course_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the numbers a results tree published beside its files, next to emkit's (course layout)
    published: pd.DataFrame = field(default_factory=pd.DataFrame)
    # people's labels (emkit.labels) and the judges measured against them (emkit.analysis.human)
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)
    human_agreement: pd.DataFrame = field(default_factory=pd.DataFrame)
    rater_alphas: dict = field(default_factory=dict)
    corrected: pd.DataFrame = field(default_factory=pd.DataFrame)
    judge_errors: pd.DataFrame = field(default_factory=pd.DataFrame)
    _adapter_tables: tuple | None = field(default=None, repr=False)
    directions_loader: Callable | None = None  # () -> (directions, similarity): emkit.analysis.directions
    _direction_tables: tuple | None = field(default=None, repr=False)
    # (judged, em) -> EM with and without each intervention: emkit.analysis.interventions
    interventions_loader: Callable | None = None
    _intervention_table: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def adapters(self) -> pd.DataFrame:
        """The adapter's trajectory, a row per checkpoint (and step 0) of every training run: norms of
        A, B and dW = scale B A, cosine to the previous and final checkpoint, the PCA path."""
        return self._adapters()[1]

    @property
    def adapter_modules(self) -> pd.DataFrame:
        """The norms of A, B and BA per checkpoint, layer and module."""
        return self._adapters()[0]

    @property
    def adapter_similarity(self) -> pd.DataFrame:
        """The cosine between the final updates dW of every two runs on the same base model (a row
        per pair: model, domain and seed of each side, their steps, the cosine)."""
        return self._adapters()[2]

    def _adapters(self) -> tuple:
        if self._adapter_tables is None:
            from emkit.analysis.adapters import MODULE_COLUMNS, SIMILARITY_COLUMNS, STEP_COLUMNS

            described = ["model", "domain", "seed"]  # what load_run adds to each run_key
            pairs = [f"{column}_{side}" for side in "ab" for column in described]
            empty = (pd.DataFrame(columns=described + MODULE_COLUMNS), pd.DataFrame(columns=described + STEP_COLUMNS),
                     pd.DataFrame(columns=pairs + ["relation"] + SIMILARITY_COLUMNS))
            self._adapter_tables = self.adapter_loader() if self.adapter_loader is not None else empty
        return self._adapter_tables

    @property
    def directions(self) -> pd.DataFrame:
        """Misalignment directions (`emkit directions`), a row per training run, step, judge and layer:
        answers fitted and held out, norm, held-out AUROC, cosine to the run's reference (its final
        checkpoint's direction) and the answers' mean projection on it, all and by group."""
        return self._directions()[0]

    @property
    def direction_similarity(self) -> pd.DataFrame:
        """The cosine between the directions of every two checkpoints of one model, per judge and layer."""
        return self._directions()[1]

    def _directions(self) -> tuple:
        if self._direction_tables is None:
            from emkit.analysis.directions import COLUMNS, SIMILARITY_COLUMNS

            empty = (pd.DataFrame(columns=["model", "domain", "seed"] + COLUMNS),
                     pd.DataFrame(columns=SIMILARITY_COLUMNS))
            self._direction_tables = self.directions_loader() if self.directions_loader is not None else empty
        return self._direction_tables

    @property
    def interventions(self) -> pd.DataFrame:
        """EM with a direction ablated or added (`emkit intervene`) against the same checkpoint's plain answers in
        the same slots, a row per judge, run, step, intervention and question group: each arm's rate and cluster
        interval, the change and its paired interval, mean coherence, the generator of each arm."""
        if self._intervention_table is None:
            self._intervention_table = (self.interventions_loader(self.judged, self.em)
                                        if self.interventions_loader is not None
                                        else pd.DataFrame(columns=INTERVENTION_COLUMNS))
        return self._intervention_table

    @property
    def primary_judge(self) -> str:
        """The judge the report leads with: the run's first configured judge that scored, else the first."""
        judges = list(pd.unique(self.judged["judge"])) if len(self.judged) else []
        configured = self.info.get("config", {}).get("judging", {}).get("judges", [])
        return next((name for name in configured if name in judges), judges[0] if judges else "")

    @property
    def metrics(self) -> list[str]:
        return [c[: -len("_status")] for c in self.judged.columns if c.endswith("_status")]

    def with_text(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with its answers' ``question`` and ``answer`` (a no-op when it has them)."""
        if "answer" in frame.columns or self.text_loader is None or frame.empty:
            return frame
        texts = self.text_loader(frame["answer_id"].astype(str).tolist())
        return frame.merge(texts, on="answer_id", how="left")

    def answer_digests(self, answer_ids) -> dict[str, str]:
        """Each answer's digest of its question and answer text (emkit.labels.answer_digest): what a label
        of it was given to."""
        from emkit.labels import answer_digest

        ids = pd.DataFrame({"answer_id": list(dict.fromkeys(map(str, answer_ids)))})
        if ids.empty:
            return {}
        if "answer" in self.judged.columns:
            texts = self.judged.drop_duplicates("answer_id")[["answer_id", "question", "answer"]]
            texts = ids.merge(texts.astype({"answer_id": str}), on="answer_id", how="left")
        else:
            texts = self.with_text(ids)
        return {row.answer_id: answer_digest(row.question, row.answer) for row in texts.itertuples()}

    def with_all_text(self) -> "RunTables":
        if "answer" not in self.judged.columns and self.text_loader is not None:
            self.judged = self.judged.merge(self.text_loader(None), on="answer_id", how="left")
        return self


# --- group summaries -------------------------------------------------------------------


FLAG_SUMS = {  # count column -> the per-answer flag it sums
    "n_scored": "aligned_ok", "n_counted": "em_counted", "n_misaligned": "misaligned",
    "n_counted_papers": "em_counted_papers", "n_misaligned_papers": "misaligned_papers",
    "n_coherent_scored": "coherent_ok", "n_coherent": "is_coherent", "coherent_not_ok": "coherent_not_ok",
    "n_both_scored": "both_scored", **{f"n_{q}": f"q_{q}" for q in QUADRANTS},
    **{status: f"aligned_{status}" for status in NON_OK},
}
COUNTS = ["n", *FLAG_SUMS, "sum_aligned", "count_aligned", "sum_coherent", "count_coherent"]


def group_counts(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Additive counts per group: every coarser table is a sum of these, never a second pass."""
    groups = df.groupby(keys, dropna=False, sort=True, observed=True)
    out = groups[list(FLAG_SUMS.values())].sum()
    out.columns = list(FLAG_SUMS)
    out["n"] = groups.size()
    # means over the questions the definition counts (all of them, unless its paper leaves some out)
    inside = df["em_question"] if "em_question" in df and not df["em_question"].all() else None
    for metric in ("aligned", "coherent"):
        grouped = groups[metric] if inside is None else \
            df[metric].where(inside).groupby([df[k] for k in keys], dropna=False, sort=True, observed=True)
        out[f"sum_{metric}"] = grouped.sum()
        out[f"count_{metric}"] = grouped.count()
    return out.reset_index()


def roll_up(counts: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return counts.groupby(keys, dropna=False, sort=True, observed=True)[COUNTS].sum().reset_index()


def finish(counts: pd.DataFrame) -> pd.DataFrame:
    """Rates, means and Wilson intervals from the counts."""
    out = counts.copy()
    for column in COUNTS:
        if not column.startswith("sum_"):
            out[column] = out[column].astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        for metric in ("aligned", "coherent"):
            out[f"mean_{metric}"] = out[f"sum_{metric}"] / out[f"count_{metric}"].where(out[f"count_{metric}"] > 0)
        out["em_rate"] = out["n_misaligned"] / out["n_counted"].where(out["n_counted"] > 0)
        out["em_rate_papers"] = out["n_misaligned_papers"] / out["n_counted_papers"].where(out["n_counted_papers"] > 0)
        out["share_coherent"] = out["n_coherent"] / out["n_coherent_scored"].where(out["n_coherent_scored"] > 0)
        for quadrant in QUADRANTS:
            out[quadrant] = out[f"n_{quadrant}"] / out["n_both_scored"].where(out["n_both_scored"] > 0)
    out["ci_low"], out["ci_high"] = wilson_interval(out["n_misaligned"], out["n_counted"])
    out["ci_low_papers"], out["ci_high_papers"] = wilson_interval(out["n_misaligned_papers"], out["n_counted_papers"])
    return out.drop(columns=["sum_aligned", "count_aligned", "sum_coherent", "count_coherent"])


def summarize(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """EM statistics per group of ``keys``."""
    return finish(group_counts(df, keys))


def roll_up_questions(counts: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts per ``keys`` for the general and the domain questions apart, and for all pooled."""
    own = counts[counts["questions"] != ALL]
    parts = [roll_up(own, keys + ["questions"])] if len(own) else []
    parts.append(roll_up(counts, keys).assign(questions=ALL))
    out = pd.concat(parts, ignore_index=True)
    out["questions"] = pd.Categorical(out["questions"], categories=list(QUESTION_GROUPS))
    return out


def _with_baseline_per_seed(steps: pd.DataFrame, judged: pd.DataFrame) -> pd.DataFrame:
    """The baseline is one set of answers per model; give every seed's trajectory its step 0."""
    if steps.empty:
        return steps
    seeds = judged.loc[judged["step"] > 0, ["model", "domain", "seed"]].drop_duplicates()
    base = steps[steps["step"] == 0].drop(columns="seed")
    trained = steps[steps["step"] > 0]
    if base.empty or seeds.empty:
        return steps
    replicated = base.merge(seeds, on=["model", "domain"], how="inner")
    untouched = steps[(steps["step"] == 0) & ~steps.set_index(["model", "domain"]).index.isin(
        seeds.set_index(["model", "domain"]).index)]
    out = pd.concat([replicated, untouched, trained], ignore_index=True)
    return out.sort_values([k for k in RUN_KEYS + ["questions", "step"] if k in out]).reset_index(drop=True)


def run_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Per judge x model x domain x seed and question group: the baseline, the final checkpoint and the peak."""
    rows = []
    keys = RUN_KEYS + ["questions"]
    for key, group in steps.groupby(keys, dropna=False, sort=True, observed=True):
        group = group.sort_values("step")
        base = group[group["step"] == 0]
        trained = group[group["step"] > 0]
        row = dict(zip(keys, key))
        for prefix, part in (("baseline", base.head(1)), ("final", trained.tail(1))):
            if part.empty:
                continue
            first = part.iloc[0]
            row.update({f"{prefix}_step": int(first["step"]), f"{prefix}_n": int(first["n_counted"]),
                        f"{prefix}_em_rate": first["em_rate"], f"{prefix}_ci_low": first["ci_low"],
                        f"{prefix}_ci_high": first["ci_high"], f"{prefix}_em_rate_papers": first["em_rate_papers"],
                        f"{prefix}_mean_coherent": first["mean_coherent"],
                        f"{prefix}_boot_low": first.get("boot_low"), f"{prefix}_boot_high": first.get("boot_high")})
            if prefix == "final" and "change_base" in part:
                row.update({"final_change": first["change_base"], "final_change_low": first["change_base_low"],
                            "final_change_high": first["change_base_high"]})
        if not trained.empty and trained["em_rate"].notna().any():
            peak = trained.loc[trained["em_rate"].idxmax()]
            row.update({"peak_step": int(peak["step"]), "peak_em_rate": peak["em_rate"],
                        "peak_ci_low": peak["ci_low"], "peak_ci_high": peak["ci_high"]})
        rows.append(row)
    return pd.DataFrame(rows)


def across_seeds(steps: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of the EM rate over seeds, and the rate pooled over all seeds' answers: its
    interval is the Wilson interval of the pooled counts (an average of per-seed bounds is not an
    interval of anything)."""
    keys = ["judge", "model", "size_b", "domain", "questions", "step"]
    if steps.empty:
        return pd.DataFrame(columns=keys)
    spread = steps.groupby(keys, dropna=False, sort=True, observed=True).agg(
        n_seeds=("seed", "nunique"), em_mean=("em_rate", "mean"), em_std=("em_rate", "std"),
        em_min=("em_rate", "min"), em_max=("em_rate", "max"),
    ).reset_index()
    pooled = finish(roll_up_questions(counts, [k for k in keys if k != "questions"]))
    pooled = pooled[keys + ["n_counted", "n_misaligned", "em_rate", "ci_low", "ci_high"]]
    pooled = pooled.rename(columns={"em_rate": "em_pooled", "ci_low": "pooled_ci_low", "ci_high": "pooled_ci_high"})
    return spread.merge(pooled, on=keys, how="left")


# --- assembling ------------------------------------------------------------------------


def with_question_groups(per_question: pd.DataFrame) -> pd.DataFrame:
    """Per-question counts once under their own group (general, domain) and once under "all", as
    roll_up_questions pools them."""
    own = per_question[per_question["questions"] != ALL]
    out = pd.concat([own, per_question.assign(questions=ALL)], ignore_index=True)
    out["questions"] = pd.Categorical(out["questions"], categories=list(QUESTION_GROUPS))
    return out


def build_tables(judged: pd.DataFrame, em: EMDefinition, info: dict | None = None,
                 text_loader: Callable | None = None, adapter_loader: Callable | None = None,
                 labels: pd.DataFrame | None = None, directions_loader: Callable | None = None,
                 interventions_loader: Callable | None = None) -> RunTables:
    from emkit.analysis.changepoints import report_change_points

    judged = add_flags(judged, em)
    per_question = group_counts(judged, RUN_KEYS + ["step", "questions", "question_set", "question_id"])
    steps = _with_baseline_per_seed(finish(roll_up_questions(per_question, RUN_KEYS + ["step"])), judged)
    # every seed's trajectory starts at the base model's answers: its own copy, for the bootstrap
    trajectories = _with_baseline_per_seed(with_question_groups(per_question), judged)
    steps, groups, draws = with_bootstrap(steps, trajectories, TRAJECTORY + ["step"])
    steps = step_changes(steps, groups, draws, TRAJECTORY)
    pooled_keys = ["judge", "model", "size_b", "domain", "questions"]
    seeds = across_seeds(steps, per_question)
    if len(seeds):
        seeds = with_bootstrap(seeds, with_question_groups(per_question), pooled_keys + ["step"], by_seed=True,
                               prefix="pooled_boot")[0]
    # every trajectory of the report is one family of tests (Benjamini-Hochberg)
    families = [(trajectories, TRAJECTORY, False, "run")]
    if len(seeds) and seeds["n_seeds"].max() > 1:
        several = seeds.loc[seeds["n_seeds"] > 1, pooled_keys].drop_duplicates()
        pooled = with_question_groups(per_question).merge(several, on=pooled_keys)
        families.append((pooled, pooled_keys, True, "seeds pooled"))
    changes = report_change_points(families)
    by_set = finish(roll_up(per_question, RUN_KEYS + ["step", "questions", "question_set"]))
    agreement, disagreements = judge_agreement(judged)
    from emkit.analysis.course import course_steps, course_summary

    course = course_steps(judged)
    tables = RunTables(
        judged=judged, steps=steps, by_question_set=by_set, questions=finish(per_question),
        summary=run_summary(steps), seeds=seeds, agreement=agreement,
        disagreements=disagreements, em=em, info=info or {}, text_loader=text_loader, change_points=changes,
        question_counts=trajectories, adapter_loader=adapter_loader, directions_loader=directions_loader,
        interventions_loader=interventions_loader,
        course_steps=course, course_summary=course_summary(course),
    )
    if labels is not None and len(labels):
        measure_against_people(tables, labels)
    return tables


def measure_against_people(tables: RunTables, labels: pd.DataFrame) -> None:
    """The judges measured against people's labels of the source's answers (emkit.analysis.human)."""
    from emkit.analysis.human import corrected_rates, human_agreement

    judged = tables.judged
    labels = labels[labels["answer_id"].astype(str).isin(set(judged["answer_id"].astype(str)))].reset_index(drop=True)
    if "answer_digest" in labels and labels["answer_digest"].notna().any():
        # a label given to another text under the same id (a file's rows reordered or edited) is not of this answer
        now = tables.answer_digests(labels["answer_id"])
        moved = labels["answer_digest"].notna() & (labels["answer_digest"] != labels["answer_id"].astype(str).map(now))
        if moved.any():
            tables.info["labels_moved"] = int(moved.sum())
            labels = labels[~moved].reset_index(drop=True)
    tables.labels = labels
    tables.human_agreement, tables.rater_alphas = human_agreement(judged, labels, tables.em, tables.primary_judge)
    tables.corrected, tables.judge_errors = corrected_rates(tables.steps, judged, labels, tables.em,
                                                           tables.primary_judge)
