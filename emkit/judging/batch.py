"""Judging through a provider's batch API: half the price, no per-minute limit, results within a day.

The requests a pass still needs (after the cache) are written as the provider's batch files
(OpenAI's JSONL: one ``{"custom_id", "method", "url", "body"}`` per line, the custom_id being
the request's cache key), cut at the provider's limits: requests and bytes per file, and the
tokens all of this judge's batches may hold in flight at once (a batch beyond it waits for
another to finish). Each file's id, then its batch's id, is written to the ledger (a table
in the judge cache's SQLite file) the moment the provider returns it, so:

- a killed command, run again, finds its batches in the ledger and polls them; it never
  uploads or submits those requests again. A file uploaded whose batch id was never written
  (killed between the two calls) is looked up among the provider's batches by its file id
  before a batch is made from it;
- any command that needs a request already in flight (another run judging the same answers)
  waits for that batch instead of paying for the request again.

Batches are polled every ``batch_poll_s``; the log shows each one's status and the provider's
own counts. A finished batch's output file becomes judgments exactly as live replies do (the
same parsing, logprobs included) and goes into the store and the cache by key. Its error file
is read as the live path reads errors: a refusal (a 4xx other than 429) is a judgment with
status ``error``; a 429 or 5xx, a request an expired or cancelled batch never ran, or one
missing from both files is sent again, in a new batch or live (``batch_resend``), at most
``max_retries`` times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from emkit.errors import EmkitError
from emkit.interfaces import JudgeRequest, JudgeResult
from emkit.judging.api import Failure

log = logging.getLogger("emkit")

FINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"
TOKEN_LIMIT_CODES = {"token_limit_exceeded"}


class BatchLedger:
    """The batches in flight, in the judge cache's SQLite file (migration 2 of emkit.judging.cache)."""

    def __init__(self, path: str | Path):
        from emkit.judging.cache import CACHE_MIGRATIONS
        from emkit.store import connect, migrate

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(Path(path))
        migrate(self.conn, CACHE_MIGRATIONS)

    def in_flight(self, identity: str, keys: list[str]) -> list[dict]:
        """Batches of this judge not yet collected that hold any of ``keys``, with all their requests."""
        wanted = set(keys)
        found = []
        for row in self.conn.execute("SELECT * FROM judge_batches WHERE judge_identity = ? AND collected = 0 "
                                     "ORDER BY created_at", (identity,)):
            requests = {r["request_key"]: r["metric"] for r in self.conn.execute(
                "SELECT request_key, metric FROM judge_batch_requests WHERE judge_identity = ? AND file_id = ?",
                (identity, row["file_id"]))}
            if wanted & requests.keys():
                found.append({**dict(row), "keys": requests})
        return found

    def add_file(self, file_id: str, identity: str, requests: list[JudgeRequest], tokens: int, attempt: int) -> None:
        from emkit.store import now

        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("INSERT INTO judge_batches VALUES (?, NULL, ?, 'uploaded', ?, ?, ?, ?, ?, 0)",
                              (file_id, identity, len(requests), tokens, attempt, now(), now()))
            self.conn.executemany("INSERT OR IGNORE INTO judge_batch_requests VALUES (?, ?, ?, ?)",
                                  [(identity, file_id, r.key, r.metric) for r in requests])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def set_batch(self, identity: str, file_id: str, batch_id: str | None, status: str) -> None:
        from emkit.store import now

        self.conn.execute("UPDATE judge_batches SET batch_id = ?, status = ?, updated_at = ? "
                          "WHERE judge_identity = ? AND file_id = ?", (batch_id, status, now(), identity, file_id))

    def collected(self, identity: str, file_id: str, status: str) -> None:
        from emkit.store import now

        self.conn.execute("UPDATE judge_batches SET collected = 1, status = ?, updated_at = ? "
                          "WHERE judge_identity = ? AND file_id = ?", (status, now(), identity, file_id))

    def close(self) -> None:
        self.conn.close()


class BatchAPI:
    """What the runner needs of a provider; emkit.judges.litellm_judge implements it with litellm."""

    async def upload(self, name: str, data: bytes) -> str: ...
    async def create(self, file_id: str, metadata: dict) -> dict: ...
    async def retrieve(self, batch_id: str) -> dict: ...
    async def content(self, file_id: str) -> bytes: ...
    async def find(self, file_id: str) -> dict | None: ...  # a batch made from this file, if any


