"""How results come home from a unit that ran elsewhere.

SQLite's locking does not hold over a network filesystem, so a job never opens the run's
store. It works against a scratch store of its own on node-local disk, seeded with the rows
of the run store it needs, and every row it writes there is also appended to its shard:
``DIR/shards/UNIT.jsonl``, one JSON object per line, flushed and fsynced line by line. One
writer per shard: an attempt of a unit holds ``DIR/shards/UNIT.lock`` (a POSIX record lock,
which NFS carries through its lock manager) while it works, so a job Slurm requeues or emkit
submits again waits for an earlier attempt that still runs instead of appending beside it and
writing the same adapters. Readers take only whole lines, so the coordinator can read a shard
while its job writes it.

Merging a shard into the run store is idempotent: answers are inserted once by their key,
checkpoints and runs are upserted. Reading a shard again from the start, after a coordinator
restart or a job requeued, gives the same store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from emkit.errors import EmkitError
from emkit.store import Store

log = logging.getLogger("emkit")

TABLE_KEYS = {"models": ("model_label",), "training_runs": ("run_key",), "checkpoints": ("run_key", "step"),
              "answers": ("answer_id",), "train_steps": ("run_key", "step")}


def shard_path(run_dir_path: Path, unit_key: str) -> Path:
    return Path(run_dir_path) / "shards" / f"{unit_key}.jsonl"


class UnitLock:
    """Held by the one attempt of a unit that may work on it; another attempt waits for it.

    The lock dies with its process (also on a node that Slurm kills), so a requeued job never
    waits for an attempt that is gone. The file says who holds it, for the waiting job's log.
    """

    def __init__(self, shard: Path, poll_s: float = 1.0):
        self.path = Path(shard).with_suffix(".lock")
        self.poll_s = poll_s
        self._handle = None

    def acquire(self) -> float:
        """Take the lock, waiting as long as another attempt holds it; return the seconds waited."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        started, told = time.monotonic(), 0.0
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if not told or waited - told >= 300:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    log.warning("%s: an earlier attempt of this unit still runs (%s); waiting for it to end, so "
                                "that nothing is made twice", self.path.stem, holder)
                    told = waited or 1e-9
                time.sleep(self.poll_s)
            except OSError as exc:  # a filesystem without locks (NFS with no lock manager): go on, and say so
                log.warning("%s: cannot lock %s (%s); if Slurm runs this unit twice at once, both attempts write "
                            "its shard", self.path.stem, self.path, exc)
                break
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, Slurm job "
                     f"{os.environ.get('SLURM_JOB_ID', '-')}\n")
        handle.flush()
        self._handle = handle
        return time.monotonic() - started

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None

    def __enter__(self) -> "UnitLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ShardWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            self._drop_torn_tail()
        self._handle = open(self.path, "ab")

    def _drop_torn_tail(self) -> None:
        """A job killed mid-write leaves half a line; the next attempt cuts it off before appending."""
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def read_records(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The whole lines of a shard from byte ``offset`` on, and the offset after the last of them."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    records = []
    for raw in data[:end].splitlines():
        try:
            records.append(json.loads(raw))
        except ValueError:
            raise EmkitError(f"{path}: a line at byte {offset} and after is not JSON ({raw[:60]!r}); the shard is "
                             f"damaged: move it aside and run again, and its unit is made again.") from None
    return records, offset + end


def merge(store: Store, records: list[dict]) -> dict[str, int]:
    """Write shard records into a store by key; return how many rows of each table were new."""
    new = {"checkpoints": 0, "answers": 0}
    for record in records:
        table, row = record.get("table"), record.get("row")
        if table is None:
            continue  # an event (emkit.execution.job), not a row
        if table == "answers":
            known = store.conn.execute("SELECT 1 FROM answers WHERE answer_id = ?", (row["answer_id"],)).fetchone()
            if known is None:
                store.insert_answer_row(row)
                new["answers"] += 1
        elif table == "checkpoints":
            known = store.checkpoints(row["run_key"]).get(row["step"])
            store.conn.execute("INSERT OR REPLACE INTO checkpoints (run_key, step, adapter_path, train_loss, seconds, "
                               "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                               [row[c] for c in ("run_key", "step", "adapter_path", "train_loss", "seconds",
                                                 "created_at")])
            new["checkpoints"] += int(known is None)
        elif table == "train_steps":
            store.add_train_steps(row["run_key"], [row])
        elif table == "training_runs":
            _upsert_run(store, row)
        elif table == "models":
            store.record_model(row["model_label"], row["model_id"], row["size_b"])
    return new


