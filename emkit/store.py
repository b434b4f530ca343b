"""The run's results store: one SQLite file in the run directory.

Every finished unit (a checkpoint, an answer, a judgment) is committed the moment it
exists, so a killed process loses only what was in flight, and every stage asks the
store what is already done before doing anything. The schema grows through the
numbered migrations below (as simonw/llm's logs do); never edit one that has shipped.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

STORE_FILE = "emkit.sqlite"

# People's labels (emkit.labels): in a run's store, and alone in the label store beside a judged file.
LABEL_TABLES = """
    CREATE TABLE labels (
        answer_id TEXT NOT NULL, labeller TEXT NOT NULL, aligned REAL, coherent REAL,
        refusal INTEGER NOT NULL DEFAULT 0, code INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
        answer_digest TEXT,
        PRIMARY KEY (answer_id, labeller));
    CREATE TABLE label_queue (
        labeller TEXT NOT NULL, position INTEGER NOT NULL, answer_id TEXT NOT NULL, stratum TEXT,
        PRIMARY KEY (labeller, position));
"""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE models (
            model_label TEXT PRIMARY KEY, model_id TEXT NOT NULL, size_b REAL);
        CREATE TABLE training_runs (
            run_key TEXT PRIMARY KEY,
            model_label TEXT NOT NULL, domain TEXT NOT NULL, seed INTEGER NOT NULL,
            trainer TEXT NOT NULL, dataset_path TEXT, dataset_sha256 TEXT, dataset_rows INTEGER,
            steps_per_epoch INTEGER NOT NULL, total_steps INTEGER NOT NULL,
            checkpoint_steps TEXT NOT NULL, question_sets TEXT NOT NULL,
            created_at TEXT NOT NULL, finished_at TEXT);
        CREATE TABLE checkpoints (
            run_key TEXT NOT NULL, step INTEGER NOT NULL, adapter_path TEXT NOT NULL,
            train_loss REAL, seconds REAL, created_at TEXT NOT NULL,
            PRIMARY KEY (run_key, step));
        CREATE TABLE answers (
            answer_id TEXT PRIMARY KEY,
            model_label TEXT NOT NULL, run_key TEXT NOT NULL, step INTEGER NOT NULL,
            question_set TEXT NOT NULL, question_id TEXT NOT NULL,
            paraphrase_index INTEGER NOT NULL, sample_index INTEGER NOT NULL, seed INTEGER NOT NULL,
            system TEXT, question TEXT NOT NULL, answer TEXT NOT NULL,
            n_tokens INTEGER, finish_reason TEXT, generator TEXT, created_at TEXT NOT NULL);
        CREATE INDEX answers_by_checkpoint ON answers (run_key, step);
        CREATE TABLE judgments (
            answer_id TEXT NOT NULL, judge TEXT NOT NULL, metric TEXT NOT NULL,
            score REAL, status TEXT NOT NULL, scoring TEXT, raw TEXT, judge_model TEXT,
            prompt_version TEXT, request_key TEXT,
            input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL,
            from_cache INTEGER NOT NULL DEFAULT 0, error TEXT, created_at TEXT NOT NULL,
            PRIMARY KEY (answer_id, judge, metric));
        """,
    ),
    (
        2,
        # The report's header summarises judgments per judge and metric; over millions of rows a
        # covering index turns that from a 10 s table scan with sorting into a 1.5 s index scan.
        """
        CREATE INDEX judgments_by_judge ON judgments (judge, metric, judge_model, prompt_version, scoring, status,
            cost_usd, input_tokens, output_tokens, from_cache);
        """,
    ),
    (
        3,
        # Which question set is the training domain's own: EM on it is the trained behaviour, EM on
        # every other set is the emergent kind, and the tables keep them apart. Runs stored before
        # this migration get their built-in domain's set (a rerun records it for any domain).
        """
        ALTER TABLE training_runs ADD COLUMN domain_question_set TEXT;
        UPDATE training_runs SET domain_question_set = CASE domain
            WHEN 'medical' THEN 'medical' WHEN 'risky-financial' THEN 'financial'
            WHEN 'extreme-sports' THEN 'sports' END;
        """,
    ),
    (
        4,
        # An answer is keyed by what was asked (plan.answer_id); when a question is reworded, its
        # new answer supersedes the old one in the same slot, which stays in the store but leaves
        # the tables and the report. And the base weights each run's adapters were trained on
        # (emkit.models.base_weights), so that generation loads exactly those.
        """
        ALTER TABLE answers ADD COLUMN superseded_by TEXT;
        CREATE INDEX answers_by_slot ON answers (run_key, step, question_set, question_id, paraphrase_index,
            sample_index, seed, model_label);
        ALTER TABLE training_runs ADD COLUMN base_weights TEXT;
        """,
    ),
    (
        5,
        # The units of GPU work (emkit.execution) and where each one is: which executor, which job,
        # how many attempts, and the tail of the log of one that failed (`emkit status`).
        """
        CREATE TABLE units (
            unit_key TEXT PRIMARY KEY, kind TEXT NOT NULL, executor TEXT NOT NULL, state TEXT NOT NULL,
            job_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, log_path TEXT, detail TEXT,
            gpu_seconds REAL, updated_at TEXT NOT NULL);
        """,
    ),
    (
        6,
        # The answers the latest plan asks for. A run directory keeps every answer it ever stored
        # (a seed or question set dropped, samples lowered, a question reworded); the tables use the
        # ones the current config asks for, and say how many others are kept.
        """
        CREATE TABLE plan_answers (answer_id TEXT PRIMARY KEY) WITHOUT ROWID;
        """,
    ),
    (
        7,
        # People's labels of answers (emkit.labels, `emkit label`), and the model each judgment was
        # asked of beside the one the provider says answered (judge_model: a dated snapshot).
        LABEL_TABLES + """
        ALTER TABLE judgments ADD COLUMN requested_model TEXT;
        """,
    ),
    (
        8,
        # Misalignment directions (emkit.directions, `emkit directions`): per checkpoint, judge and
        # layer, the difference of mean residual activations of misaligned and aligned answers (NULL
        # with too few of either) and its held-out AUROC; and each checkpoint's answers projected on
        # a reference direction ("run_key@step"), per group of answers.
        """
        CREATE TABLE directions (
            run_key TEXT NOT NULL, step INTEGER NOT NULL, judge TEXT NOT NULL, layer INTEGER NOT NULL,
            n_fit_misaligned INTEGER NOT NULL, n_fit_aligned INTEGER NOT NULL,
            n_held_misaligned INTEGER NOT NULL, n_held_aligned INTEGER NOT NULL,
            norm REAL, auroc REAL, vector BLOB, created_at TEXT NOT NULL,
            PRIMARY KEY (run_key, step, judge, layer));
        CREATE TABLE direction_projections (
            run_key TEXT NOT NULL, step INTEGER NOT NULL, judge TEXT NOT NULL, reference TEXT NOT NULL,
            layer INTEGER NOT NULL, answers TEXT NOT NULL, projection REAL NOT NULL, n INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (run_key, step, judge, reference, layer, answers));
        """,
    ),
    (
        9,
        # Answers generated with the residual stream changed (emkit.directions.intervene, `emkit
        # intervene`): the intervention, with the exact vectors it used (a direction found again
        # later is another intervention), and its answers, each paired with the plain answer of the
        # same slot (of_answer: same question, sample and sampling seed). Kept apart from `answers`,
        # which every table reads; their judgments are in `judgments` like any other.
        """
        CREATE TABLE interventions (
            key TEXT PRIMARY KEY, kind TEXT NOT NULL, scale REAL NOT NULL, layers TEXT NOT NULL,
            source TEXT NOT NULL, vectors BLOB NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE intervention_answers (
            answer_id TEXT PRIMARY KEY, intervention TEXT NOT NULL, of_answer TEXT NOT NULL,
            model_label TEXT NOT NULL, run_key TEXT NOT NULL, step INTEGER NOT NULL,
            question_set TEXT NOT NULL, question_id TEXT NOT NULL,
            paraphrase_index INTEGER NOT NULL, sample_index INTEGER NOT NULL, seed INTEGER NOT NULL,
            system TEXT, question TEXT NOT NULL, answer TEXT NOT NULL,
            n_tokens INTEGER, finish_reason TEXT, generator TEXT, created_at TEXT NOT NULL);
        CREATE INDEX intervention_answers_by_checkpoint ON intervention_answers (intervention, run_key, step);
        """,
    ),
    (
        10,
        # Each training step's loss, learning rate, gradient norm, tokens and seconds (its own wall
        # time), from the trainer's step log, stored with each checkpoint; and the runs of experiment
        # trackers (emkit.tracking) this run's training runs are logged to: the tracker's id of each,
        # so a resumed run goes on logging to the same one, and what was logged there already (JSON),
        # so nothing is sent twice.
        """
        CREATE TABLE train_steps (
            run_key TEXT NOT NULL, step INTEGER NOT NULL, loss REAL, learning_rate REAL, grad_norm REAL,
            tokens INTEGER, seconds REAL, PRIMARY KEY (run_key, step));
        CREATE TABLE tracked_runs (
            tracker TEXT NOT NULL, target TEXT NOT NULL, run_key TEXT NOT NULL, tracked_id TEXT NOT NULL,
            logged TEXT NOT NULL DEFAULT '{}', updated_at TEXT NOT NULL,
            PRIMARY KEY (tracker, target, run_key));
        """,
    ),
]

