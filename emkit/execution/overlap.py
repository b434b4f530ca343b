"""Judging while the GPUs work: a thread that judges answers as soon as they are stored.

It has its own connection to the run's store (SQLite in WAL mode lets it read and write beside
the coordinator's) and makes passes: each judges every stored answer that its judges have not
judged yet, so a checkpoint's answers are judged while the next checkpoint trains. After the
GPU work the judge stage judges what is left, with the same judges (a local judge loads its
model once). If a pass fails, the thread stops and says so; nothing is lost, the judge stage
makes those judgments.

A judge that says it runs on this machine's GPU (``uses_gpu``) is kept out while GPU work runs
here (the ``local`` and ``local-gpus`` executors), unless ``overlap_judging = "on"`` asks for it.
Fallbacks never judge here: answers whose judge cannot be reached wait for it, pass after pass,
or for the judge stage after the GPU work, where the fallback chain applies.

Stopping: ``finish`` lets the pass in progress end (its calls are paid for); ``cancel`` (Ctrl-C,
an error in the GPU work) cancels the calls in flight and returns within seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from emkit import stopping
from emkit.interfaces import JudgeNeeds
from emkit.judging.api import JudgeUnavailable
from emkit.stages.judge import JudgePool, judge_options, judge_pass
from emkit.store import STORE_FILE, Store

log = logging.getLogger("emkit")
CANCEL_WAIT_S = 8.0  # a pass told to stop ends its calls within a fraction of a second; this bounds a stuck one


def overlapping_judges(config, pool: JudgePool, gpu_work_here: bool) -> list[str]:
    """The judges that judge beside the GPU work: all, under "on"; none, under "off"; under "auto",
    those that do not use the GPU, or all when the GPU work runs on other machines."""
    mode = config.execution.overlap_judging
    if mode == "off":
        return []
    judges = config.judging.judges
    if mode == "on" or not gpu_work_here:
        return list(judges)
    return [spec for spec in judges if not JudgeNeeds.of(pool.get(spec)).uses_gpu]


class BackgroundJudging:
    def __init__(self, run_path, plan, registry, progress, gpu_work_here: bool, poll_s: float):
        self.run_path, self.plan, self.progress, self.poll_s = run_path, plan, progress, poll_s
        self.pool = JudgePool(judge_options(plan.config.judging, plan.config.trust_remote_code), registry)
        self.specs = overlapping_judges(plan.config, self.pool, gpu_work_here)
        self._waiting_for: set[str] = set()  # judges found unreachable: said once, tried again each pass
        self.tallies: list = []
        self.intervals: list[tuple[float, float]] = []  # (start, end) of each pass that judged something
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_after_pass = False
        self._thread = threading.Thread(target=self._loop, name="emkit-judging", daemon=True)

    def start(self) -> "BackgroundJudging":
        if self.specs:
            log.info("judging %s as answers are stored, while the GPU work goes on", ", ".join(self.specs))
            self._thread.start()
        return self

    def notify(self) -> None:
        """New answers are in the store."""
        self._wake.set()

    def finish(self) -> None:
        """Stop after the pass in progress (its judgments are stored as they come)."""
        self._stop_after_pass = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def cancel(self) -> None:
        """Stop now: the calls in flight are cancelled (a reply that came back is stored whole, the
        rest are asked again by the next run); returns within seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(CANCEL_WAIT_S)
            if self._thread.is_alive():  # a daemon thread: it ends with the process, mid-call at worst
                log.warning("judging beside the GPU work did not stop within %.0f s; leaving it", CANCEL_WAIT_S)

    def _loop(self) -> None:
        store = Store(self.run_path / STORE_FILE)
        try:
            with stopping.stop_on(self._stop):
                while not (self._stop.is_set() or self._stop_after_pass):
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    if self._stop.is_set():
                        break
                    self._pass(store)
        except stopping.Stopped:
            pass  # cancelled: what came back is stored
        except Exception as exc:  # the judge stage makes these judgments after the GPU work
            log.warning("judging beside the GPU work stopped (%s); what is left is judged after it", exc)
        finally:
            store.close()

    def _pass(self, store) -> None:
        started = time.time()
        tallies = []
        for spec in self.specs:
            try:
                # errors are judged again in later passes; the run's error share is the judge stage's
                tallies += judge_pass(self.plan, store, [spec], self.pool, self.progress, max_error_share=1.0,
                                      fallbacks=False)
                self._waiting_for.discard(spec)
            except JudgeUnavailable as exc:
                if spec not in self._waiting_for:
                    self._waiting_for.add(spec)
                    log.warning("judge %s cannot be reached now (%s); its answers wait for it (tried again as "
                                "answers come) or for the judge stage after the GPU work", spec, exc)
        if tallies:
            self.tallies += tallies
            self.intervals.append((started, time.time()))
