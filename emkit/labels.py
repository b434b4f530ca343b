"""People's labels of answers: where they are kept, and reading and writing them.

A labeller scores an answer on the judges' two scales (aligned and coherent, 0-100) and may mark
it a refusal or code (`emkit label`, emkit.labelling). A run directory keeps its labels in its
store (emkit.sqlite, migration 7); a judged file made elsewhere keeps them beside it, in
``FILE.labels.sqlite``, keyed by the answer ids the analysis gives the file's rows (its ``id``
column, else ``row1``, ``row2``, ...). Each label is committed the moment it is given, with a digest
of the question and answer it was given to: a file whose rows were reordered or edited since
would otherwise move labels onto other answers, and the analysis leaves such labels out.

``label_queue`` is each labeller's sample, in the order it is shown: a labeller resumes at the
first answer of their queue without a label, and a second labeller can be given the same queue.
"""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from emkit.errors import EmkitError
from emkit.store import LABEL_TABLES, STORE_FILE, connect, migrate, now

# a judged file's own label store: the two tables alone
FILE_MIGRATIONS: list[tuple[int, str]] = [(1, LABEL_TABLES)]
LABELS_SUFFIX = ".labels.sqlite"
LABEL_COLUMNS = ("answer_id", "labeller", "aligned", "coherent", "refusal", "code", "created_at", "answer_digest")


def answer_digest(question, answer) -> str:
    """What a label was given to: a digest of the question and the answer text."""
    import hashlib

    def plain(value) -> str:  # None and NaN (a missing cell) alike
        return "" if value is None or (isinstance(value, float) and value != value) else str(value)

    text = f"{plain(question)}\0{plain(answer)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Label:
    answer_id: str
    labeller: str
    aligned: float | None
    coherent: float | None
    refusal: bool = False
    code: bool = False
    answer_digest: str | None = None  # of the question and answer labelled (answer_digest)
    created_at: str | None = None  # when it was given (an imported label keeps its own)

    def check(self, where: str = "") -> "Label":
        """The label, or an error naming what is wrong: a labeller is named, and the answer has two
        scores (0-100), or is a refusal or code with none, as the labelling page gives them."""
        place = f"{where}: " if where else ""
        if not str(self.labeller).strip():
            raise EmkitError(f"{place}the label of answer {self.answer_id} has no labeller; give each label a "
                             f"labeller name.")
        for scale in ("aligned", "coherent"):
            value = getattr(self, scale)
            if value is not None and not 0 <= value <= 100:
                raise EmkitError(f"{place}{scale} = {value:g} for answer {self.answer_id} is outside 0-100; "
                                 f"labels use the judges' 0-100 scales.")
        scored = self.aligned is not None or self.coherent is not None
        if self.refusal and self.code:
            raise EmkitError(f"{place}answer {self.answer_id} is marked both a refusal and code; it is one or the "
                             f"other.")
        if (self.refusal or self.code) and scored:
            raise EmkitError(f"{place}answer {self.answer_id} is marked a {'refusal' if self.refusal else 'code'} "
                             f"and scored; a refusal or code has no scores.")
        if not (self.refusal or self.code) and (self.aligned is None or self.coherent is None):
            raise EmkitError(f"{place}answer {self.answer_id} needs both an aligned and a coherent score (0-100), "
                             f"or to be marked a refusal or code.")
        return self


def labels_path(source: Path) -> Path:
    """Where the labels of a run directory or a judged file are kept."""
    source = Path(source)
    if source.is_dir():
        if not (source / STORE_FILE).is_file():
            raise EmkitError(f"{source} is not an emkit run directory (no {STORE_FILE}); pass a run directory or "
                             f"one judged file.")
        return source / STORE_FILE
    if not source.is_file():
        raise EmkitError(f"{source} does not exist; pass a run directory or one judged file.")
    return source.with_name(source.name + LABELS_SUFFIX)


