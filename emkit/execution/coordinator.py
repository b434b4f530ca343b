"""The GPU work of a run: its units handed to an executor, their results merged into the store.

The store is the one source of truth. A unit already complete there is skipped; a unit whose
job an earlier emkit process submitted is waited for, not submitted again (its job id is in
the store's units table); a job that vanished without a result (cancelled, its node lost) is
submitted again up to execution.max_attempts times and resumes from its unit's saved state.
A unit that failed is reported with the tail of its log, after the rest are done.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from emkit.errors import EmkitError
from emkit.execution.handles import DONE, FAILED, GONE, QUEUED, RUNNING
from emkit.execution.shards import export_rows, merge, read_records, shard_path
from emkit.execution.units import Unit, baseline_ready, do_unit, plan_units, unit_done, unit_load

log = logging.getLogger("emkit")


@dataclass
class GpuWork:
    checkpoints: int = 0
    answers: int = 0
    intervals: list = field(default_factory=list)  # (start, end) of each unit's work, wall clock
    failed: list = field(default_factory=list)  # (unit key, job id, detail)
    units: int = 0


def run_gpu_work(run_dir, plan, registry, progress, executor, judging, tracking=None) -> GpuWork:
    """``judging`` is told of new answers, ``tracking`` (emkit.tracking) of new checkpoints."""
    units = plan_units(plan)
    work = GpuWork(units=len(units))
    if executor.in_process:
        _run_here(run_dir, plan, registry, progress, units, work, judging, executor.name, tracking)
    else:
        _Dispatcher(run_dir, plan, executor, progress, units, work, judging, tracking).run()
    return work


def _run_here(run_dir, plan, registry, progress, units: list[Unit], work: GpuWork, judging, name: str,
              tracking=None) -> None:
    store = run_dir.store
    for unit in units:
        if unit_done(store, plan, unit):
            continue
        attempts = (store.units().get(unit.key) or {}).get("attempts") or 0
        store.set_unit(unit.key, unit.kind, name, RUNNING, job_id=f"pid{os.getpid()}", attempts=attempts + 1)
        started = time.time()
        checkpoints, answers = do_unit(run_dir, plan, unit, registry, progress)
        work.intervals.append((started, time.time()))
        work.checkpoints += checkpoints
        work.answers += answers
        store.set_unit(unit.key, unit.kind, name, DONE, gpu_seconds=time.time() - started)
        judging.notify()
        if tracking is not None and checkpoints:
            tracking.sync()  # the unit's training steps


class _Dispatcher:
    def __init__(self, run_dir, plan, executor, progress, units, work: GpuWork, judging, tracking=None):
        self.run_dir, self.store, self.plan = run_dir, run_dir.store, plan
        self.executor, self.progress, self.work, self.judging = executor, progress, work, judging
        self.tracking = tracking
        self.units = {u.key: u for u in units}
        self.offsets: dict[str, int] = {}
        self.active: dict[str, object] = {}  # unit key -> JobHandle
        self.seen_state: dict[str, str] = {}
        self.settings = plan.config.execution
        self.config_data = plan.config.to_toml_dict()

    # -- results coming home ------------------------------------------------------------
    def merge_shard(self, key: str) -> None:
        records, self.offsets[key] = read_records(shard_path(self.run_dir.path, key), self.offsets.get(key, 0))
        if not records:
            return
        new = merge(self.store, records)
        self.work.checkpoints += new["checkpoints"]
        self.work.answers += new["answers"]
        for record in records:
            if record.get("event") == "unit_time":
                self.work.intervals.append((record["start"], record["end"]))
        if new["answers"]:
            self.judging.notify()
        if new["checkpoints"] and self.tracking is not None:
            self.tracking.sync()  # the new checkpoints' training steps

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        for key in self.units:  # whatever jobs made while no emkit process was watching
            self.merge_shard(key)
        rows = self.store.units()
        waiting = []
        for key, unit in self.units.items():
            if unit_done(self.store, self.plan, unit):
                if (rows.get(key) or {}).get("state") != DONE:
                    self.store.set_unit(key, unit.kind, self.executor.name, DONE)
                continue
            row = rows.get(key)
            if row and row["state"] in (QUEUED, RUNNING) and row["executor"] == self.executor.name:
                handle = self.executor.reattach(row)
                if handle is not None:
                    log.info("unit %s: waiting for job %s, submitted by an earlier emkit process", key, handle.job_id)
                    self.active[key] = handle
                    continue
            waiting.append(unit)
        total = len(waiting) + len(self.active)
        if not total:
            return
        log.info("GPU work: %d units on the %s executor (%s)", total, self.executor.name,
                 "; ".join(self.executor.describe()))
        try:
            with self.progress(total=total, unit="units", desc=f"units on {self.executor.name}") as bar:
                while waiting or self.active:
                    self.submit_ready(waiting)
                    time.sleep(self.settings.poll_s if self.active else 0)
                    for key in list(self.active):
                        self.merge_shard(key)
                    finished = self.check_jobs(waiting)
                    bar.set_postfix(self.queue_summary())
                    bar.update(finished)
        except BaseException:
            self.executor.stop(list(self.active.values()))
            if self.active:
                log.warning("%s", self.executor.stop_message(len(self.active)))
            raise

    def queue_summary(self) -> str:
        """For the progress line: how many jobs run, how many wait, and why they wait (the scheduler's reason)."""
        from collections import Counter

        states = [self.seen_state.get(key, (QUEUED, "")) for key in self.active]
        running = sum(state == RUNNING for state, _ in states)
        reasons = Counter(detail for state, detail in states if state == QUEUED and detail)
        text = f"{running} running, {len(states) - running} queued"
        if reasons:
            text += " (" + "; ".join(f"{n} {reason}" for reason, n in reasons.most_common()) + ")"
        return text

    def ready(self, waiting: list[Unit]) -> list[Unit]:
        """Training units, and baselines whose base is known or whose model has no training left to run
        (so some unit is always ready while any waits and none is active)."""
        training = {u.model_label for u in waiting if u.kind == "train"} | {
            self.units[k].model_label for k in self.active if self.units[k].kind == "train"}
        return [u for u in waiting if u.kind == "train" or baseline_ready(self.store, self.plan, u)
                or u.model_label not in training]

    def submit_ready(self, waiting: list[Unit]) -> None:
        # an executor that fits units by what they need (several on a GPU) says which may start now;
        # a later, smaller unit may fit where an earlier one does not
        room_for = getattr(self.executor, "room_for", None)
        for unit in self.ready(waiting):
            load = unit_load(self.plan, unit)
            if room_for is None and len(self.active) >= self.executor.slots:
                return
            if room_for is not None and not room_for(load):
                continue
            attempts = (self.store.units().get(unit.key) or {}).get("attempts") or 0
            from emkit.execution.job import UnitSpec

            spec = UnitSpec(str(self.run_dir.path.resolve()), self.config_data, unit.key,
                            export_rows(self.store, unit))
            extra = {"load": load} if room_for is not None else {}
            handle = self.executor.submit(unit.key, spec.to_json(), attempts + 1, **extra)
            self.store.set_unit(unit.key, unit.kind, self.executor.name, QUEUED, job_id=handle.job_id,
                                attempts=attempts + 1, log_path=handle.log_path, detail=None)
            log.info("unit %s: submitted as job %s (attempt %d)", unit.key, handle.job_id, attempts + 1)
            self.active[unit.key] = handle
            waiting.remove(unit)

    def check_jobs(self, waiting: list[Unit]) -> int:
        states = self.executor.poll(list(self.active.values()))
        # waiting would be forever: each such unit waits for a config that can run, and the run ends
        never = [(key, states[handle.job_id]) for key, handle in self.active.items()
                 if states[handle.job_id].cannot_start]
        for key, state in never:
            del self.active[key]
            self.store.set_unit(key, self.units[key].kind, self.executor.name, "waiting", detail=state.detail)
        if never:
            more = f" The same holds for {len(never) - 1} more: {', '.join(k for k, _ in never[1:])}." \
                if len(never) > 1 else ""
            raise EmkitError(never[0][1].detail + more)
        finished = 0
        for key, handle in list(self.active.items()):
            unit, state = self.units[key], states[handle.job_id]
            if state.state in (QUEUED, RUNNING):
                if self.seen_state.get(key) != (state.state, state.detail):
                    if self.seen_state.get(key, ("",))[0] != state.state:
                        self.store.set_unit(key, unit.kind, self.executor.name, state.state)
                    self.seen_state[key] = (state.state, state.detail)
                    log.info("unit %s: %s (job %s%s)", key, state.state, handle.job_id,
                             f": {state.detail}" if state.detail else "")
                continue
            del self.active[key]
            self.seen_state.pop(key, None)
            self.merge_shard(key)
            if state.state == DONE and unit_done(self.store, self.plan, unit):
                self.store.set_unit(key, unit.kind, self.executor.name, DONE, gpu_seconds=self._unit_seconds(key))
                log.info("unit %s: done (job %s)", key, handle.job_id)
                finished += 1
                continue
            detail = state.detail or "the job ended, but the unit's checkpoints or answers are not all in its shard"
            attempts = (self.store.units().get(key) or {}).get("attempts") or 1
            if state.state == GONE and attempts < self.settings.max_attempts:
                log.warning("unit %s: job %s ended without a result (%s); submitting it again, to resume from its "
                            "saved state", key, handle.job_id, detail.splitlines()[0] if detail else "")
                self.store.set_unit(key, unit.kind, self.executor.name, "waiting", detail=detail)
                waiting.insert(0, unit)
                continue
            self.store.set_unit(key, unit.kind, self.executor.name, FAILED, detail=detail)
            self.work.failed.append((key, handle.job_id, detail))
            log.error("unit %s: job %s failed: %s", key, handle.job_id, detail)
            finished += 1
        return finished

    def _unit_seconds(self, key: str) -> float:
        records, _ = read_records(shard_path(self.run_dir.path, key))
        return sum(r["end"] - r["start"] for r in records if r.get("event") == "unit_time")
