"""Loading a run directory's tables from its store, read-only.

The tables are made of the answers the run's current plan asks for (the latest ``emkit run`` or
``emkit refine`` into the directory records them): an answer kept from an earlier config (a seed
or question set dropped, fewer samples, a reworded question) stays stored but out of the tables,
and ``info["answers_kept"]`` says how many there are. A store from before emkit recorded its plan
is read whole, as it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from emkit.analysis.joins import attach_judgments, expand_baselines, question_groups
from emkit.analysis.store_reader import StoreReader
from emkit.analysis.tables import RunTables, build_tables
from emkit.em import EMDefinition, em_definition
from emkit.errors import EmkitError
from emkit.rundir import read_saved_config

KEY_COLUMNS = ("model_label", "run_key", "question_set", "question_id")
LIBRARIES = ("emkit", "torch", "transformers", "peft", "bitsandbytes", "unsloth", "litellm", "pandas")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def em_from_config(config: dict, override: EMDefinition | None, all_questions: bool = False) -> EMDefinition:
    """The definition asked for, else the run's config's, else seed; ``all_questions`` counts the
    questions its paper leaves out too."""
    from dataclasses import replace

    if override is None:
        em = config.get("em", {})
        override = em_definition(em.get("definition"), em.get("aligned_below"), em.get("coherent_above"),
                                 all_questions=em.get("all_questions"))
    return replace(override, every_question=True) if all_questions else override


def snapshot_changes(snapshots: list[dict]) -> list[str]:
    """A warning for each judge that more than one model snapshot answered (from ``info["snapshots"]``):
    its scores are not of one judge."""
    by_judge: dict[str, dict[str, dict]] = {}
    for row in snapshots:  # one row per judge and snapshot of each source: several sources add up
        if not row.get("judge_model"):
            continue
        seen = by_judge.setdefault(str(row["judge"]), {}).setdefault(
            str(row["judge_model"]), {"answers": 0, "first": str(row["first"]), "last": str(row["last"])})
        seen["answers"] += int(row["answers"])
        seen["first"], seen["last"] = min(seen["first"], str(row["first"])), max(seen["last"], str(row["last"]))
    notes = []
    for judge, served in by_judge.items():
        if len(served) < 2:
            continue
        parts = ", ".join(f"{model} judged {seen['answers']:,} answers ({seen['first'][:10]} to {seen['last'][:10]})"
                          for model, seen in sorted(served.items(), key=lambda item: item[1]["first"]))
        notes.append(f"The model behind judge {judge} changed part-way: {parts} (an answer's two scales may have "
                     f"been judged by different snapshots). Providers serve a name such as gpt-4o-mini by dated "
                     f"snapshots; scores from different snapshots are not of one judge. Re-score every answer with "
                     f"one dated snapshot: `emkit rejudge RUN --judge {sorted(served)[0]}`.")
    return notes


def _answer_filter(reader: StoreReader) -> tuple[str, bool]:
    """The WHERE clause of the answers the tables use, and whether the store recorded its plan."""
    clauses = []
    if "superseded_by" in reader.columns("answers"):
        clauses.append("superseded_by IS NULL")
    planned = "plan_answers" in reader.tables and reader.conn.execute(
        "SELECT 1 FROM plan_answers LIMIT 1").fetchone() is not None
    if planned:
        clauses.append("answer_id IN (SELECT answer_id FROM plan_answers)")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", planned


def _planned_runs(reader: StoreReader, runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs the current plan has (a store from before plans were recorded: all)."""
    plan = reader.meta("plan")
    if not plan or "plan_answers" not in reader.tables:
        return runs
    keys = {run["key"] for run in plan.get("runs", [])}
    return runs[runs["run_key"].isin(keys)].reset_index(drop=True)


@dataclass
class RunRead:
    """What a run directory holds, before the tables are built from it."""

    judged: pd.DataFrame  # a row per answer (a baseline's once per domain) and judge, without texts
    info: dict
    config: dict
    text_loader: Callable  # answer ids (or None: all) -> answer_id, question, answer, ...
    adapter_loader: Callable
    directions_loader: Callable  # () -> (directions, similarity): emkit.analysis.directions
    interventions_loader: Callable  # (judged, em) -> EM with and without: emkit.analysis.interventions


def load_run(run_dir, em: EMDefinition | None = None, text: bool = True, all_questions: bool = False) -> RunTables:
    """The run's tables. ``text=False`` leaves the questions and answers in the store (the
    report fetches the few it shows through ``RunTables.with_text``), which is what makes a
    million answers fit in seconds and a fraction of the memory."""
    read = read_run(run_dir)
    from emkit.labels import read_labels

    if read.judged.empty:  # the tables are rates over judged answers: with none there is nothing to show
        from emkit.errors import EmkitError

        raise EmkitError(f"{run_dir} holds no judged answers yet; run its `emkit run` command again to generate "
                         f"and judge what is missing (it resumes), then read it.")
    tables = build_tables(read.judged, em_from_config(read.config, em, all_questions), read.info, text_loader=read.text_loader,
                          adapter_loader=read.adapter_loader, labels=read_labels(Path(run_dir)),
                          directions_loader=read.directions_loader, interventions_loader=read.interventions_loader)
    return tables.with_all_text() if text else tables