def _upsert_run(store: Store, row: dict) -> None:
    """A run's row: what the coordinator recorded stays; a job adds its base weights and finish time."""
    columns = list(row)
    store.conn.execute(
        f"INSERT INTO training_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        "ON CONFLICT (run_key) DO UPDATE SET "
        "base_weights = COALESCE(training_runs.base_weights, excluded.base_weights), "
        "dataset_sha256 = COALESCE(training_runs.dataset_sha256, excluded.dataset_sha256), "
        "finished_at = COALESCE(excluded.finished_at, training_runs.finished_at)",
        [row[c] for c in columns])


def export_rows(store: Store, unit) -> list[dict]:
    """The rows of the run store a unit's job needs: every model and run (a baseline reads the base its
    model's runs were trained on), the unit's checkpoints and its answers already made."""
    records = []

    def add(table, sql, params=()):
        for row in store.conn.execute(sql, params):
            records.append({"table": table, "row": dict(row)})

    add("models", "SELECT * FROM models")
    add("training_runs", "SELECT * FROM training_runs")
    add("checkpoints", "SELECT * FROM checkpoints WHERE run_key = ?", (unit.run_key,))
    add("answers", "SELECT * FROM answers WHERE run_key = ? AND model_label = ?", (unit.run_key, unit.model_label))
    for record in records:
        if record["table"] == "answers":
            record["row"].pop("superseded_by", None)
    return records


class ShardStore(Store):
    """A job's scratch store: each row written also goes to the unit's shard."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.shard: ShardWriter | None = None  # None while the store is seeded

    def _emit(self, table: str, *key) -> None:
        if self.shard is None:
            return
        where = " AND ".join(f"{c} = ?" for c in TABLE_KEYS[table])
        row = self.conn.execute(f"SELECT * FROM {table} WHERE {where}", key).fetchone()
        if row is not None:
            data = dict(row)
            data.pop("superseded_by", None)
            self.shard.write({"table": table, "row": data})

    def record_model(self, label, model_id, size_b) -> None:
        super().record_model(label, model_id, size_b)
        self._emit("models", label)

    def record_run(self, run, dataset_sha256, trainer) -> None:
        super().record_run(run, dataset_sha256, trainer)
        self._emit("training_runs", run.key)

    def set_base_weights(self, run_key, base_json) -> None:
        super().set_base_weights(run_key, base_json)
        self._emit("training_runs", run_key)

    def finish_run(self, run_key) -> None:
        super().finish_run(run_key)
        self._emit("training_runs", run_key)

    def add_checkpoint(self, run_key, step, adapter_path, train_loss, seconds) -> None:
        super().add_checkpoint(run_key, step, adapter_path, train_loss, seconds)
        self._emit("checkpoints", run_key, step)

    def add_train_steps(self, run_key, rows) -> None:
        super().add_train_steps(run_key, rows)
        for row in rows:
            self._emit("train_steps", run_key, row["step"])

    def insert_answer_row(self, row) -> None:
        super().insert_answer_row(row)
        self._emit("answers", row["answer_id"])

    def event(self, name: str, **values) -> None:
        if self.shard is not None:
            self.shard.write({"event": name, **values})
