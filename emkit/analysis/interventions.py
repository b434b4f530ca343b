"""EM with a direction ablated or added, against the same checkpoint's plain answers (`emkit intervene`).

Every answer made under an intervention fills the slot of one plain answer (same question,
paraphrase, sample and sampling seed), and only slots with both are compared, so the two arms
are the same questions asked the same number of times. Each arm's EM rate gets the report's
cluster interval (questions resampled: emkit.analysis.bootstrap), and the change gets the paired
interval of two rates on the same questions (MOVER with the correlation of the paired draws), as
a checkpoint's change from step 0 does. A row per judge, run, step, intervention and question
group (general, domain, all).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from emkit.analysis.store_reader import StoreReader
from emkit.analysis.tables import INTERVENTION_COLUMNS as COLUMNS

DESCRIBED = COLUMNS[:COLUMNS.index("questions")]


def read_interventions(store_path: Path, judged: pd.DataFrame, em, runs: pd.DataFrame) -> pd.DataFrame:
    """The comparison table of a run's store; ``judged``: the run's plain judged rows, flags set (RunTables.judged);
    ``runs``: its training runs (run_key, model_label, domain, seed_run, question_sets, domain_question_set)."""
    with StoreReader(store_path) as reader:
        if "intervention_answers" not in reader.tables:
            return pd.DataFrame(columns=COLUMNS)
        answers = reader.frame("""SELECT answer_id, intervention, of_answer, model_label, run_key, step, question_set,
                                         question_id, seed, generator FROM intervention_answers""")
        if answers.empty:
            return pd.DataFrame(columns=COLUMNS)
        judgments = reader.frame("""SELECT j.answer_id, j.judge, j.metric, j.score, j.status FROM judgments j
                                    JOIN intervention_answers a ON a.answer_id = j.answer_id""")
        made = reader.frame("SELECT key AS intervention, kind, scale, layers, source FROM interventions")
        plain_generators = reader.frame("""SELECT a.answer_id AS of_answer, a.generator FROM answers a
                                           JOIN intervention_answers i ON i.of_answer = a.answer_id""")
    return compare(intervened_rows(answers, judgments, judged, em, runs), judged, made,
                   plain_generators.drop_duplicates("of_answer"))


def intervened_rows(answers: pd.DataFrame, judgments: pd.DataFrame, judged: pd.DataFrame, em,
                    runs: pd.DataFrame) -> pd.DataFrame:
    """The intervention answers as judged rows, with the flags the run's EM definition sets."""
    from emkit.analysis.flags import add_flags
    from emkit.analysis.joins import attach_judgments
    from emkit.analysis.joins import question_groups

    frame = attach_judgments(answers, judgments)
    if frame.empty:
        return frame
    frame["domain"] = frame["run_key"].map(dict(zip(runs["run_key"], runs["domain"])))
    frame["seed"] = frame["run_key"].map(dict(zip(runs["run_key"], runs["seed_run"]))).fillna(frame["seed"]).astype(int)
    frame["questions"] = question_groups(frame, runs)
    frame = frame.rename(columns={"model_label": "model"})
    sizes = judged.drop_duplicates("model").set_index("model")["size_b"] if len(judged) else pd.Series(dtype=float)
    frame["size_b"] = frame["model"].map(sizes).astype(float)
    return add_flags(frame, em)