@dataclass
class BatchLimits:
    max_requests: int = 50_000
    max_bytes: int = 190 * 1000 * 1000
    enqueued_tokens: int = 2_000_000  # 0: no limit
    poll_s: float = 60.0
    resend: str = "batch"  # batch | live
    max_rounds: int = 5  # resend rounds before what is left becomes errors


@dataclass
class _Batch:
    file_id: str
    requests: dict[str, str]  # key -> metric
    tokens: int
    attempt: int
    batch_id: str | None = None
    status: str = "uploaded"
    counts: tuple = ()
    lines: bytes = b""  # kept until the batch is submitted (a token-limit failure submits the file again)


@dataclass
class BatchRun:
    identity: str
    judge_name: str
    api: BatchAPI
    body: Callable[[JudgeRequest], dict]  # the chat completion request, as a live call sends it
    parse: Callable[[dict], JudgeResult]  # a 200 reply's body -> judgment (priced at the batch rate)
    classify: Callable[[int, dict], Failure]  # a refused request's status and body -> what to do
    tokens: Callable[[JudgeRequest], int]  # what a request counts against the enqueued-token limit
    limits: BatchLimits
    ledger: BatchLedger
    live: Callable[[list[JudgeRequest]], Awaitable[None]] | None = None  # resend="live"
    scoring: str = "logprobs"
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    batches: list[_Batch] = field(default_factory=list)
    ledger_has_files: bool = False  # an upload has worked: a later failure is a passing fault

    async def run(self, requests: list[JudgeRequest], on_result, bar) -> None:
        mine = {r.key: r for r in requests}  # what this command asked for, with its prompts
        by_key = dict(mine)  # of those, what no batch in flight holds yet
        waiting: list[tuple[list[JudgeRequest], int]] = []  # chunks not yet uploaded, with their attempt
        for entry in self.ledger.in_flight(self.identity, list(by_key)):
            batch = _Batch(entry["file_id"], entry["keys"], entry["tokens"], entry["attempt"], entry["batch_id"],
                           entry["status"])
            self.batches.append(batch)
            for key in batch.requests:
                by_key.pop(key, None)
            log.info("judge %s: batch %s (%s requests) is already at the provider; polling it, not sending it again",
                     self.judge_name, batch.batch_id or batch.file_id, f"{len(batch.requests):,}")
        self.ledger_has_files = bool(self.batches)
        if by_key:
            waiting.extend((chunk, 1) for chunk in self._chunks(list(by_key.values())))
        delivered: set[str] = set()
        self._mine = set(mine)
        failures = 0
        last_report = 0.0
        while waiting or any(b.status not in FINAL or b.batch_id is None for b in self.batches):
            waiting = await self._submit(waiting)
            for batch in [b for b in self.batches if b.batch_id is not None and b.status not in FINAL]:
                try:
                    info = await self.api.retrieve(batch.batch_id)
                    failures = 0
                except Exception as exc:  # a day-long wait outlives a network blip; the ledger keeps the ids
                    failures += 1
                    if failures > self.limits.max_rounds * 4:
                        raise
                    log.warning("judge %s: could not ask about batch %s (%s); asking again at the next look",
                                self.judge_name, batch.batch_id, _first_line(exc))
                    continue
                batch.status = info.get("status") or batch.status
                counts = info.get("request_counts") or {}
                counts = (counts.get("completed", 0), counts.get("failed", 0), counts.get("total", 0))
                if counts != batch.counts or batch.status in FINAL:
                    batch.counts = counts
                    log.info("judge %s: batch %s %s: %s of %s done, %s failed (the provider's counts)",
                             self.judge_name, batch.batch_id, batch.status, f"{counts[0]:,}", f"{counts[2]:,}",
                             f"{counts[1]:,}")
                if batch.status in FINAL:
                    try:
                        again, full = await self._collect(batch, info, mine, on_result, bar, delivered)
                    except Exception as exc:  # the results stay at the provider: download them at the next look
                        failures += 1
                        if failures > self.limits.max_rounds * 4:
                            raise EmkitError(
                                f"Downloading the results of batch {batch.batch_id} ({self.judge_name}) failed "
                                f"{failures} times ({_first_line(exc)}); the batch is recorded as done at the "
                                f"provider and not yet collected, so running the same command again downloads it "
                                f"and sends nothing twice.") from None
                        log.warning("judge %s: could not download the results of batch %s (%s); trying again at "
                                    "the next look", self.judge_name, batch.batch_id, _first_line(exc))
                        batch.status = "downloading"  # not final: asked about and collected again
                        continue
                    self.ledger.collected(self.identity, batch.file_id, batch.status)
                    if full:  # refused for the enqueued-token limit: the same requests wait for room
                        waiting.extend(self._after_token_refusal(batch, again, on_result, bar, delivered))
                    elif again:
                        if batch.attempt > self.limits.max_rounds:  # sent in this many batches already
                            for request in again:
                                self._deliver(request, JudgeResult(score=None, status="error", scoring=self.scoring,
                                              error="still not done after every batch resend"), on_result, bar,
                                              delivered)
                        elif self.limits.resend == "live" and self.live is not None:
                            log.info("judge %s: sending the %s requests batch %s left undone as live calls",
                                     self.judge_name, f"{len(again):,}", batch.batch_id)
                            await self.live(again)
                            delivered.update(r.key for r in again)
                        else:
                            log.info("judge %s: sending the %s requests batch %s left undone in a new batch",
                                     self.judge_name, f"{len(again):,}", batch.batch_id)
                            waiting.extend((chunk, batch.attempt + 1) for chunk in self._chunks(again))
            self.batches = [b for b in self.batches if not (b.status in FINAL and b.batch_id is not None)]
            if waiting or self.batches:
                now = time.monotonic()
                if now - last_report > max(60.0, self.limits.poll_s):
                    last_report = now
                    log.info("judge %s: %d batches in flight, %d waiting to be sent; next look in %gs",
                             self.judge_name, len(self.batches), len(waiting), self.limits.poll_s)
                await self.sleep(self.limits.poll_s)

    # -- sending -----------------------------------------------------------------------------
    def _line(self, request: JudgeRequest) -> bytes:
        return (json.dumps({"custom_id": request.key, "method": "POST", "url": ENDPOINT,
                            "body": self.body(request)}, separators=(",", ":")) + "\n").encode()

    def _chunks(self, requests: list[JudgeRequest]) -> list[list[JudgeRequest]]:
        """Cut at the requests, bytes and tokens one batch may hold."""
        chunks, current, size, tokens = [], [], 0, 0
        token_cap = self.limits.enqueued_tokens or float("inf")
        for request in requests:
            line, cost = len(self._line(request)), self.tokens(request)
            if current and (len(current) >= self.limits.max_requests or size + line > self.limits.max_bytes
                            or tokens + cost > token_cap):
                chunks.append(current)
                current, size, tokens = [], 0, 0
            current.append(request)
            size, tokens = size + line, tokens + cost
        if current:
            chunks.append(current)
        return chunks

    def _enqueued(self) -> int:
        return sum(b.tokens for b in self.batches if b.status not in FINAL)

    async def _submit(self, waiting):
        """Upload and submit what the enqueued-token limit allows now; the rest waits for a later look."""
        for batch in self.batches:  # uploaded, but no batch recorded: made from the file before a kill?
            if batch.batch_id is None and batch.status != "held":
                await self._start(batch)
        left = []
        for chunk, attempt in waiting:
            tokens = sum(self.tokens(r) for r in chunk)
            cap = self.limits.enqueued_tokens
            if cap and self._enqueued() and self._enqueued() + tokens > cap:
                left.append((chunk, attempt))
                continue
            data = b"".join(self._line(r) for r in chunk)
            file_id = await self._upload(data)
            self.ledger_has_files = True
            self.ledger.add_file(file_id, self.identity, chunk, tokens, attempt)
            batch = _Batch(file_id, {r.key: r.metric for r in chunk}, tokens, attempt)
            self.batches.append(batch)
            await self._start(batch, adopt=False)
        return left

    async def _upload(self, data: bytes) -> str:
        """The file's id; a failing upload is tried three times, then ends the command in one sentence."""
        from emkit.secrets import redact

        name = f"emkit-{self.identity.split('@')[0].split(':')[-1]}.jsonl"
        for attempt in range(3):
            try:
                return await self.api.upload(name, data)
            except Exception as exc:
                error = exc
                if getattr(exc, "status_code", None) in (400, 401, 403, 404):
                    break  # refused, not a passing fault
                await self.sleep(2.0 ** attempt)
        first = redact(str(error).splitlines()[0] if str(error) else "")[:300]
        if not self.ledger_has_files:
            raise EmkitError(f"{self.judge_name} takes no batch files here ({type(error).__name__}: {first}); judge "
                             f"live with judging.mode = \"live\" (--judge-mode live).") from None
        raise EmkitError(f"Uploading a batch file for {self.judge_name} failed three times ({type(error).__name__}: "
                         f"{first}); the batches already sent are recorded, so running the same command again "
                         f"polls them and sends only the rest.") from None

    async def _start(self, batch: _Batch, adopt: bool = True) -> None:
        found = await self.api.find(batch.file_id) if adopt else None
        if found is not None and found.get("status") not in ("failed",):
            info = found
            log.info("judge %s: found batch %s made from %s before the last stop", self.judge_name, info["id"],
                     batch.file_id)
        else:
            info = await self.api.create(batch.file_id, {"emkit_judge": self.identity[:500]})
            log.info("judge %s: submitted batch %s: %s requests, ~%s tokens", self.judge_name, info["id"],
                     f"{len(batch.requests):,}", f"{batch.tokens:,}")
        # "submitted" rather than the status it came with: even a batch found already finished is
        # asked about at the next look, and collected from there
        batch.batch_id, batch.status = info["id"], "submitted"
        self.ledger.set_batch(self.identity, batch.file_id, batch.batch_id, batch.status)

    def _after_token_refusal(self, batch: _Batch, again, on_result, bar, delivered):
        """With other batches in flight, the refused one waits for room. Alone, it can never fit: the
        provider's limit is below what emkit was told, so the limit is halved and the requests cut again."""
        if any(b is not batch and b.status not in FINAL for b in self.batches):
            return [(again, batch.attempt)]
        if len(again) == 1:
            self._deliver(again[0], JudgeResult(score=None, status="error", scoring=self.scoring,
                                                error="the provider's enqueued-token limit is below one request"),
                          on_result, bar, delivered)
            return []
        self.limits.enqueued_tokens = max(1, min(self.limits.enqueued_tokens or batch.tokens, batch.tokens) // 2)
        log.warning("judge %s: the provider refused batch %s (~%s tokens) alone for its enqueued-token limit; "
                    "cutting batches at %s tokens (set judging.batch_enqueued_tokens to your limit)",
                    self.judge_name, batch.batch_id, f"{batch.tokens:,}", f"{self.limits.enqueued_tokens:,}")
        return [(chunk, batch.attempt) for chunk in self._chunks(again)]

    # -- collecting --------------------------------------------------------------------------
    def _deliver(self, request: JudgeRequest, result: JudgeResult, on_result, bar, delivered: set) -> None:
        if request.key in delivered:
            return
        delivered.add(request.key)
        on_result(request, result)
        if request.key in self._mine:
            bar.update()

    async def _collect(self, batch: _Batch, info: dict, mine, on_result, bar,
                       delivered) -> tuple[list[JudgeRequest], bool]:
        """Turn a finished batch into judgments; return the requests to send again, and whether the
        provider refused the whole batch for its enqueued-token limit (then they go as they were).
        Only this command's own requests are sent again: one of a batch shared with another run is
        left to that run, which finds the batch collected and sends it itself."""
        def request_for(key: str) -> JudgeRequest:
            # a request of this batch that this command did not ask for (another run's): cached all the same
            return mine.get(key) or JudgeRequest(key=key, metric=batch.requests[key], prompt="")

        errors = ((info.get("errors") or {}).get("data")) or []
        if info.get("status") == "failed":
            codes = {e.get("code") for e in errors}
            if codes & TOKEN_LIMIT_CODES:
                log.info("judge %s: batch %s waits: the provider's enqueued-token limit is full", self.judge_name,
                         batch.batch_id)
                return [mine[k] for k in batch.requests if k in mine], True
            message = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3]) or "the batch failed"
            for key in batch.requests:
                self._deliver(request_for(key), JudgeResult(score=None, status="error", scoring=self.scoring,
                                                            error=f"batch {batch.batch_id} failed: {message}"[:300]),
                              on_result, bar, delivered)
            return [], False
        seen: set[str] = set()
        again: list[JudgeRequest] = []
        for file_id in (info.get("output_file_id"), info.get("error_file_id")):
            if not file_id:
                continue
            for raw in (await self.api.content(file_id)).splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                key = line.get("custom_id")
                if key not in batch.requests or key in seen:
                    continue
                seen.add(key)
                response = line.get("response") or {}
                status = response.get("status_code")
                body = response.get("body") or {}
                if status == 200:
                    self._deliver(request_for(key), self.parse(body), on_result, bar, delivered)
                    continue
                if status is None:  # never run: the batch expired or was cancelled first
                    again.extend([mine[key]] if key in mine else [])
                    continue
                failure = self.classify(status, body)
                if failure.retry:
                    again.extend([mine[key]] if key in mine else [])
                else:
                    self._deliver(request_for(key), JudgeResult(score=None, status="error", scoring=self.scoring,
                                                                error=failure.message), on_result, bar, delivered)
        again.extend(mine[k] for k in batch.requests if k not in seen and k in mine)
        return again, False


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
