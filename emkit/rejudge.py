"""`emkit rejudge RUN --judge NAME`: score a run's stored answers with another judge.

The new judge's judgments are stored beside the old ones (judgments are keyed by answer, judge and
metric), through the same judge cache, with the run's judging settings unless an option says
otherwise; nothing is trained or sampled. The run's config keeps its own judges, so the report
still leads with the judge the run was made with and sets the new one beside it (judge agreement,
EM rates per judge). This is how an old run is re-scored when its judge is retired, or measured
under a second judge.
"""

from __future__ import annotations

import logging
from pathlib import Path

from emkit.errors import EmkitError
from emkit.rundir import read_saved_config, saved_config_path

log = logging.getLogger("emkit")


def rejudge_config(run_path: Path, judges: list[str], **overrides):
    """The run's saved config with ``judges`` as its judges (and any judging option given)."""
    from emkit.config import apply_overrides, config_from_dict

    if Path(run_path).is_file():
        raise EmkitError(f"{run_path} is a file of judged answers, not a run directory: score it with another judge "
                         f"with `emkit judge {run_path} --judge NAME --out NEW.csv` (its own scores are kept beside "
                         f"NAME's), then `emkit report NEW.csv` sets both judges side by side.")
    saved = read_saved_config(run_path) if (Path(run_path) / "emkit.sqlite").is_file() else None
    if saved is None:
        raise EmkitError(f"{run_path} is not an emkit run directory (no emkit.sqlite and config.toml); pass the --out "
                         f"directory of an `emkit run`.")
    data = apply_overrides(saved, judges=tuple(judges), **overrides)
    return config_from_dict(data, str(saved_config_path(run_path)))


def rejudge(run_path: Path, judges: list[str], registry, progress, **overrides) -> list:
    """Score every answer the run's plan asks for with each of ``judges`` (those it scored already are
    skipped: a stopped rejudge resumes); returns the judges' tallies."""
    from emkit.plan import build_plan
    from emkit.rundir import RunDirectory
    from emkit.stages.judge import JudgeTally, judge_pass, ready_judge_pool

    run_path = Path(run_path)
    config = rejudge_config(run_path, judges, **overrides)
    plan = build_plan(config, registry, need_datasets=False)
    pool = ready_judge_pool(config, registry)
    with RunDirectory(run_path).attach() as run_dir:
        tallies = judge_pass(plan, run_dir.store, config.judging.judges, pool, progress)
        for tally in JudgeTally.per_judge(tallies):
            log.info("%s", tally.line())
        rejudged = run_dir.store.get_meta("rejudged_with", [])
        run_dir.store.set_meta("rejudged_with", list(dict.fromkeys(rejudged + [pool.get(j).name for j in judges])))
    return tallies