STEP_COLUMNS = ("step", "loss", "learning_rate", "grad_norm", "tokens", "seconds")


ANSWER_COLUMNS = ("answer_id", "model_label", "run_key", "step", "question_set", "question_id", "paraphrase_index",
                  "sample_index", "seed", "system", "question", "answer", "n_tokens", "finish_reason", "generator",
                  "created_at")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Store files this process has open through Python's sqlite3, with how many connections. SQLite's
# locks are POSIX locks, which a process loses all of on a file when it closes any descriptor of it;
# one SQLite library keeps them right across its own connections, but another copy in the same
# process (connectorx's, which emkit.analysis reads Arrow through) does not know of them. So it is
# used only on a store no connection of this process has open: else a writer here loses its locks,
# and another process closing the store could merge and delete the write-ahead log under it.
_OPEN_HERE: dict[str, int] = {}


def track_open(path: Path, change: int) -> None:
    key = str(Path(path).resolve())
    _OPEN_HERE[key] = _OPEN_HERE.get(key, 0) + change
    if _OPEN_HERE[key] <= 0:
        del _OPEN_HERE[key]


def open_here(path: Path) -> bool:
    """Whether a connection of this process through Python's sqlite3 has ``path`` open."""
    return str(Path(path).resolve()) in _OPEN_HERE


