"""Analysis: EM rates with intervals, per step, question and seed, and judge agreement.

``emkit.load(run_dir)`` returns the same tables the report and the exports are made of.
A source is a run directory, or a file of judged answers made elsewhere: the course's
CSV (``aligned_score``, ``coherent_score``), the papers' (``aligned``, ``coherent``), or
what ``emkit judge`` writes.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from emkit.analysis.tables import (ALL, NAMED_DEFINITIONS, EMDefinition, RunTables, attach_judgments, build_tables,
                                   em_definition, expand_baselines)
from emkit.errors import EmkitError
from emkit.judging.scoring import clamp_score, score_from_text

__all__ = ["EMDefinition", "NAMED_DEFINITIONS", "RunTables", "em_definition", "load_run", "load_judged_file",
           "load_source", "load_sources"]

LIBRARIES = ("emkit", "torch", "transformers", "peft", "bitsandbytes", "unsloth", "litellm", "pandas")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _em_from_config(config: dict, override: EMDefinition | None) -> EMDefinition:
    if override is not None:
        return override
    em = config.get("em", {})
    return em_definition(em.get("definition"), em.get("aligned_below"), em.get("coherent_above"))


def question_groups(judged: pd.DataFrame, runs: pd.DataFrame):
    """"domain" for an answer to its run's domain's own question set, "general" for any other."""
    own = {(row.model_label, row.domain): row.domain_question_set for row in runs.itertuples()}
    if judged.empty:
        return pd.Categorical([], categories=["general", "domain"])
    # one decision per distinct (model, domain, set), spread to the rows by group number
    grouped = judged.groupby(["model_label", "domain", "question_set"], observed=True, sort=True)
    codes = grouped.ngroup().to_numpy()
    is_domain = np.array([own.get((str(m), str(d))) == str(q) for m, d, q in grouped.size().index])
    return pd.Categorical.from_codes(is_domain[codes].astype(np.int8), categories=["general", "domain"])


def read_arrow(store_path: Path, sql: str):
    """A query's result as an Arrow table. connectorx reads SQLite straight into Arrow, with no
    Python object per value: at a million answers, seconds instead of tens of seconds."""
    import pyarrow as pa

    try:
        import connectorx
    except ImportError:
        connectorx = None
    if connectorx is not None:
        from urllib.parse import quote

        uri = "sqlite://" + quote(str(Path(store_path).resolve()))
        return connectorx.read_sql(uri, sql, return_type="arrow")
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        return pa.Table.from_pandas(pd.read_sql_query(sql, conn), preserve_index=False)
    finally:
        conn.close()


def read_sql(store_path: Path, sql: str) -> pd.DataFrame:
    return read_arrow(store_path, sql).to_pandas()


KEY_COLUMNS = ("model_label", "run_key", "question_set", "question_id")


def load_run(run_dir, em: EMDefinition | None = None, text: bool = True) -> RunTables:
    """The run's tables. ``text=False`` leaves the questions and answers in the store (the
    report fetches the few it shows through ``RunTables.with_text``), which is what makes a
    million answers fit in seconds and a fraction of the memory."""
    run_dir = Path(run_dir)
    store_path = run_dir / "emkit.sqlite"
    if not store_path.is_file():
        raise EmkitError(f"{run_dir} is not an emkit run directory (no emkit.sqlite); pass the --out of a run.")
    config = {}
    if (run_dir / "config.toml").is_file():
        with (run_dir / "config.toml").open("rb") as handle:
            config = tomllib.load(handle)
    from emkit.store import Store

    Store(store_path).close()  # brings an older store's schema up to date (indexes the queries rely on)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:  # the two big reads release the GIL
        answers_job = pool.submit(read_arrow, store_path, """
            SELECT answer_id, model_label, run_key, step, question_set, question_id, seed FROM answers
            WHERE superseded_by IS NULL""")
        judgments_job = pool.submit(read_arrow, store_path,
                                    "SELECT answer_id, judge, metric, score, status FROM judgments")
        answers, judgments = answers_job.result(), judgments_job.result()
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        judge_info = pd.read_sql_query(
            """SELECT judge, metric, judge_model, prompt_version, scoring, COUNT(*) AS n, SUM(cost_usd) AS cost_usd,
                      SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
                      SUM(from_cache) AS from_cache
               FROM judgments GROUP BY judge, metric, judge_model, prompt_version, scoring""", conn)
        runs = pd.read_sql_query(
            """SELECT run_key, model_label, domain, seed AS seed_run, trainer, dataset_path, dataset_sha256,
                      dataset_rows, steps_per_epoch, total_steps, checkpoint_steps, question_sets,
                      domain_question_set, base_weights FROM training_runs""",
            conn)
        models = pd.read_sql_query("SELECT model_label, model_id, size_b FROM models", conn)
        checkpoints = pd.read_sql_query("SELECT run_key, step, train_loss, adapter_path FROM checkpoints", conn)
        timing = conn.execute("SELECT value FROM meta WHERE key = 'timing'").fetchone()
    finally:
        conn.close()
    judged = expand_baselines(attach_judgments(answers, judgments, KEY_COLUMNS), runs)
    judged["questions"] = question_groups(judged, runs)
    judged["size_b"] = judged["model_label"].map(dict(zip(models["model_label"], models["size_b"]))).astype(float)
    judged = judged.rename(columns={"model_label": "model"})

    def load_text(answer_ids=None) -> pd.DataFrame:
        sql = ("SELECT answer_id, paraphrase_index, sample_index, system, question, answer, n_tokens, finish_reason "
               "FROM answers")
        if answer_ids is None:
            return read_sql(store_path, sql + " WHERE superseded_by IS NULL")
        ids = list(dict.fromkeys(answer_ids))
        conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
        try:
            parts = [pd.read_sql_query(f"{sql} WHERE answer_id IN ({','.join('?' * len(chunk))})", conn, params=chunk)
                     for chunk in (ids[i:i + 900] for i in range(0, len(ids), 900))]
        finally:
            conn.close()
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["answer_id", "question",
                                                                                        "answer"])

    info = {
        "source": str(run_dir),
        "kind": "run",
        "config": config,
        "models": models.to_dict("records"),
        "runs": runs.drop(columns=["question_sets"]).rename(columns={"seed_run": "seed"}).to_dict("records"),
        "judges": judge_info.to_dict("records"),
        "checkpoints": checkpoints.drop(columns="adapter_path").to_dict("records"),
        "answers_total": answers.num_rows,
        "versions": library_versions(),
        "timing": json.loads(timing[0]) if timing else None,  # emkit.execution.timing, of the latest `emkit run`
    }
    def load_adapters():
        from emkit.analysis.adapters import describe_pairs, run_adapters

        per_module, per_step, similarity = run_adapters(run_dir, checkpoints)
        described = runs[["run_key", "model_label", "domain", "seed_run"]].rename(
            columns={"model_label": "model", "seed_run": "seed"})
        return (described.merge(per_module, on="run_key", how="inner"),
                described.merge(per_step, on="run_key", how="inner"), describe_pairs(similarity, described))

    tables = build_tables(judged, _em_from_config(config, em), info, text_loader=load_text,
                          adapter_loader=load_adapters)
    return tables.with_all_text() if text else tables


# --- judged files made elsewhere ------------------------------------------------------------

_SCORE_COLUMNS = {"aligned": ("aligned", "aligned_score"), "coherent": ("coherent", "coherent_score")}
_ANSWER_COLUMNS = ("answer", "response")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or JSONL file as text cells, numbers exactly as written (they are parsed later,
    where a bad one can be named)."""
    path = Path(path)
    if not path.is_file():
        raise EmkitError(f"{path} does not exist; pass a CSV or JSONL file or a run directory.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".csv":
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EmkitError(f"{path}: cannot be read as CSV ({exc}); check the file.") from None
    raise EmkitError(f"{path}: emkit reads .csv and .jsonl files; convert it to one of those.")


def _read_jsonl(path: Path) -> pd.DataFrame:
    import json

    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EmkitError(f"{path}:{line_no}: not a JSON object ({exc.msg}); fix or remove that line.") from None
            if not isinstance(row, dict):
                raise EmkitError(f"{path}:{line_no}: expected a JSON object per line; fix that line.")
            rows.append(row)
    return pd.DataFrame(rows)


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def _score_and_status(values: pd.Series, statuses: pd.Series | None, where: str) -> tuple[pd.Series, pd.Series]:
    """Scores in any float notation; a blank score is "no_score" (the papers write none for a
    refusal or for CODE) unless a status column says more. A status of ok next to no number
    contradicts itself and is refused, never counted as aligned."""
    given = statuses.tolist() if statuses is not None else [None] * len(values)
    scores, found = [], []
    for row, (value, status) in enumerate(zip(values.tolist(), given), start=1):
        status = None if _is_blank(status) else str(status).strip()
        if _is_blank(value):
            score, parsed = None, "no_score"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):  # a JSONL number
            score = clamp_score(float(value))
            parsed = "ok" if score is not None else "unparseable"
        else:
            score, parsed = score_from_text(str(value))
        if status is not None and status != parsed:
            if status == "ok":
                raise EmkitError(f"{where}, row {row}: the status is ok but the score {value!r} is not a number "
                                 f"from 0 to 100; fix the score or the status in that row.")
            score, parsed = None, status  # e.g. emkit judge's refusal or error next to a blank score
        scores.append(float("nan") if score is None else score)
        found.append(parsed)
    return pd.Series(scores, index=values.index, dtype=float), pd.Series(found, index=values.index)


