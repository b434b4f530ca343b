"""The judge cache, shared across runs: a request is never sent twice.

A request is identified by the judge (model, and the server it is reached at), the
scoring mode, the metric and the full prompt, which contains the template's text, the
question and the answer. Errors are never cached. The cache is a SQLite file in emkit's
cache directory unless [judging] cache names another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from emkit.interfaces import JudgeResult
from emkit.locations import cache_dir
from emkit.store import connect, migrate, now

CACHE_MIGRATIONS = [
    (
        1,
        """
        CREATE TABLE judgments (
            request_key TEXT PRIMARY KEY, judge_identity TEXT NOT NULL, metric TEXT NOT NULL,
            scoring TEXT NOT NULL, score REAL, status TEXT NOT NULL, raw TEXT, judge_model TEXT,
            input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, created_at TEXT NOT NULL)
        """,
    ),
    (
        2,
        # Batches in flight at a provider (emkit.judging.batch): a file and its batch are written the
        # moment the provider returns their ids, so that a killed command polls them again instead of
        # paying for the same requests twice, and any run needing one of their requests waits for them.
        # Rate limits read from a provider's headers, for the dry run's wall-time estimate.
        """
        CREATE TABLE judge_batches (
            file_id TEXT PRIMARY KEY, batch_id TEXT, judge_identity TEXT NOT NULL, status TEXT NOT NULL,
            requests INTEGER NOT NULL, tokens INTEGER NOT NULL, attempt INTEGER NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, collected INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE judge_batch_requests (
            file_id TEXT NOT NULL REFERENCES judge_batches(file_id), request_key TEXT NOT NULL, metric TEXT NOT NULL,
            PRIMARY KEY (file_id, request_key));
        CREATE INDEX judge_batch_requests_key ON judge_batch_requests(request_key);
        CREATE TABLE rate_limits (
            judge_identity TEXT PRIMARY KEY, rpm REAL, tpm REAL, seen_at TEXT NOT NULL)
        """,
    ),
    (
        3,
        # A file id is unique at one provider only: two servers that both number their files from 1
        # share the cache. Batches are keyed by the judge (its model and API base) and the file id.
        """
        CREATE TABLE judge_batches_by_judge (
            file_id TEXT NOT NULL, batch_id TEXT, judge_identity TEXT NOT NULL, status TEXT NOT NULL,
            requests INTEGER NOT NULL, tokens INTEGER NOT NULL, attempt INTEGER NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, collected INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (judge_identity, file_id));
        INSERT INTO judge_batches_by_judge SELECT * FROM judge_batches;
        CREATE TABLE judge_batch_requests_by_judge (
            judge_identity TEXT NOT NULL, file_id TEXT NOT NULL, request_key TEXT NOT NULL, metric TEXT NOT NULL,
            PRIMARY KEY (judge_identity, file_id, request_key));
        INSERT INTO judge_batch_requests_by_judge SELECT b.judge_identity, r.file_id, r.request_key, r.metric
            FROM judge_batch_requests r JOIN judge_batches b ON b.file_id = r.file_id;
        DROP TABLE judge_batch_requests;
        DROP TABLE judge_batches;
        ALTER TABLE judge_batches_by_judge RENAME TO judge_batches;
        ALTER TABLE judge_batch_requests_by_judge RENAME TO judge_batch_requests;
        CREATE INDEX judge_batch_requests_key ON judge_batch_requests(request_key)
        """,
    ),
]


def request_key(identity: str, scoring: str, metric: str, prompt: str) -> str:
    digest = hashlib.sha256()
    for part in (identity, scoring, metric, prompt):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def default_cache_path(configured: str = "") -> Path:
    """[judging] cache, else $EMKIT_JUDGE_CACHE, else the cache directory's judge-cache.sqlite."""
    import os

    if configured:
        return Path(configured).expanduser()
    if os.environ.get("EMKIT_JUDGE_CACHE"):
        return Path(os.environ["EMKIT_JUDGE_CACHE"]).expanduser()
    return cache_dir() / "judge-cache.sqlite"


class JudgeCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(self.path)
        migrate(self.conn, CACHE_MIGRATIONS)

    def get_many(self, keys: list[str]) -> dict[str, JudgeResult]:
        found: dict[str, JudgeResult] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                    f"""SELECT request_key, score, status, scoring, raw, judge_model, input_tokens, output_tokens,
                        cost_usd FROM judgments WHERE request_key IN ({marks})""", chunk):
                found[row["request_key"]] = JudgeResult(
                    score=row["score"], status=row["status"], scoring=row["scoring"], raw=row["raw"] or "",
                    judge_model=row["judge_model"] or "", input_tokens=row["input_tokens"] or 0,
                    output_tokens=row["output_tokens"] or 0, cost_usd=row["cost_usd"] or 0.0,
                )
        return found

    def put(self, key: str, identity: str, metric: str, result: JudgeResult) -> None:
        if result.status == "error":
            return
        self.conn.execute(
            "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, identity, metric, result.scoring, result.score, result.status, result.raw, result.judge_model,
             result.input_tokens, result.output_tokens, result.cost_usd, now()),
        )

    def put_limits(self, identity: str, limits: dict[str, float]) -> None:
        """The rate limits a live judge read from its provider's headers (requests, tokens a minute)."""
        if limits:
            self.conn.execute("INSERT OR REPLACE INTO rate_limits VALUES (?, ?, ?, ?)",
                              (identity, limits.get("requests"), limits.get("tokens"), now()))

    def limits(self, identity: str) -> dict[str, float]:
        row = self.conn.execute("SELECT rpm, tpm FROM rate_limits WHERE judge_identity = ?", (identity,)).fetchone()
        if row is None:
            return {}
        return {k: v for k, v in (("requests", row["rpm"]), ("tokens", row["tpm"])) if v}

    def close(self) -> None:
        self.conn.close()
