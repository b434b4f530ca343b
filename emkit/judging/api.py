"""Concurrent calls to an API judge: a bounded pool, emkit's own timeout, retries.

The papers' code fires every call at once with no limit, retry or timeout; the course's
code calls one at a time with a sleep. Here ``concurrency`` workers pull requests from one
queue; each call is cut off at ``timeout_s`` by asyncio (client libraries' own timeouts do
not always fire), and a failed call is retried with exponential backoff and jitter,
waiting at least as long as the server's Retry-After. A call that still fails becomes a
judgment with status `error`; it is not cached and the next run tries it again.

The first call goes alone: if it shows the judge cannot be reached or refuses the
credentials, the whole judge is unavailable (the caller may fall back to another judge)
rather than every answer failing one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import random
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Awaitable, Callable

from emkit import stopping
from emkit.errors import EmkitError, JudgeErrorsExceeded
from emkit.interfaces import JudgeRequest, JudgeResult

MAX_RETRY_AFTER_S = 300.0
FIRST_CALLS_ALL_FAILED = 20  # this many failures before any success: the service is down


class JudgeUnavailable(EmkitError):
    """The judge cannot be used here (unreachable, no or wrong credentials, unknown model)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message  # the cause alone, for a message that already names the judge


@dataclass
class Failure:
    retry: bool  # worth trying again
    unavailable: bool  # says the judge as a whole cannot be used (auth, unknown model, no connection)
    message: str
    retry_after: float | None = None


def parse_retry_after(value) -> float | None:
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        when = parsedate_to_datetime(text)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


@dataclass
class RetryPolicy:
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)) * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay


Call = Callable[[JudgeRequest], Awaitable[JudgeResult]]
Classify = Callable[[BaseException], Failure]
Pace = Callable[[JudgeRequest], Awaitable[object]]  # waits until the rate limits allow the call (pacing.Pacer)

# The pacing ticket of the call in progress: the call reads it to tell the pacer what the reply's
# headers say (a context variable, because asyncio.wait_for runs the call as a task of its own).
current_ticket: contextvars.ContextVar = contextvars.ContextVar("emkit_pacing_ticket", default=None)