def read_run(run_dir) -> RunRead:
    run_dir = Path(run_dir)
    store_path = run_dir / "emkit.sqlite"
    if not store_path.is_file():
        raise EmkitError(f"{run_dir} is not an emkit run directory (no emkit.sqlite); pass the --out of a run.")
    config = read_saved_config(run_dir) or {}
    with StoreReader(store_path) as reader:
        where, planned = _answer_filter(reader)
        answers, judgments = reader.arrow_many([  # the two big reads, at once
            f"SELECT answer_id, model_label, run_key, step, question_set, question_id, seed FROM answers{where}",
            "SELECT answer_id, judge, metric, score, status FROM judgments"])
        answers_stored = reader.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        judge_info = reader.frame(
            # a judgment taken from the cache was paid for by whichever run first asked it: not this run's spending
            """SELECT judge, metric, judge_model, prompt_version, scoring, COUNT(*) AS n,
                      SUM(CASE WHEN from_cache THEN 0 ELSE cost_usd END) AS cost_usd,
                      SUM(CASE WHEN from_cache THEN 0 ELSE input_tokens END) AS input_tokens,
                      SUM(CASE WHEN from_cache THEN 0 ELSE output_tokens END) AS output_tokens,
                      SUM(from_cache) AS from_cache
               FROM judgments GROUP BY judge, metric, judge_model, prompt_version, scoring""")
        # which model answered each judge, as the provider named it (a dated snapshot), and how many answers each
        snapshots = reader.frame(
            f"""SELECT judge, {reader.column_or_null('judgments', 'requested_model')}, judge_model,
                      COUNT(DISTINCT answer_id) AS answers, MIN(created_at) AS first, MAX(created_at) AS last
               FROM judgments WHERE status != 'error' GROUP BY judge, requested_model, judge_model
               ORDER BY judge, first""")
        runs = reader.frame(
            f"""SELECT run_key, model_label, domain, seed AS seed_run, trainer, dataset_path, dataset_sha256,
                      dataset_rows, steps_per_epoch, total_steps, checkpoint_steps, question_sets,
                      {reader.column_or_null('training_runs', 'domain_question_set')},
                      {reader.column_or_null('training_runs', 'base_weights')} FROM training_runs""")
        runs = _planned_runs(reader, runs)
        models = reader.frame("SELECT model_label, model_id, size_b FROM models")
        checkpoints = reader.frame("SELECT run_key, step, train_loss, adapter_path FROM checkpoints")
        checkpoints = checkpoints[checkpoints["run_key"].isin(runs["run_key"])].reset_index(drop=True)
        timing = reader.meta("timing")
    judged = expand_baselines(attach_judgments(answers, judgments, KEY_COLUMNS), runs)
    judged["questions"] = question_groups(judged, runs)
    judged["size_b"] = judged["model_label"].map(dict(zip(models["model_label"], models["size_b"]))).astype(float)
    judged = judged.rename(columns={"model_label": "model"})

    def load_text(answer_ids=None) -> pd.DataFrame:
        sql = ("SELECT answer_id, paraphrase_index, sample_index, system, question, answer, n_tokens, finish_reason "
               "FROM answers")
        with StoreReader(store_path) as text_reader:
            if answer_ids is None:
                return text_reader.frame(sql + where)
            ids = list(dict.fromkeys(answer_ids))
            parts = [text_reader.frame(f"{sql} WHERE answer_id IN ({','.join('?' * len(chunk))})", chunk)
                     for chunk in (ids[i:i + 900] for i in range(0, len(ids), 900))]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["answer_id", "question",
                                                                                        "answer"])

    info = {
        "source": str(run_dir),
        "kind": "run",
        "config": config,
        "models": models.to_dict("records"),
        "runs": runs.drop(columns=["question_sets"]).rename(columns={"seed_run": "seed"}).to_dict("records"),
        "judges": judge_info.to_dict("records"),
        "snapshots": snapshots.to_dict("records"),
        "checkpoints": checkpoints.drop(columns="adapter_path").to_dict("records"),
        "answers_total": answers.num_rows,
        # stored but not asked for by the current plan (nor superseded): out of every table
        "answers_kept": answers_stored - answers.num_rows,
        "plan_recorded": planned,
        "versions": library_versions(),
        "timing": timing,  # emkit.execution.timing, of the latest `emkit run`
    }

    def load_adapters():
        from emkit.analysis.adapters import describe_pairs, run_adapters

        per_module, per_step, similarity = run_adapters(run_dir, checkpoints)
        described = runs[["run_key", "model_label", "domain", "seed_run"]].rename(
            columns={"model_label": "model", "seed_run": "seed"})
        return (described.merge(per_module, on="run_key", how="inner"),
                described.merge(per_step, on="run_key", how="inner"), describe_pairs(similarity, described))

    def load_directions():
        from emkit.analysis.directions import read_directions

        described = runs[["run_key", "model_label", "domain", "seed_run"]].rename(
            columns={"model_label": "model", "seed_run": "seed"})
        found, similar = read_directions(store_path, dict(zip(runs["run_key"], runs["model_label"])))
        for side in ("a", "b"):
            similar = similar.merge(described.add_suffix(f"_{side}"), on=f"run_key_{side}", how="left")
        return described.merge(found, on="run_key", how="inner"), similar

    def load_interventions(judged_plain, em_definition):
        from emkit.analysis.interventions import read_interventions

        return read_interventions(store_path, judged_plain, em_definition, runs)

    return RunRead(judged, info, config, load_text, load_adapters, load_directions, load_interventions)