def paired_arms(per_question: pd.DataFrame, described: list[str]) -> pd.DataFrame:
    """Each ``described`` group's EM with (arm "with") and without ("without"): counts per question and arm in,
    a row per group and question group out, with each rate's cluster interval and the change's paired one."""
    from emkit.analysis.bootstrap import paired_difference_interval, with_bootstrap
    from emkit.analysis.tables import finish, roll_up_questions, with_question_groups

    keys = described + ["arm"]
    rates = finish(roll_up_questions(per_question, keys))
    rates, groups, draws = with_bootstrap(rates, with_question_groups(per_question), keys + ["questions"])
    index = groups.assign(_draw=np.arange(len(groups)))
    rates = rates.merge(index[keys + ["questions", "_draw"]], on=keys + ["questions"], how="left")
    sides = {arm: rates[rates["arm"] == arm].drop(columns="arm") for arm in ("with", "without")}
    wide = sides["without"].merge(sides["with"], on=described + ["questions"], suffixes=("_without", "_with"))
    out = pd.DataFrame({column: wide[column] for column in described + ["questions"]})
    if wide.empty:
        return out
    low, high = paired_difference_interval(
        wide["em_rate_without"], wide["boot_low_without"], wide["boot_high_without"], wide["em_rate_with"],
        wide["boot_low_with"], wide["boot_high_with"], draws[wide["_draw_without"].to_numpy(int)],
        draws[wide["_draw_with"].to_numpy(int)])
    for arm in ("with", "without"):
        out[f"n_{arm}"] = wide[f"n_counted_{arm}"].astype(int)
        out[f"em_{arm}"] = wide[f"em_rate_{arm}"]
        out[f"low_{arm}"], out[f"high_{arm}"] = wide[f"boot_low_{arm}"], wide[f"boot_high_{arm}"]
        out[f"coherent_{arm}"] = wide[f"mean_coherent_{arm}"]
    out["change"] = out["em_with"] - out["em_without"]
    out["change_low"], out["change_high"] = low, high
    return out


def compare(intervened: pd.DataFrame, judged: pd.DataFrame, made: pd.DataFrame,
            plain_generators: pd.DataFrame) -> pd.DataFrame:
    from emkit.analysis.tables import group_counts

    if intervened.empty:
        return pd.DataFrame(columns=COLUMNS)
    arms = [intervened.assign(arm="with")]
    for (key, run_key, step, model, domain, seed), part in intervened.groupby(
            ["intervention", "run_key", "step", "model", "domain", "seed"], observed=True, sort=True):
        # the same checkpoint's plain answers in the slots the intervention filled (step 0: the baseline's)
        own = judged["run_key"].eq("base") & judged["model"].eq(model) & judged["domain"].eq(domain) if step == 0 \
            else judged["run_key"].eq(run_key) & judged["step"].eq(step)
        plain = judged[own & judged["answer_id"].isin(part["of_answer"])]
        plain = plain.assign(run_key=run_key, seed=seed, intervention=key, arm="without",
                             of_answer=plain["answer_id"])
        arms.append(plain)
    # only slots with both arms, per judge: an arm still being generated or judged is not compared on more questions
    both = pd.concat(arms, ignore_index=True)
    both["run_key"], both["intervention"] = both["run_key"].astype(str), both["intervention"].astype(str)
    complete = both.groupby(["judge", "intervention", "of_answer"], observed=True)["arm"].transform("nunique") == 2
    both = both[complete]
    if both.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = paired_arms(group_counts(both, DESCRIBED + ["arm", "questions", "question_set", "question_id"]), DESCRIBED)
    if out.empty:
        return pd.DataFrame(columns=COLUMNS)
    made = made.assign(layers=[tuple(json.loads(text)) for text in made["layers"]])
    out = out.merge(made, on="intervention", how="left")
    # which generator made each arm: the comparison is of the intervention alone when it is one and the same
    plain_by_slot = dict(zip(plain_generators["of_answer"], plain_generators["generator"].astype(str)))
    per_key = intervened.groupby("intervention", observed=True)
    out["generator_with"] = out["intervention"].map(per_key["generator"].agg(lambda g: "+".join(sorted(set(g)))))
    out["generator_without"] = out["intervention"].map(per_key["of_answer"].agg(
        lambda slots: "+".join(sorted({plain_by_slot[s] for s in slots if s in plain_by_slot}))))
    return out[COLUMNS].sort_values(["judge", "model", "domain", "seed", "step", "intervention", "questions"]) \
        .reset_index(drop=True)
