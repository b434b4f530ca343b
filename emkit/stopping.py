"""One stop signal, read by work that runs on threads of its own.

Ctrl-C and SIGTERM raise KeyboardInterrupt on the main thread only; judging beside the GPU work
runs on another thread, inside an event loop, and would go on making (paid) calls until its
pass ended. So the CLI's signal handler also sets a process-wide flag here, and whoever owns a
piece of background work can stop it with an event of its own (``stop_on``). Work that can be
cut short reads ``stopped()`` at its safe points: the judge calls' event loop cancels its calls
(a reply that came back is stored whole, one that had not is dropped and asked again next run),
a local judge ends between batches.
"""

from __future__ import annotations

import contextlib
import threading

_process = threading.Event()
_thread = threading.local()


class Stopped(Exception):
    """The work was stopped before its end (Ctrl-C, SIGTERM, or its owner); what finished is stored."""


def request_stop() -> None:
    """Every piece of work that reads ``stopped()`` ends at its next safe point (the CLI's signal handler)."""
    _process.set()


def stopped() -> bool:
    return checker()()


def checker():
    """``stopped`` for this thread's work, to be read on another thread (the judge calls' own, in Jupyter)."""
    event = getattr(_thread, "event", None)
    return lambda: _process.is_set() or (event is not None and event.is_set())


def raise_if_stopped() -> None:
    if stopped():
        raise Stopped("stopped")


@contextlib.contextmanager
def stop_on(event: threading.Event):
    """Work on this thread also stops when ``event`` is set (background judging's own stop)."""
    previous = getattr(_thread, "event", None)
    _thread.event = event
    try:
        yield
    finally:
        _thread.event = previous


async def watch(task, is_stopped=stopped, poll_s: float = 0.1):
    """Await an asyncio task, cancelling it when ``is_stopped()``; raises Stopped then."""
    import asyncio

    while not task.done():
        if is_stopped():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Stopped("stopped")
        await asyncio.wait({task}, timeout=poll_s)
    return task.result()