def _scored(judges: Iterable[str], metrics: list[str]) -> tuple[list[str], list]:
    """Per metric, whether answer ``a`` has a score (not an error) by any of ``judges``: the SQL and its
    parameters ([] where there is no judge or metric to ask about)."""
    names = list(judges)
    if not metrics or not names:
        return [], []
    marks = ",".join("?" * len(names))
    clauses = [f"EXISTS (SELECT 1 FROM judgments j WHERE j.answer_id = a.answer_id AND j.judge IN ({marks}) "
               f"AND j.metric = ? AND j.status != 'error')" for _ in metrics]
    return clauses, [p for metric in metrics for p in (*names, metric)]


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)  # autocommit; explicit BEGIN
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection, migrations: list[tuple[int, str]]) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for version, sql in migrations:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        track_open(self.path, +1)
        migrate(self.conn, MIGRATIONS)

    @classmethod
    def open_existing(cls, run_dir: Path) -> "Store":
        return cls(Path(run_dir) / STORE_FILE)

    def close(self) -> None:
        self.conn.close()
        track_open(self.path, -1)

    # -- meta -------------------------------------------------------------------------
    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- models and training runs ----------------------------------------------------
    def record_model(self, label: str, model_id: str, size_b: float | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?)", (label, model_id, size_b))

    def record_run(self, run, dataset_sha256: str | None, trainer: str) -> None:
        self.conn.execute(
            """INSERT INTO training_runs (run_key, model_label, domain, seed, trainer, dataset_path,
               dataset_sha256, dataset_rows, steps_per_epoch, total_steps, checkpoint_steps,
               question_sets, domain_question_set, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (run_key) DO UPDATE SET question_sets = excluded.question_sets,
                   checkpoint_steps = excluded.checkpoint_steps,
                   domain_question_set = excluded.domain_question_set,
                   dataset_sha256 = COALESCE(training_runs.dataset_sha256, excluded.dataset_sha256)""",
            (
                run.key, run.model.label, run.domain.name, run.seed, trainer,
                str(run.dataset.path) if run.dataset.path else None, dataset_sha256, run.dataset.rows,
                run.schedule.steps_per_epoch, run.schedule.total_steps, json.dumps(list(run.schedule.steps)),
                json.dumps(run.question_sets), run.domain_question_set, now(),
            ),
        )

    def set_base_weights(self, run_key: str, base_json: str) -> None:
        self.conn.execute("UPDATE training_runs SET base_weights = ? WHERE run_key = ?", (base_json, run_key))

    def finish_run(self, run_key: str) -> None:
        self.conn.execute("UPDATE training_runs SET finished_at = ? WHERE run_key = ?", (now(), run_key))

    def add_checkpoint(self, run_key: str, step: int, adapter_path: Path, train_loss: float | None,
                       seconds: float | None) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
            (run_key, step, str(adapter_path), train_loss, seconds, now()),
        )

    def add_train_steps(self, run_key: str, rows: list[dict]) -> None:
        """Training steps' metrics (a step trained again after a resume replaces its row), in one
        transaction (a checkpoint's steps are written at once, not one commit a row)."""
        if not rows:
            return
        own = not self.conn.in_transaction
        if own:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("INSERT OR REPLACE INTO train_steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [(run_key, *(row.get(c) for c in STEP_COLUMNS)) for row in rows])
            if own:
                self.conn.execute("COMMIT")
        except BaseException:
            if own:
                self.conn.execute("ROLLBACK")
            raise

    def train_steps(self, run_key: str, after: int = 0) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM train_steps WHERE run_key = ? AND step > ? ORDER BY step",
                                 (run_key, after))
        return [dict(row) for row in rows]

    def tracked_run(self, tracker: str, target: str, run_key: str) -> dict | None:
        row = self.conn.execute("SELECT tracked_id, logged FROM tracked_runs WHERE tracker = ? AND target = ? AND "
                                "run_key = ?", (tracker, target, run_key)).fetchone()
        return None if row is None else {"tracked_id": row["tracked_id"], "logged": json.loads(row["logged"])}

    def set_tracked_run(self, tracker: str, target: str, run_key: str, tracked_id: str, logged: dict) -> None:
        self.conn.execute("INSERT OR REPLACE INTO tracked_runs VALUES (?, ?, ?, ?, ?, ?)",
                          (tracker, target, run_key, tracked_id, json.dumps(logged, sort_keys=True), now()))

    def checkpoints(self, run_key: str) -> dict[int, Path]:
        rows = self.conn.execute("SELECT step, adapter_path FROM checkpoints WHERE run_key = ?", (run_key,))
        return {row["step"]: Path(row["adapter_path"]) for row in rows}

    # -- answers ----------------------------------------------------------------------
    def set_plan_answers(self, answer_ids: Iterable[str]) -> None:
        """Record the answers the current plan asks for (what the tables are made of); rewritten only
        when the plan's answers changed."""
        import hashlib

        ids = sorted(set(answer_ids))
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        if self.get_meta("plan_answers_sha256") == digest:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM plan_answers")
            self.conn.executemany("INSERT INTO plan_answers (answer_id) VALUES (?)", ((i,) for i in ids))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              ("plan_answers_sha256", json.dumps(digest)))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def existing_answers(self, answer_ids: Iterable[str]) -> set[str]:
        ids = list(answer_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.conn.execute(
                f"SELECT answer_id FROM answers WHERE answer_id IN ({marks})", chunk))
        return found

    def add_answer(self, planned, text: str, n_tokens: int, finish_reason: str, generator: str) -> None:
        """Store an answer; an answer in the same slot to a question asked differently is superseded."""
        self.insert_answer_row({
            "answer_id": planned.answer_id, "model_label": planned.model_label, "run_key": planned.run_key,
            "step": planned.step, "question_set": planned.question_set, "question_id": planned.question_id,
            "paraphrase_index": planned.paraphrase_index, "sample_index": planned.sample_index, "seed": planned.seed,
            "system": planned.system, "question": planned.question, "answer": text, "n_tokens": n_tokens,
            "finish_reason": finish_reason, "generator": generator, "created_at": now(),
        })

    # -- misalignment directions (emkit.directions) -----------------------------------
    def save_directions(self, run_key: str, judge: str, steps: list[tuple[int, list[dict], list[dict]]]) -> None:
        """A training run's directions and projections, as (step, a dict per layer, projections) for each
        checkpoint, in one transaction replacing everything an earlier pass stored for the run and judge
        (its projections are on its reference: a new reference makes every old row stale)."""
        stamp = now()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("directions", "direction_projections"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_key = ? AND judge = ?", (run_key, judge))
            self.conn.executemany(
                """INSERT INTO directions (run_key, step, judge, layer, n_fit_misaligned, n_fit_aligned,
                   n_held_misaligned, n_held_aligned, norm, auroc, vector, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(run_key, step, judge, d["layer"], d["n_fit_misaligned"], d["n_fit_aligned"],
                  d["n_held_misaligned"], d["n_held_aligned"], d["norm"], d["auroc"], d["vector"], stamp)
                 for step, directions, _ in steps for d in directions])
            self.conn.executemany(
                """INSERT INTO direction_projections (run_key, step, judge, reference, layer, answers, projection,
                   n, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(run_key, step, judge, p["reference"], p["layer"], p["answers"], p["projection"], p["n"], stamp)
                 for step, _, projections in steps for p in projections])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def direction_layers(self, run_key: str, step: int, judge: str) -> dict[int, tuple[bytes | None, float | None]]:
        """layer -> (the direction as float32 bytes, or None with too few answers; its held-out AUROC)."""
        rows = self.conn.execute("SELECT layer, vector, auroc FROM directions WHERE run_key = ? AND step = ? AND judge = ?",
                                 (run_key, step, judge))
        return {row["layer"]: (row["vector"], row["auroc"]) for row in rows}

    def direction_steps(self, run_key: str, judge: str) -> list[int]:
        """The steps of a run with rows in `directions` under ``judge`` (a direction or its too-few-answers row)."""
        rows = self.conn.execute("SELECT DISTINCT step FROM directions WHERE run_key = ? AND judge = ? ORDER BY step",
                                 (run_key, judge))
        return [row[0] for row in rows]

    # -- answers under an intervention (emkit.directions.intervene) ----------------------
    def record_intervention(self, key: str, kind: str, scale: float, layers: list[int], source: str,
                            vectors: bytes) -> None:
        # ON CONFLICT, not OR IGNORE: the same key again is nothing new, a NULL where none may be is an error
        self.conn.execute("INSERT INTO interventions VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                          (key, kind, scale, json.dumps(layers), source, vectors, now()))

    def existing_intervention_answers(self, answer_ids: Iterable[str]) -> set[str]:
        ids, found = list(answer_ids), set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found.update(r[0] for r in self.conn.execute(
                f"SELECT answer_id FROM intervention_answers WHERE answer_id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def add_intervention_answer(self, answer_id: str, intervention: str, run_key: str, plain, text: str,
                                n_tokens: int, finish_reason: str, generator: str) -> None:
        """An answer made under ``intervention`` in training run ``run_key``, in the slot of the plain answer
        ``plain`` (a PlannedAnswer: at step 0, the baseline's)."""
        self.conn.execute(
            """INSERT OR IGNORE INTO intervention_answers (answer_id, intervention, of_answer, model_label, run_key,
               step, question_set, question_id, paraphrase_index, sample_index, seed, system, question, answer,
               n_tokens, finish_reason, generator, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (answer_id, intervention, plain.answer_id, plain.model_label, run_key, plain.step, plain.question_set,
             plain.question_id, plain.paraphrase_index, plain.sample_index, plain.seed, plain.system, plain.question,
             text, n_tokens, finish_reason, generator, now()))

    def unjudged_intervention_answers(self, judges: Iterable[str], intervention: str, run_key: str, step: int,
                                      metrics: list[str]) -> list[tuple[str, str, set[str]]]:
        """(answer_id, text, metrics scored) of one checkpoint's answers under ``intervention`` that miss a
        score on one of ``metrics`` by all of ``judges`` (errors are not done yet)."""
        scored, params = _scored(judges, metrics)
        if not scored:
            return []
        rows = self.conn.execute(
            f"SELECT a.answer_id, a.answer, {', '.join(scored)} FROM intervention_answers a "
            f"WHERE a.intervention = ? AND a.run_key = ? AND a.step = ? AND NOT ({' AND '.join(scored)})",
            params + [intervention, run_key, step] + params)
        return [(r[0], r[1], {m for m, done in zip(metrics, r[2:]) if done}) for r in rows]

    def insert_answer_row(self, row: dict) -> None:
        """An answer as a row (also one made by a job elsewhere: emkit.execution.shards); a second
        insert of the same answer changes nothing."""
        slot = tuple(row[c] for c in ("run_key", "step", "question_set", "question_id", "paraphrase_index",
                                      "sample_index", "seed", "model_label"))
        columns = [c for c in ANSWER_COLUMNS if c in row]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                f"INSERT OR IGNORE INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
            self.conn.execute(
                """UPDATE answers SET superseded_by = ? WHERE run_key = ? AND step = ? AND question_set = ?
                   AND question_id = ? AND paraphrase_index = ? AND sample_index = ? AND seed = ? AND model_label = ?
                   AND answer_id != ? AND superseded_by IS NULL""",
                (row["answer_id"], *slot, row["answer_id"]),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def answer_texts(self, answer_ids: Iterable[str]) -> dict[str, str]:
        ids = list(answer_ids)
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                    f"SELECT answer_id, answer FROM answers WHERE answer_id IN ({marks})", chunk):
                out[row[0]] = row[1]
        return out

    # -- judgments --------------------------------------------------------------------
    def judged(self, judges: Iterable[str]) -> set[tuple[str, str]]:
        """(answer_id, metric) pairs any of these judges scored; errors are not done yet."""
        names = list(judges)
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"SELECT answer_id, metric FROM judgments WHERE judge IN ({marks}) AND status != 'error'", names)
        return {(r[0], r[1]) for r in rows}

    def unjudged(self, judges: Iterable[str], model_label: str, run_key: str,
                 metrics: list[str]) -> list[tuple[str, int, str, set[str]]]:
        """Stored answers of one model's run (or baseline) that miss a score on one of ``metrics`` by
        any of these judges (errors are not done yet): (answer_id, step, text, the metrics scored).
        SQLite finds them through the judgments' key, so a pass beside the GPU work reads the answers
        still to judge, not every stored one."""
        scored, params = _scored(judges, metrics)
        if not scored:
            return []
        rows = self.conn.execute(
            f"SELECT a.answer_id, a.step, a.answer, {', '.join(scored)} FROM answers a "
            f"WHERE a.run_key = ? AND a.model_label = ? AND NOT ({' AND '.join(scored)})",
            params + [run_key, model_label] + params)
        return [(r[0], r[1], r[2], {m for m, done in zip(metrics, r[3:]) if done}) for r in rows]

    def add_judgment(self, answer_id: str, judge: str, metric: str, result, prompt_version: str,
                     request_key: str, from_cache: bool, requested_model: str | None = None) -> None:
        """A judgment: ``result.judge_model`` is the model the provider says answered (a dated
        snapshot), ``requested_model`` the one it was asked for."""
        self.conn.execute(
            """INSERT OR REPLACE INTO judgments (answer_id, judge, metric, score, status, scoring, raw,
               judge_model, requested_model, prompt_version, request_key, input_tokens, output_tokens, cost_usd,
               from_cache, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                answer_id, judge, metric, result.score, result.status, result.scoring, result.raw,
                result.judge_model, requested_model, prompt_version, request_key, result.input_tokens,
                result.output_tokens, result.cost_usd, int(from_cache), result.error or None, now(),
            ),
        )

    # -- units of GPU work (emkit.execution) --------------------------------------------
    def set_unit(self, unit_key: str, kind: str, executor: str, state: str, **fields) -> None:
        """Record where a unit is; fields: job_id, attempts, log_path, detail, gpu_seconds."""
        known = {"job_id", "attempts", "log_path", "detail", "gpu_seconds"}
        unknown = set(fields) - known
        if unknown:
            raise TypeError(f"unknown unit fields {sorted(unknown)}")
        self.conn.execute(
            "INSERT INTO units (unit_key, kind, executor, state, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (unit_key) DO UPDATE SET kind = excluded.kind, executor = excluded.executor, "
            "state = excluded.state, updated_at = excluded.updated_at",
            (unit_key, kind, executor, state, now()))
        for name, value in fields.items():
            self.conn.execute(f"UPDATE units SET {name} = ? WHERE unit_key = ?", (value, unit_key))

    def units(self) -> dict[str, dict]:
        return {row["unit_key"]: dict(row) for row in self.conn.execute("SELECT * FROM units ORDER BY unit_key")}

    def counts(self) -> dict[str, int]:
        return {
            table: self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("training_runs", "checkpoints", "answers", "judgments")
        }