async def call_with_retries(call: Call, request: JudgeRequest, classify: Classify, policy: RetryPolicy,
                            scoring: str, unavailable_retries: int | None = None,
                            pace: Pace | None = None) -> tuple[JudgeResult, Failure | None]:
    """One request, retried; ``unavailable_retries`` caps retries of failures that say the
    judge is unusable (the probe gives up on a refused connection after a couple of tries).
    ``pace``: waited for before each attempt, outside the attempt's timeout."""
    failure: Failure | None = None
    for attempt in range(policy.max_retries + 1):
        if pace is not None:
            current_ticket.set(await pace(request))
        try:
            return await asyncio.wait_for(call(request), policy.timeout_s), None
        except asyncio.TimeoutError:
            failure = Failure(retry=True, unavailable=False, message=f"no reply within {policy.timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client library's errors: classified by the backend
            failure = classify(exc)
        if not failure.retry or attempt == policy.max_retries:
            break
        if failure.unavailable and unavailable_retries is not None and attempt >= unavailable_retries:
            break
        await asyncio.sleep(policy.delay(attempt, failure.retry_after))
    return JudgeResult(score=None, status="error", scoring=scoring, error=failure.message), failure


async def _run(requests: list[JudgeRequest], call: Call, classify: Classify, on_result, *, concurrency: int,
               policy: RetryPolicy, scoring: str, judge_name: str, bar, context=None, pace: Pace | None = None) -> None:
    """``context``: an async context manager (an HTTP session) entered inside the event loop."""
    if not requests:
        return
    async with context if context is not None else contextlib.nullcontext():
        await _run_pool(requests, call, classify, on_result, concurrency=concurrency, policy=policy,
                        scoring=scoring, judge_name=judge_name, bar=bar, pace=pace)


async def _run_pool(requests, call, classify, on_result, *, concurrency, policy, scoring, judge_name, bar,
                    pace=None) -> None:
    # the probe: one call on its own decides whether the judge is usable at all (and, paced, brings
    # the provider's limits in its headers before the others go)
    result, failure = await call_with_retries(call, requests[0], classify, policy, scoring, unavailable_retries=2,
                                              pace=pace)
    if failure is not None and failure.unavailable:
        raise JudgeUnavailable(f"{judge_name} cannot be used: {failure.message}", reason=failure.message)
    on_result(requests[0], result)
    bar.update()
    state = {"ok": int(result.status != "error"), "errors": int(result.status == "error"), "last": failure}
    queue = iter(requests[1:])

    async def worker():
        for request in queue:  # one iterator shared by all workers: each request taken once
            result, failure = await call_with_retries(call, request, classify, policy, scoring, pace=pace)
            on_result(request, result)
            bar.update()
            if result.status == "error":
                state["errors"] += 1
                state["last"] = failure
                if state["ok"] == 0 and state["errors"] >= FIRST_CALLS_ALL_FAILED:
                    raise JudgeErrorsExceeded(
                        f"The first {state['errors']} calls to {judge_name} all failed (last: "
                        f"{failure.message}); stopping. Finished judgments are stored; fix the service and run again."
                    )
            else:
                state["ok"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(requests) - 1))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Relay:
    """Judging beside a running event loop (Jupyter): the calls run on a thread of their own,
    and their results come back to the caller's thread through a queue, because what receives
    them (the run's SQLite store, the judge cache) may only be used on the thread that opened it."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.stopped = threading.Event()

    def on_result(self, request, result):
        if self.stopped.is_set():  # the caller failed to store a result: make no more paid calls
            raise RuntimeError("judging stopped: a result could not be stored")
        self.events.put(("result", request, result))

    def update(self, n: int = 1):  # the progress bar's method
        self.events.put(("bar", n))

    def run(self, make_coro, on_result, bar) -> None:
        box: dict = {}

        def target():
            try:
                asyncio.run(make_coro(self.on_result, self))
            except BaseException as exc:
                box["error"] = exc
            finally:
                self.events.put(("done",))

        thread = threading.Thread(target=target, name="emkit-judge-calls", daemon=True)
        thread.start()
        failure = None
        while True:
            event = self.events.get()
            if event[0] == "done":
                break
            if failure is not None:
                continue
            try:
                if event[0] == "result":
                    on_result(event[1], event[2])
                else:
                    bar.update(event[1])
            except BaseException as exc:
                failure = exc
                self.stopped.set()
        thread.join()
        if failure is not None:
            raise failure
        if "error" in box:
            raise box["error"]


def run_calls(requests: list[JudgeRequest], call: Call, classify: Classify, on_result, *, concurrency: int,
              policy: RetryPolicy, scoring: str, judge_name: str, bar, context=None, pace: Pace | None = None) -> None:
    """Make the calls; ``on_result`` and ``bar`` are always called on the caller's thread."""
    def make_coro(receive, progress_bar):
        return _run(requests, call, classify, receive, concurrency=concurrency, policy=policy, scoring=scoring,
                    judge_name=judge_name, bar=progress_bar, context=context, pace=pace)

    run_async(make_coro, on_result, bar)


run_calls_async = _run  # the same calls from inside an event loop (a batch's requests resent live)


def run_async(make_coro, on_result, bar) -> None:
    """Run ``make_coro(on_result, bar)`` to its end: on this thread, or, where an event loop already
    runs here (Jupyter), on a thread of its own with the callbacks relayed back to this one.
    A stop (emkit.stopping: Ctrl-C, SIGTERM, background judging's end) cancels the calls in
    flight within a fraction of a second and raises Stopped; results delivered before it are kept."""
    is_stopped = stopping.checker()

    async def until_stopped(receive, progress_bar):
        await stopping.watch(asyncio.ensure_future(make_coro(receive, progress_bar)), is_stopped)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(until_stopped(on_result, bar))
        return
    _Relay().run(until_stopped, on_result, bar)
