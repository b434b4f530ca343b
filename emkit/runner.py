"""The experiment recipe, top to bottom: plan, train, generate, judge, report.

Each stage asks the store what is already done and does only the rest, importing its
heavy libraries only when there is work; running the same command again after a crash,
a Ctrl-C or a finished run completes what is missing and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from emkit import __version__
from emkit.config import ExperimentConfig
from emkit.logs import attach_file, detach
from emkit.plan import Plan, build_plan
from emkit.progress import progress
from emkit.rundir import RunDirectory

log = logging.getLogger("emkit")


@dataclass
class RunResult:
    out_dir: Path
    checkpoints_saved: int = 0
    answers_generated: int = 0
    tallies: list = field(default_factory=list)

    @property
    def judge_calls(self) -> int:
        return sum(t.calls for t in self.tallies)

    @property
    def judgments_stored(self) -> int:
        return sum(t.total for t in self.tallies)

    def line(self) -> str:
        return (f"{self.checkpoints_saved} new checkpoints, {self.answers_generated} new answers, "
                f"{self.judgments_stored} new judgments ({self.judge_calls} judge calls)")


def builtin_models(config: ExperimentConfig, pool) -> list[str]:
    """emkit's own offline models the run uses (builtin:NAME as a model, or loaded by a judge)."""
    from emkit.stages.judge import builtin_names

    return builtin_names(config, pool)


def _build_builtin_models(names: list[str]) -> None:
    """Built once into the cache before the run starts."""
    from emkit.models.builtins import build_builtins

    if names:
        build_builtins(names)


def run_experiment(config: ExperimentConfig, out_dir: Path, registry, rejudge_fallbacks: bool = False) -> RunResult:
    """``rejudge_fallbacks``: each judge also scores the answers a fallback judge scored in its place."""
    from emkit.execution import create_executor
    from emkit.execution.coordinator import run_gpu_work
    from emkit.execution.overlap import BackgroundJudging
    from emkit.execution.timing import RunTiming
    from emkit.stages.judge import (JudgePool, check_judge_needs, check_judges_usable, fallback_lines, judge_options,
                                    judge_stage)
    from emkit.interfaces import JudgeNeeds
    from emkit.models.builtins import BUILTIN_PREFIX
    from emkit.stages.report import report_stage
    from emkit.stages.train import record_runs, refuse_unavailable_trainer, trainer_for
    from emkit.tracking.sync import Tracking, refuse_unusable_trackers

    from emkit.rundir import with_saved_refinements

    started = time.time()
    config = with_saved_refinements(config, out_dir)
    plan: Plan = build_plan(config, registry, need_datasets=True)
    generator = registry.get("generators", config.evaluation.generator)
    if hasattr(generator, "check"):  # e.g. vLLM installed, and able to load the base the adapters are trained on
        generator.check(config)
    for note in plan.notes:
        log.info("%s", note)
    run_dir = RunDirectory(out_dir)
    judges = JudgePool(judge_options(config.judging, config.trust_remote_code), registry)
    check_judge_needs(config, judges)
    refuse_unusable_trackers(config, registry)
    if not (run_dir.path / "emkit.sqlite").exists():
        check_judges_usable(config, judges)  # before hours of training, not after
    executor = create_executor(config.execution, run_dir.path, registry)  # refused here: no GPU, no Slurm
    result = RunResult(out_dir=Path(out_dir))
    builtins = builtin_models(config, judges)
    _build_builtin_models(builtins)
    with run_dir.open(config):
        handler = attach_file(run_dir.logs / "emkit.log")
        stack = contextlib.ExitStack()
        try:
            store = run_dir.store
            store.set_meta("plan", plan.to_json())
            store.set_plan_answers(a.answer_id for a in plan.answers())
            store.set_meta("emkit_version", __version__)
            totals = plan.totals()
            log.info("run %s: %d training runs, %d checkpoints, %d answers, %d judgments planned", run_dir.path,
                     len(plan.runs), totals["checkpoints"], totals["generations"], totals["judge_calls"])
            trainer = trainer_for(plan, registry)
            if executor.in_process:  # elsewhere the trainer's packages are the job's business
                refuse_unavailable_trainer(store, plan, trainer)
            record_runs(store, plan, trainer)
            tracking = Tracking(run_dir, plan, registry)
            stack.callback(tracking.close)
            tracking.sync()  # each training run and its parameters, before hours of training
            judging = BackgroundJudging(run_dir.path, plan, registry, progress, executor.gpu_work_here,
                                        config.execution.poll_s).start()
            try:
                work = run_gpu_work(run_dir, plan, registry, progress, executor, judging, tracking)
            except BaseException:  # Ctrl-C, SIGTERM, an error: the calls in flight are cancelled, not waited for
                cancelling = time.time()
                judging.cancel()
                if time.time() - cancelling > 2:  # a stop should take a second; say where the time went
                    log.warning("judging beside the GPU work took %.1f s to stop", time.time() - cancelling)
                raise
            judging.finish()
            gpu_done = time.time()
            result.checkpoints_saved, result.answers_generated = work.checkpoints, work.answers
            result.tallies = judging.tallies + judge_stage(run_dir, plan, registry, progress, pool=judging.pool,
                                                           earlier=judging.tallies,
                                                           rejudge_fallbacks=rejudge_fallbacks)
            for line in fallback_lines(store, config.judging):
                log.warning("%s", line)
            judge_intervals = judging.intervals + ([(gpu_done, time.time())] if result.tallies[len(judging.tallies):]
                                                   else [])
            timing = RunTiming.measure(executor.name, started, time.time(), work.intervals, judge_intervals,
                                       work.units)
            store.set_meta("timing", timing.to_json())
            log.info("time: %s", RunTiming.line(timing.to_json()))
            tables = report_stage(run_dir, registry)
            tracking.sync(tables, final=True, status="failed" if work.failed else "finished")
            if work.failed:
                raise units_failed(work.failed, run_dir.path)
            log.info("done: %s", result.line())
            if any(m.id.startswith(BUILTIN_PREFIX) for m in config.models) or any(
                    m.startswith(BUILTIN_PREFIX) for spec in config.judging.judges
                    for m in JudgeNeeds.of(judges.get(spec)).models):
                log.info("This run used emkit's built-in offline models: it shows that every stage works, and "
                         "its numbers mean nothing (the report says why).")
            log.info("open %s", run_dir.report.resolve())
        finally:
            stack.close()
            detach(handler)
    return result


def units_failed(failed: list, run_path: Path):
    from emkit.errors import EmkitError

    key, job_id, detail = failed[0]
    last = [line for line in detail.splitlines() if line.strip()]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return EmkitError(
        f"Unit {key} failed in job {job_id}{more}: {last[0] if last else 'no log'}; everything else is stored and "
        f"judged, `emkit status {run_path}` shows each unit's log tail, and running the same command again "
        f"retries the failed units."
    )