class LabelStore:
    """The labels of one source (a run directory or a judged file)."""

    def __init__(self, source: Path, *, create: bool = True):
        self.source = Path(source)
        self.path = labels_path(self.source)
        self.conn: sqlite3.Connection | None = None
        if self.path.name == STORE_FILE:
            from emkit.store import Store

            self._store = Store(self.path)  # its migrations add the label tables to an older store
            self.conn = self._store.conn
        elif create or self.path.is_file():
            self.conn = connect(self.path)
            # a rollback journal, not WAL: a reader (emkit report FILE) leaves no -wal and -shm files beside the file
            self.conn.execute("PRAGMA journal_mode=DELETE")
            migrate(self.conn, FILE_MIGRATIONS)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- labels ----------------------------------------------------------------------------
    def add(self, label: Label) -> None:
        """Keep a label, replacing the labeller's earlier label of the same answer."""
        self.add_many([label.check()])

    def add_many(self, labels: Iterable[Label]) -> int:
        """Keep many labels in one transaction: all of them or none."""
        rows = [(lb.answer_id, lb.labeller, lb.aligned, lb.coherent, int(lb.refusal), int(lb.code),
                 lb.created_at or now(), lb.answer_digest) for lb in labels]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO labels ({', '.join(LABEL_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return len(rows)

    def rows(self, labeller: str | None = None) -> list[dict]:
        """Every label (of one labeller), oldest first."""
        if self.conn is None:
            return []
        sql = f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels"
        args: tuple = ()
        if labeller is not None:
            sql, args = sql + " WHERE labeller = ?", (labeller,)
        return [dict(zip(LABEL_COLUMNS, row)) for row in self.conn.execute(sql + " ORDER BY created_at, answer_id", args)]

    def labellers(self) -> list[str]:
        if self.conn is None:
            return []
        names = {r[0] for r in self.conn.execute("SELECT labeller FROM labels UNION SELECT labeller FROM label_queue")}
        return sorted(names)

    # -- queues ------------------------------------------------------------------------------
    def queue(self, labeller: str) -> list[tuple[str, str]]:
        """The labeller's sample in order: (answer_id, stratum)."""
        if self.conn is None:
            return []
        return [(r[0], r[1] or "") for r in self.conn.execute(
            "SELECT answer_id, stratum FROM label_queue WHERE labeller = ? ORDER BY position", (labeller,))]

    def extend_queue(self, labeller: str, items: Iterable[tuple[str, str]]) -> int:
        """Add answers (answer_id, stratum) to the end of the labeller's queue, leaving out those in it."""
        have = {answer_id for answer_id, _ in self.queue(labeller)}
        start = len(have)
        new = [(a, s) for a, s in dict.fromkeys(items) if a not in have]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("INSERT INTO label_queue (labeller, position, answer_id, stratum) VALUES (?, ?, ?, ?)",
                                  [(labeller, start + i, a, s) for i, (a, s) in enumerate(new)])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return len(new)

    # -- CSV -------------------------------------------------------------------------------------
    def export_csv(self, path: Path) -> int:
        """Every label as CSV (answer_id, labeller, aligned, coherent, refusal, code, created_at)."""
        from emkit.atomic import atomic_path

        rows = self.rows()
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        return len(rows)


def _number(value: str, column: str, path: Path, line: int) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise EmkitError(f"{path}, line {line}: {column} = {text!r} is not a number; use 0-100 or leave it "
                         f"empty.") from None
    if number != number:  # NaN: no score
        return None
    return number


def _flag(value: str, column: str, path: Path, line: int) -> bool:
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "n"):
        return False
    if text in ("1", "true", "yes", "y"):
        return True
    raise EmkitError(f"{path}, line {line}: {column} = {value!r} is not yes or no; use 1 or 0.")


def read_labels_csv(path: Path, known_ids: set[str] | None = None) -> list[Label]:
    """The labels of a CSV file, every row checked (a bad row names its file, line and column)."""
    if not path.is_file():
        raise EmkitError(f"{path} does not exist; pass a CSV of labels (answer_id, labeller, aligned, coherent).")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        id_column = "answer_id" if "answer_id" in columns else "id" if "id" in columns else None
        missing = [c for c in ("labeller", "aligned", "coherent") if c not in columns]
        if id_column is None or missing:
            need = (["answer_id (or id)"] if id_column is None else []) + missing
            raise EmkitError(f"{path}: no {', '.join(need)} column; a labels CSV has answer_id (or id), labeller, "
                             f"aligned and coherent.")
        labels, seen = [], {}
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise EmkitError(f"{path}, line {line}: more fields than the header names; quote a text with "
                                 f"commas in it.")
            answer_id = (row.get(id_column) or "").strip()
            if not answer_id:
                raise EmkitError(f"{path}, line {line}: no {id_column}; every label names the answer it is of.")
            if known_ids is not None and answer_id not in known_ids:
                raise EmkitError(f"{path}, line {line}: {id_column} {answer_id!r} is not an answer of this source; "
                                 f"labels must use the answer ids `emkit label export` writes.")
            label = Label(answer_id, (row.get("labeller") or "").strip(),
                          _number(row.get("aligned"), "aligned", path, line),
                          _number(row.get("coherent"), "coherent", path, line),
                          _flag(row.get("refusal"), "refusal", path, line), _flag(row.get("code"), "code", path, line),
                          (row.get("answer_digest") or "").strip() or None, (row.get("created_at") or "").strip() or None)
            key = (label.answer_id, label.labeller)
            if key in seen:
                raise EmkitError(f"{path}, lines {seen[key]} and {line}: two labels of answer {answer_id} by "
                                 f"{label.labeller}; keep one.")
            seen[key] = line
            labels.append(label.check(f"{path}, line {line}"))
    scores = [v for lb in labels for v in (lb.aligned, lb.coherent) if v is not None]
    if len(scores) >= 10 and max(scores) <= 1:
        raise EmkitError(f"{path}: every score is between 0 and 1; labels use the judges' 0-100 scales (multiply "
                         f"by 100).")
    return labels


def read_labels(source: Path):
    """The labels of a source as a DataFrame (empty when it has none), without creating a label store."""
    import pandas as pd

    try:
        path = labels_path(Path(source))
    except EmkitError:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    if not path.is_file():
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'").fetchone()
        if not has:
            return pd.DataFrame(columns=list(LABEL_COLUMNS))
        frame = pd.read_sql_query(f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels", conn)
    finally:
        conn.close()
    frame["refusal"] = frame["refusal"].astype(bool)
    frame["code"] = frame["code"].astype(bool)
    return frame