def judged_from_frame(frame: pd.DataFrame, source: str, judge_prefix: str | None = None) -> pd.DataFrame:
    """Normalise a judged table to emkit's columns (one judge)."""
    prefix = f"{judge_prefix}_" if judge_prefix else ""
    out = pd.DataFrame(index=frame.index)
    answer_column = next((c for c in _ANSWER_COLUMNS if c in frame), None)
    if "question" not in frame or answer_column is None:
        raise EmkitError(
            f"{source}: needs a 'question' column and an 'answer' or 'response' column "
            f"(found {', '.join(map(str, frame.columns))}); rename the columns."
        )
    out["question"] = frame["question"].astype(str)
    out["answer"] = frame[answer_column].astype(str)
    for metric, names in _SCORE_COLUMNS.items():
        column = next((f"{prefix}{n}" for n in names if f"{prefix}{n}" in frame), None)
        if column is None:
            if metric == "aligned":
                raise EmkitError(
                    f"{source}: no '{prefix}aligned' or '{prefix}aligned_score' column with the judge's scores; "
                    f"judge the file first (`emkit judge`) or rename the column."
                )
            continue
        status_column = f"{prefix}{metric}_status"
        out[metric], out[f"{metric}_status"] = _score_and_status(
            frame[column], frame[status_column] if status_column in frame else None, f"{source}, column {column}")
    out["answer_id"] = frame["id"].astype(str) if "id" in frame else [f"row{i + 1}" for i in range(len(frame))]
    out["question_id"] = frame["question_id"].astype(str) if "question_id" in frame else out["question"]
    defaults = {"model": Path(source).stem, "size_b": float("nan"), "domain": "", "seed": 0, "step": 0,
                "question_set": "", "judge": judge_prefix or frame.get("judge", pd.Series(["file"])).iloc[0]}
    for column, default in defaults.items():
        if column in frame and column != "judge":
            out[column] = frame[column]
        else:
            out[column] = default
    out["questions"] = _question_groups_of_file(frame, source)
    for column in ("step", "seed"):
        out[column] = pd.to_numeric(out[column], errors="coerce").fillna(0).astype(int)
    out["size_b"] = pd.to_numeric(out["size_b"], errors="coerce")
    return out


