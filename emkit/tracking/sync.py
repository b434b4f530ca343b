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
import logging
from pathlib import Path

from emkit.errors import EmkitError
from emkit.interfaces import TrackedRun
from emkit.tracking.records import checkpoint_metrics, run_costs, run_params, run_tags, step_metrics

log = logging.getLogger("emkit")


def _files_digest(path: Path) -> str:
    """What a file or folder holds, by names and contents (a report written again the same is not sent again)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode() + b"\0")
        with file.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _same(value: float) -> str:
    """A value as compared with what was sent: 9 significant digits (adding a seed to a run moves the
    last digits of its old checkpoints' means, which is not news)."""
    return f"{value:.9g}"


def _news(values: dict[str, float], sent: dict[str, str]) -> dict[str, float]:
    """The values not sent yet, or sent with another value."""
    return {name: value for name, value in values.items() if sent.get(name) != _same(value)}


def _shorten(text: str, limit: int = 400) -> str:
    """A long error's start and end: where it happened, and why (the cause comes last)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit // 2]} ... {text[-limit // 2:]}"


def refuse_unusable_trackers(config, registry) -> None:
    """Before any work: an unknown tracker, one whose library is missing, or options it does not take
    (a typo would send the runs somewhere else without a word) is a sentence."""
    settings = config.tracking
    for name in settings.backends:
        tracker = registry.get("trackers", name)
        reason = tracker.unavailable_reason() if hasattr(tracker, "unavailable_reason") else None
        if reason:
            raise EmkitError(f"Tracker '{name}' ([tracking] backends, --track) cannot be used: {reason}")
    for name, options in settings.options.items():
        if name not in settings.backends:
            raise EmkitError(f"[tracking] options.{name}: '{name}' is not among [tracking] backends "
                             f"({', '.join(settings.backends) or 'none'}); fix the name or add it to backends.")
        known = getattr(registry.get("trackers", name), "options", None)
        unknown = sorted(set(options) - set(known)) if known is not None else []
        if unknown:
            raise EmkitError(f"[tracking] options.{name}.{unknown[0]}: tracker '{name}' takes no such option "
                             f"(it takes: {', '.join(known) or 'none'}).")


class Tracking:
    def __init__(self, run_dir, plan, registry):
        self.run_dir, self.plan, self.store = run_dir, plan, run_dir.store
        self.settings = plan.config.tracking
        self.experiment = self.settings.experiment or plan.config.name
        self.sessions: dict[str, object] = {}
        self._digests: dict[Path, str] = {}
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
                        "sends it what it missed", name, what, type(exc).__name__, _shorten(str(exc)),
                        self.run_dir.path)

    def sync(self, tables=None, final: bool = False, status: str = "running") -> None:
        """Send each training run what its tracked run lacks. ``tables`` (the run's, emkit.analysis):
        the checkpoints' EM and the rest too; ``final``: the cost, report and exports as well."""
        self._digests: dict[Path, str] = {}  # each file read once per sync, not once per run and tracker
        for name in list(self.sessions):
            with self._guard(name):
                for run in self.plan.runs:
                    self._sync_run(name, self.sessions[name], run, tables, final, status)

    def _sync_run(self, name, session, run, tables, final, status) -> None:
        state = self.store.tracked_run(name, session.target, run.key)
        logged = state["logged"] if state else {}
        steps = self.store.train_steps(run.key, after=logged.get("step", 0))
        points = self._checkpoint_points(run, tables, logged.get("checkpoints", {})) if tables is not None else []
        costs = _news(run_costs(self.store, run.key), logged.get("costs", {})) if final else {}
        artifacts = self._new_artifacts(run, logged.get("artifacts", {})) if final else {}
        if state and not (steps or points or costs or artifacts) and (status == "running" or
                                                                     logged.get("status") == status):
            return  # nothing new to say: the tracked run is not even opened (W&B would make a folder for nothing)
        tracked_id = session.start(TrackedRun(
            key=run.key, experiment=self.experiment, params=run_params(self.plan, run),
            tags=run_tags(self.plan, run, self.run_dir.path.resolve()),
            tracked_id=state["tracked_id"] if state else None))
        if state is None or state["tracked_id"] != tracked_id:  # a new tracked run (the old one was deleted)
            logged = {}
            steps = self.store.train_steps(run.key)
            points = self._checkpoint_points(run, tables, {}) if tables is not None else []
            costs = run_costs(self.store, run.key) if final else {}
            artifacts = self._new_artifacts(run, {}) if final else {}

        def keep():
            self.store.set_tracked_run(name, session.target, run.key, tracked_id, logged)

        keep()  # the id first: a run stopped from here on goes on in this tracked run
        try:
            if steps:
                session.log_metrics(tracked_id, [(row["step"], step_metrics(row)) for row in steps])
                logged["step"] = steps[-1]["step"]
                keep()
            if points:
                session.log_metrics(tracked_id, points)
                sent = logged.setdefault("checkpoints", {})
                for step, values in points:
                    sent.setdefault(str(step), {}).update({k: _same(v) for k, v in values.items()})
                keep()
            if costs:
                session.log_metrics(tracked_id, [(max(run.schedule.steps, default=0), costs)])
                logged.setdefault("costs", {}).update({k: _same(v) for k, v in costs.items()})
                keep()
            for folder, (path, digest) in artifacts.items():
                session.log_artifact(tracked_id, path, folder)
                logged.setdefault("artifacts", {})[folder] = digest
                keep()
        finally:
            session.finish(tracked_id, status)
        logged["status"] = status
        keep()

    def _checkpoint_points(self, run, tables, sent: dict) -> list:
        """Each checkpoint's metrics that the tracker lacks, or has with another value (a re-judged
        checkpoint, a judge added): only those, so no point is logged twice."""
        per_step = checkpoint_metrics(tables.steps, run)
        losses = self.store.conn.execute("SELECT step, train_loss FROM checkpoints WHERE run_key = ?", (run.key,))
        for row in losses:
            if row["train_loss"] is not None:
                per_step.setdefault(row["step"], {})["checkpoint/train_loss"] = float(row["train_loss"])
        points = []
        for step, values in sorted(per_step.items()):
            new = _news(values, sent.get(str(step), {}))
            if new:
                points.append((step, new))
        return points

    def _new_artifacts(self, run, sent: dict) -> dict:
        """The artifacts whose contents changed. The report says when it was written, so it is sent
        when it was not yet, or when the tables and figures it shows (the exports) changed."""
        artifacts = {"exports": self.run_dir.exports, "figures": self.run_dir.figures}
        if self.settings.adapters:
            for step, path in sorted(self.store.checkpoints(run.key).items()):
                artifacts[f"adapters/step-{step:06d}"] = Path(path)
        new = {}
        for folder, path in artifacts.items():
            if path.exists():
                digest = self._digest(path)
                if sent.get(folder) != digest:
                    new[folder] = (path, digest)
        report = self.run_dir.report
        if report.exists() and ("report" not in sent or "exports" in new or "figures" in new):
            new = {"report": (report, self._digest(report)), **new}
        return new

    def _digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = _files_digest(path)
        return self._digests[path]

    def close(self) -> None:
        for name in list(self.sessions):
            with self._guard(name):
                self.sessions.pop(name).close()
