"""Reading a run's store without writing to it.

Reports, summaries and ``emkit.load`` only read: they never migrate the schema (a store from an
older emkit is read as it is, a column it lacks read as empty) and never write a byte into the run
directory, so a result tree on a read-only disk, a colleague's copy or an archive mounted
read-only reads like any other.

SQLite opens a WAL database read-only only where it can create its shared-memory file, which a
read-only directory forbids; there the file is opened as immutable instead (nobody can be
writing to it). A run in progress is read with ``mode=ro``, which sees a consistent snapshot.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pandas as pd

from emkit.store import open_here, track_open

log = logging.getLogger("emkit")


def _has_connectorx() -> bool:
    import importlib.util

    return importlib.util.find_spec("connectorx") is not None


class StoreReader:
    """A read-only connection to ``emkit.sqlite`` that knows which tables and columns it has."""

    def __init__(self, store_path: Path):
        self.path = Path(store_path)
        self.mode = "mode=ro"
        try:
            self.conn = self._connect(self.mode)
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # a read-only directory without the WAL's -shm file: nobody can be writing here
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                log.warning("%s is read-only and has a write-ahead log that was never merged into it; results "
                            "written last by the run that made it may be missing from what is read.", self.path)
            self.mode = "immutable=1"
            self.conn = self._connect(self.mode)
        track_open(self.path, +1)
        self.tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._columns: dict[str, set[str]] = {}

    def _connect(self, mode: str) -> sqlite3.Connection:
        from urllib.parse import quote

        return sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?{mode}", uri=True)

    def close(self) -> None:
        self.conn.close()
        track_open(self.path, -1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def columns(self, table: str) -> set[str]:
        if table not in self._columns:
            self._columns[table] = ({row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
                                    if table in self.tables else set())
        return self._columns[table]

    def column_or_null(self, table: str, column: str, alias: str | None = None) -> str:
        """``column`` where the store has it, else NULL under its name (a store from an older emkit)."""
        return column if column in self.columns(table) else f"NULL AS {alias or column}"

    def frame(self, sql: str, params=()) -> pd.DataFrame:
        return pd.read_sql_query(sql, self.conn, params=params)

    def arrow(self, sql: str):
        return self.arrow_many([sql])[0]

    def arrow_many(self, sqls: list[str]) -> list:
        """Queries' results as Arrow tables, read at once. connectorx reads SQLite straight into Arrow, with
        no Python object per value: at a million answers, seconds instead of tens of seconds. It links a
        SQLite of its own, so it reads only a store no connection of this process has open through
        Python's (emkit.store.track_open says why): this reader's own connection is closed meanwhile, and
        a store this process is writing is read through sqlite3. So is an immutable (read-only) file,
        which connectorx cannot open."""
        from concurrent.futures import ThreadPoolExecutor

        if self.mode == "mode=ro" and os.access(self.path.parent, os.W_OK) and _has_connectorx():
            self.close()
            try:
                if not open_here(self.path):
                    with ThreadPoolExecutor(max_workers=len(sqls)) as pool:  # the reads release the GIL
                        return list(pool.map(self._connectorx, sqls))
            finally:
                self.conn = self._connect(self.mode)
                track_open(self.path, +1)
        with ThreadPoolExecutor(max_workers=len(sqls)) as pool:
            return list(pool.map(self._through_sqlite3, sqls))

    def _connectorx(self, sql: str):
        import connectorx
        from urllib.parse import quote

        return connectorx.read_sql("sqlite://" + quote(str(self.path.resolve())), sql, return_type="arrow")

    def _through_sqlite3(self, sql: str):
        import pyarrow as pa

        conn = self._connect(self.mode)  # a connection of this thread's own
        track_open(self.path, +1)
        try:
            return pa.Table.from_pandas(pd.read_sql_query(sql, conn), preserve_index=False)
        finally:
            conn.close()
            track_open(self.path, -1)

    def meta(self, key: str, default=None):
        import json

        if "meta" not in self.tables:
            return default
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
