"""The `wandb` tracker (`--track wandb`): each training run is a W&B run, grouped by experiment.

Project and entity: ``[tracking] options.wandb.project`` and ``.entity``, else WANDB_PROJECT and
WANDB_ENTITY (project default: "emkit"). ``WANDB_MODE=offline`` writes the runs under the run
directory's ``wandb/`` (or WANDB_DIR) for `wandb sync` later; online needs WANDB_API_KEY, read by
W&B itself. Every value is logged against the training step, a metric of its own (``emkit/step``):
a checkpoint's EM arrives after the training steps that follow it, which W&B's own step would drop.
"""

from __future__ import annotations

import importlib.util
import os
import re
import uuid
from pathlib import Path

from emkit.hookspecs import hookimpl

STEP = "emkit/step"


class WandbTracker:
    name = "wandb"
    description = "Weights & Biases: a run per training run, grouped per experiment (pip install 'emkit[wandb]')"
    options = ("project", "entity", "dir")  # [tracking] options.wandb

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("wandb") is None:
            return "wandb is not installed here; pip install 'emkit[wandb]'."
        return None

    def open(self, options: dict, run_path: Path):
        return WandbSession(options, Path(run_path))


class WandbSession:
    def __init__(self, options: dict, run_path: Path):
        self.project = options.get("project") or os.environ.get("WANDB_PROJECT") or "emkit"
        self.entity = options.get("entity") or os.environ.get("WANDB_ENTITY") or None
        self.dir = Path(options.get("dir") or os.environ.get("WANDB_DIR") or run_path).resolve()
        self.offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
        self.target = f"{self.entity or '-'}/{self.project}" + (f" offline in {self.dir}" if self.offline else "")
        self.run = None
        self._axes: set[str] = set()
        os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own lines (an artifact's folder, ...) are not the run's

    def start(self, run) -> str:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project, entity=self.entity, group=run.experiment, name=run.key, job_type="emkit-train",
            id=run.tracked_id or uuid.uuid4().hex[:12], resume="allow", config=run.params,
            tags=[run.tags["emkit.experiment"]], notes=f"emkit run directory: {run.tags['emkit.run_dir']}",
            dir=str(self.dir), reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", save_code=False, x_disable_stats=True,
                                    x_disable_meta=True),
        )
        self._axes = set()
        self.run.define_metric(STEP)
        return self.run.id

    def log_metrics(self, tracked_id: str, points) -> None:
        for step, values in points:
            for name in values:
                prefix = name.split("/")[0]
                if prefix not in self._axes:  # every metric of this prefix is plotted against the training step
                    self.run.define_metric(f"{prefix}/*", step_metric=STEP)
                    self._axes.add(prefix)
            self.run.log({STEP: step, **values})

    def log_artifact(self, tracked_id: str, path: Path, folder: str) -> None:
        import wandb

        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.name}-{folder}")
        artifact = wandb.Artifact(name, type="emkit-" + folder.split("/")[0])
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, tracked_id: str, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if status == "failed" else 0)
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


@hookimpl
def register_trackers(register):
    register(WandbTracker())