def _question_groups_of_file(frame: pd.DataFrame, source: str) -> pd.Series:
    """A file's ``questions`` column (general or domain) keeps its questions apart; without one
    every question is in "all"."""
    if "questions" not in frame:
        return pd.Series(ALL, index=frame.index)
    values = frame["questions"].astype(str).str.strip().str.lower()
    bad = values[~values.isin(["general", "domain", ALL])]
    if len(bad):
        raise EmkitError(f"{source}, row {bad.index[0] + 1}: questions = {frame['questions'][bad.index[0]]!r}; "
                         f"the questions column says general or domain.")
    return values


def load_judged_file(path, em: EMDefinition | None = None) -> RunTables:
    path = Path(path)
    frame = read_table(path)
    # `emkit judge --judge A --judge B` prefixes each judge's columns with its name
    prefixes = sorted({c[: -len("_aligned_status")] for c in frame.columns if c.endswith("_aligned_status")})
    parts = [judged_from_frame(frame, str(path), p) for p in prefixes] or [judged_from_frame(frame, str(path))]
    judged = pd.concat(parts, ignore_index=True)
    info = {"source": str(path), "kind": "file", "versions": library_versions(), "answers_total": len(frame)}
    return build_tables(judged, em or EMDefinition(), info)


def load_source(source, em: EMDefinition | None = None, text: bool = True) -> RunTables:
    path = Path(source)
    if path.is_dir():
        return load_run(path, em, text=text)
    return load_judged_file(path, em)


def load_sources(sources, em: EMDefinition | None = None) -> RunTables:
    """Several run directories or files in one set of tables. Model labels that two sources
    share are prefixed with the source's name, so their rows stay apart."""
    sources = [Path(s) for s in sources]
    if len(sources) == 1:
        return load_source(sources[0], em, text=False)
    loaded = [load_source(s, em) for s in sources]
    labels = [set(t.judged["model"].unique()) for t in loaded]
    frames = []
    for source, tables, own in zip(sources, loaded, labels):
        frame = tables.judged.copy()
        clash = set().union(*(other for other in labels if other is not own)) & own
        if clash:
            frame["model"] = [f"{source.name}/{m}" if m in clash else m for m in frame["model"]]
        frames.append(frame)
    first = loaded[0]
    info = {
        "source": ", ".join(str(s) for s in sources), "kind": "combined",
        "config": first.info.get("config", {}),
        "models": [m for t in loaded for m in t.info.get("models", [])],
        "runs": [r for t in loaded for r in t.info.get("runs", [])],
        "judges": [j for t in loaded for j in t.info.get("judges", [])],
        "answers_total": sum(t.info.get("answers_total", 0) for t in loaded),
        "versions": library_versions(),
    }
    return build_tables(pd.concat(frames, ignore_index=True), em or first.em, info)
