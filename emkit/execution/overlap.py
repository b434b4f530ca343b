"""Judging while the GPUs work: a thread that judges answers as soon as they are stored.

It has its own connection to the run's store (SQLite in WAL mode lets it read and write beside
the coordinator's) and makes passes: each judges every stored answer that its judges have not
judged yet, so a checkpoint's answers are judged while the next checkpoint trains. After the
GPU work the judge stage judges what is left, with the same judges (a local judge loads its
model once). If a pass fails, the thread stops and says so; nothing is lost, the judge stage
makes those judgments.

Under "auto", a local judge (a model run here) overlaps only when the GPU work runs on other
machines (slurm): on this machine it would share the GPU with training.
"""

from __future__ import annotations

import logging
import threading
import time

from emkit.stages.judge import JudgePool, judge_options, judge_pass
from emkit.store import STORE_FILE, Store

log = logging.getLogger("emkit")


def overlapping_judges(config) -> list[str]:
    mode = config.execution.overlap_judging
    if mode == "off":
        return []
    judges = config.judging.judges
    if mode == "on" or config.execution.executor == "slurm":
        return list(judges)
    return [j for j in judges if not j.startswith("local:")]


class BackgroundJudging:
    def __init__(self, run_path, plan, registry, progress, specs: list[str], poll_s: float):
        self.run_path, self.plan, self.progress = run_path, plan, progress
        self.specs, self.poll_s = specs, poll_s
        self.pool = JudgePool(judge_options(plan.config.judging, plan.config.trust_remote_code), registry)
        self.tallies: list = []
        self.intervals: list[tuple[float, float]] = []  # (start, end) of each pass that judged something
        self._wake = threading.Event()
        self._stop = threading.Event()
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
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        store = Store(self.run_path / STORE_FILE)
        try:
            while not self._stop.is_set():
                self._wake.wait(self.poll_s)
                self._wake.clear()
                if self._stop.is_set():
                    break
                started = time.time()
                try:
                    # errors are judged again in later passes; the run's error share is the judge stage's
                    tallies = judge_pass(self.plan, store, self.specs, self.pool, self.progress, max_error_share=1.0)
                except Exception as exc:  # the judge stage makes these judgments after the GPU work
                    log.warning("judging beside the GPU work stopped (%s); what is left is judged after it", exc)
                    return
                if tallies:
                    self.tallies += tallies
                    self.intervals.append((started, time.time()))
        finally:
            store.close()
