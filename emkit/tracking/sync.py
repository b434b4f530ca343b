"""Sending a run to its trackers: what they do not have yet, remembered in the store.

``Tracking.sync`` is called as the run starts (each training run's parameters), as units of GPU
work finish (new training steps) and at the end (every checkpoint's EM and the rest, the judge
cost, the report and exports). Each tracked run's id and what it was sent (the last step, a digest
of each checkpoint's metrics, of each artifact) are kept in the store's ``tracked_runs``, per
tracker and target: a resumed or repeated `emkit run` goes on in the same tracked run and sends
only what changed (a re-judged checkpoint's new numbers, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from emkit.errors import EmkitError
from emkit.interfaces import TrackedRun
from emkit.tracking.records import (checkpoint_metrics, run_costs, run_params, run_tags, step_metrics,
                                    tokens_per_second)

log = logging.getLogger("emkit")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_digest(path: Path) -> str:
    """What a file or folder holds, by names, sizes and modification times (cheap; no content read)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return _digest([(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def refuse_unusable_trackers(config, registry) -> None:
    """Before any work: an unknown tracker or one whose library is missing is a sentence."""
    for name in config.tracking.backends:
        tracker = registry.get("trackers", name)
        reason = tracker.unavailable_reason() if hasattr(tracker, "unavailable_reason") else None
        if reason:
            raise EmkitError(f"Tracker '{name}' ([tracking] backends, --track) cannot be used: {reason}")


class Tracking:
    def __init__(self, run_dir, plan, registry):
        self.run_dir, self.plan, self.store = run_dir, plan, run_dir.store
        self.settings = plan.config.tracking
        self.experiment = self.settings.experiment or plan.config.name
        self.sessions: dict[str, object] = {}
        for name in self.settings.backends:
            tracker = registry.get("trackers", name)
            with self._guard(name, opening=True):
                self.sessions[name] = tracker.open(dict(self.settings.options.get(name, {})), run_dir.path)
        for name, session in self.sessions.items():
            log.info("tracking: logging each training run to %s (%s)", name, session.target)

    @contextlib.contextmanager
    def _guard(self, name: str, opening: bool = False):
        """A tracker that fails is a warning, said once; the run goes on without it."""
        try:
            yield
        except Exception as exc:  # a server down, a quota, a bug in a tracker plugin: never a lost run
            session = self.sessions.pop(name, None)
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()
            what = "could not be opened" if opening else "failed"
            log.warning("tracker %s %s (%s: %s); the run goes on without it, and the next `emkit run` into %s "
                        "sends it what it missed", name, what, type(exc).__name__, str(exc).splitlines()[0][:300]
                        if str(exc) else "", self.run_dir.path)

    def sync(self, tables=None, final: bool = False, status: str = "running") -> None:
        """Send each training run what its tracked run lacks. ``tables`` (the run's, emkit.analysis):
        the checkpoints' EM and the rest too; ``final``: the cost, report and exports as well."""
        for name in list(self.sessions):
            with self._guard(name):
                for run in self.plan.runs:
                    self._sync_run(name, self.sessions[name], run, tables, final, status)

    def _sync_run(self, name, session, run, tables, final, status) -> None:
        state = self.store.tracked_run(name, session.target, run.key)
        tracked_id = session.start(TrackedRun(
            key=run.key, experiment=self.experiment, params=run_params(self.plan, run),
            tags=run_tags(self.plan, run, self.run_dir.path.resolve()),
            tracked_id=state["tracked_id"] if state else None))
        logged = state["logged"] if state and state["tracked_id"] == tracked_id else {}

        def keep():
            self.store.set_tracked_run(name, session.target, run.key, tracked_id, logged)

        keep()  # the id first: a run stopped from here on goes on in this tracked run
        try:
            self._send_steps(session, tracked_id, run, logged)
            keep()
            if tables is not None:
                self._send_checkpoints(session, tracked_id, run, tables, logged)
                keep()
            if final:
                self._send_end(session, tracked_id, run, logged)
                keep()
        finally:
            session.finish(tracked_id, status)

    def _send_steps(self, session, tracked_id, run, logged) -> None:
        rows = self.store.train_steps(run.key, after=logged.get("step", 0))
        if not rows:
            return
        rates = tokens_per_second(rows, logged.get("seconds"))
        points = []
        for row in rows:
            metrics = step_metrics(row)
            if row["step"] in rates:
                metrics["train/tokens_per_s"] = rates[row["step"]]
            points.append((row["step"], metrics))
        session.log_metrics(tracked_id, points)
        logged["step"], logged["seconds"] = rows[-1]["step"], rows[-1]["seconds"]

    def _send_checkpoints(self, session, tracked_id, run, tables, logged) -> None:
        per_step = checkpoint_metrics(tables.steps, run)
        losses = self.store.conn.execute("SELECT step, train_loss FROM checkpoints WHERE run_key = ?", (run.key,))
        for row in losses:
            if row["train_loss"] is not None:
                per_step.setdefault(row["step"], {})["checkpoint/train_loss"] = float(row["train_loss"])
        sent = logged.setdefault("checkpoints", {})
        points = [(step, metrics) for step, metrics in sorted(per_step.items())
                  if metrics and sent.get(str(step)) != _digest(metrics)]
        if points:
            session.log_metrics(tracked_id, points)
            sent.update({str(step): _digest(metrics) for step, metrics in points})

    def _send_end(self, session, tracked_id, run, logged) -> None:
        last = max(run.schedule.steps, default=0)
        costs = run_costs(self.store, run.key)
        if costs and logged.get("costs") != _digest(costs):
            session.log_metrics(tracked_id, [(last, costs)])
            logged["costs"] = _digest(costs)
        artifacts = {"report": self.run_dir.report, "exports": self.run_dir.exports,
                     "figures": self.run_dir.figures}
        if self.settings.adapters:
            for step, path in sorted(self.store.checkpoints(run.key).items()):
                artifacts[f"adapters/step-{step:06d}"] = Path(path)
        sent = logged.setdefault("artifacts", {})
        for folder, path in artifacts.items():
            if not path.exists():
                continue
            digest = _files_digest(path)
            if sent.get(folder) != digest:
                session.log_artifact(tracked_id, path, folder)
                sent[folder] = digest

    def close(self) -> None:
        for name in list(self.sessions):
            with self._guard(name):
                self.sessions.pop(name).close()
