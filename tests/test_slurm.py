"""The slurm executor against a real Slurm: slurmctld, slurmd and munge from Debian's packages,
started on this machine by scripts/slurm-single-node.sh, with four fake GPUs. The tests submit
real jobs with sbatch and stop them with scontrol and scancel."""

import re
import subprocess
import time

import pytest

from execution_helpers import (assert_same_results, kill_when, shard_steps, slurm_cluster,  # noqa: F401
                               start_run, units, wait_for, write_config)
from helpers import run_emkit
from plugin_fixtures import make_plugin

pytestmark = pytest.mark.slow


def job_log(out, job_id) -> str:
    folder = out / "jobs" / "slurm" / str(job_id)
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.*")))  # .err, then .out


SLOW_TRAINER = '''
import time
from contextlib import contextmanager

from emkit.default_plugins.peft_trainer import PeftTrainer
from emkit.hookspecs import hookimpl


class SlowTrainer(PeftTrainer):
    """The peft trainer, a quarter of a second slower per step: a run long enough to meet its time limit."""
    name = "slow-peft"

    def train(self, job, on_checkpoint, progress):
        @contextmanager
        def slow_progress(**kwargs):
            with progress(**kwargs) as bar:
                update = bar.update

                def slow_update(n=1):
                    if n == 1:  # a step (a resumed run first counts the steps already done, at once)
                        time.sleep(0.25)
                    update(n)

                bar.update = slow_update
                yield bar

        super().train(job, on_checkpoint, slow_progress)


@hookimpl
def register_trainers(register):
    register(SlowTrainer())
'''


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """The same grid run by the local executor: what every Slurm run must end with."""
    folder = tmp_path_factory.mktemp("local")
    config = write_config(folder / "grid.toml", "local", long_training=True)
    run_emkit("run", "--config", config, "--out", folder / "run", env={"EMKIT_JUDGE_CACHE": str(folder / "c.sqlite")})
    return folder / "run"


def test_a_grid_on_slurm_survives_a_requeue_and_a_cancel_and_ends_as_a_local_run(slurm_cluster, local_grid, tmp_path):
    config = write_config(tmp_path / "grid.toml", "slurm", long_training=True)
    out = tmp_path / "run"
    # the peft trainer, slowed to 0.25 s a step: after step 4 there are 14 s of training left to stop
    site = make_plugin(tmp_path / "site", "emkit-slow", "emkit_slow", SLOW_TRAINER)
    env = {"PYTHONPATH": str(site), "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    process = start_run(config, out, env, "--trainer", "slow-peft")
    try:
        # both training jobs are in the middle of training: checkpoint 4 saved, 60 not yet
        wait_for(lambda: all(shard_steps(out, u) >= {4} for u in ("tiny-medical-seed0", "tiny-risky-financial-seed0")),
                 300, "both training jobs to pass step 4", process)
        jobs = {key: row["job_id"] for key, row in units(out).items()}
        assert 60 not in shard_steps(out, "tiny-medical-seed0") | shard_steps(out, "tiny-risky-financial-seed0"), \
            "training ended before it could be stopped; make it longer"
        subprocess.run(["scontrol", "requeue", jobs["tiny-medical-seed0"]], check=True)
        subprocess.run(["scancel", jobs["tiny-risky-financial-seed0"]], check=True)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]

    after = units(out)
    # requeued by Slurm: the same job ran again; cancelled: emkit submitted the unit again
    assert after["tiny-medical-seed0"]["job_id"] == jobs["tiny-medical-seed0"]
    assert after["tiny-medical-seed0"]["attempts"] == 1
    assert after["tiny-risky-financial-seed0"]["job_id"] != jobs["tiny-risky-financial-seed0"]
    assert after["tiny-risky-financial-seed0"]["attempts"] == 2
    assert "ended without a result" in stderr and "submitting it again" in stderr
    assert {row["state"] for row in after.values()} == {"done"}
    assert len({row["job_id"] for row in after.values()}) == 3  # a grid over three jobs at once
    # each stopped unit resumed from its saved state (every 5 steps), not from step 0
    requeued_log = job_log(out, jobs["tiny-medical-seed0"])
    assert requeued_log.count("unit tiny-medical-seed0 starts") == 2
    assert re.search(r"train tiny-medical-seed0: resumed from its saved state at step ([5-9]|[1-5]\d)\b", requeued_log)
    resubmitted_log = job_log(out, after["tiny-risky-financial-seed0"]["job_id"])
    assert re.search(r"train tiny-risky-financial-seed0: resumed from its saved state at step ([5-9]|[1-5]\d)\b",
                     resubmitted_log)
    # the result: exactly the local executor's, adapter weights, answers and judgments alike
    assert_same_results(out, local_grid)
    assert "on the slurm executor" in stderr and "hidden behind GPU work" in stderr
    status = run_emkit("status", out, env=env).stdout
    assert re.search(r"done +tiny-risky-financial-seed0 +job \d+ +attempt 2 +3/3 checkpoints +120/120 answers", status)


def test_a_coordinator_killed_and_started_again_waits_for_its_jobs_instead_of_submitting_twice(
        slurm_cluster, local_grid, tmp_path):
    config = write_config(tmp_path / "grid.toml", "slurm", long_training=True)
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    kill_when(start_run(config, out, env), lambda: len([r for r in units(out).values() if r["state"] == "running"]) == 2,
              "two training jobs running")
    before = units(out)
    assert before["tiny-medical-seed0"]["job_id"] and before["tiny-risky-financial-seed0"]["job_id"]
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert before["tiny-medical-seed0"]["job_id"] in queue  # the jobs outlive the emkit process

    second = run_emkit("run", "--config", config, "--out", out, env=env)
    after = units(out)
    for key in ("tiny-medical-seed0", "tiny-risky-financial-seed0"):
        assert after[key]["job_id"] == before[key]["job_id"] and after[key]["attempts"] == 1, key
        assert f"unit {key}: waiting for job {before[key]['job_id']}, submitted by an earlier emkit process" \
            in second.stderr
    assert_same_results(out, local_grid)


BROKEN_TRAINER = '''
from emkit.hookspecs import hookimpl


class BrokenTrainer:
    name = "broken"
    description = "a trainer that always fails, as a GPU out of memory would"

    def train(self, job, on_checkpoint, progress):
        raise RuntimeError("CUDA out of memory: tried to allocate 20.00 GiB (a test trainer)")


@hookimpl
def register_trainers(register):
    register(BrokenTrainer())
'''


def test_a_failing_job_ends_the_run_with_its_error_and_emkit_status_shows_its_log(slurm_cluster, tmp_path):
    site = make_plugin(tmp_path / "site", "emkit-broken", "emkit_broken", BROKEN_TRAINER)
    config = write_config(tmp_path / "tiny.toml", "slurm")
    out = tmp_path / "run"
    env = {"PYTHONPATH": str(site), "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    result = run_emkit("run", "--config", config, "--out", out, "--domain", "medical", "--trainer", "broken", env=env,
                       check=False)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"Error: Unit tiny-medical-seed0 failed in job \d+: RuntimeError: CUDA out of memory: .*; "
                        r"everything else is stored and judged, `emkit status .*` shows each unit's log tail, and "
                        r"running the same command again retries the failed units\.", error), error
    assert (out / "report.html").is_file()  # the baseline's answers are judged and reported
    status = run_emkit("status", out, env=env).stdout
    assert re.search(r"failed +tiny-medical-seed0 +job \d+", status)
    assert "| RuntimeError: CUDA out of memory" in status  # the tail of the job's log
    assert re.search(r"done +base-tiny .* 40/40 answers", status)


def test_a_job_at_its_time_limit_requeues_itself_and_resumes_from_its_saved_state(slurm_cluster, tmp_path):
    site = make_plugin(tmp_path / "site", "emkit-slow", "emkit_slow", SLOW_TRAINER)
    config = write_config(tmp_path / "tiny.toml", "slurm", long_training=True)
    # 240 steps of at least 0.25 s: past the warning Slurm sends 45 s before a 2-minute limit
    config.write_text(config.read_text().replace("steps = [2, 4, 60]", "steps = [2, 4, 240]")
                      .replace("epochs = 15", "epochs = 60")
                      .replace("time_min = 20", "time_min = 2\nsignal_before_end_s = 45"))
    out = tmp_path / "run"
    env = {"PYTHONPATH": str(site), "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    run_emkit("run", "--config", config, "--out", out, "--domain", "medical", "--trainer", "slow-peft", env=env)
    row = units(out)["tiny-medical-seed0"]
    assert row["state"] == "done" and row["attempts"] == 1  # requeued by submitit under the same job id
    log = job_log(out, row["job_id"])
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log
    assert re.search(r"Requeued job \d+ \(\d+ remaining timeouts\)", log)
    resumed = [int(s) for s in re.findall(r"train tiny-medical-seed0: resumed from its saved state at step (\d+)", log)]
    assert resumed and resumed[0] >= 5, log[-3000:]
    status = run_emkit("status", out, env=env).stdout
    assert re.search(r"done +tiny-medical-seed0 +job \d+ +attempt 1 +3/3 checkpoints +120/120 answers", status)


def test_a_request_no_node_can_hold_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path):
    config = write_config(tmp_path / "grid.toml", "slurm")
    config.write_text(config.read_text().replace("mem_gb = 2", "mem_gb = 4096"))
    out = tmp_path / "run"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    result = run_emkit("run", "--config", config, "--out", out, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"Error: No node of the default partition can run a job asking 1 CPUs, 4096 GB and 1 GPUs "
                        r"\(its largest: \d+ CPUs, [\d.]+ GB, 4 GPUs\); lower \[execution.slurm\] mem_gb \(at most [\d.]+\), "
                        r"or set partition to one that can.", last), last
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == before


def test_a_job_slurm_keeps_pending_for_ever_ends_the_run_saying_which_keys_to_change(slurm_cluster, tmp_path):
    # the short partition allows one minute; the jobs ask 20: Slurm keeps them pending (PartitionTimeLimit)
    config = write_config(tmp_path / "grid.toml", "slurm", extra='partition = "short"\n')
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_emkit("run", "--config", config, "--out", out, check=False)
    assert time.monotonic() - started < 120
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    # which check Slurm's scheduler meets first decides the reason it gives: the time limit, or the
    # partition's configuration as a whole (seen on CI); both mean the job never starts
    assert re.match(r"Error: Slurm will never start job \d+ of unit \S+: .* \((PartitionTimeLimit|PartitionConfig)\); "
                    r"it asked 1 CPUs, 2 GB, 1 GPUs and 20 minutes of partition short: "
                    r"change \[execution.slurm\] (time_min \(or partition\)|cpus_per_job, mem_gb, gpus_per_job, "
                    r"time_min, partition, account or qos) ", last), last
    listed = subprocess.run(["squeue", "-h", "-p", "short", "-t", "PENDING", "-o", "%i"], capture_output=True,
                            text=True).stdout.split()
    assert not listed  # the job that could never start was cancelled, not left in the queue
    status = run_emkit("status", out).stdout
    assert "waiting" in status and re.search(r"PartitionTimeLimit|PartitionConfig", status)
    # every unit whose job was cancelled waits; none is left "queued" under a job that is gone
    assert not re.search(r"^\s+queued", status, re.M), status
    assert "stay in the queue" not in result.stderr


def test_jobs_preempted_by_a_higher_priority_partition_are_requeued_and_each_unit_is_done_once(
        slurm_cluster, local_grid, tmp_path):
    config = write_config(tmp_path / "grid.toml", "slurm", long_training=True)
    out = tmp_path / "run"
    site = make_plugin(tmp_path / "site", "emkit-slow", "emkit_slow", SLOW_TRAINER)
    env = {"PYTHONPATH": str(site), "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    process = start_run(config, out, env, "--trainer", "slow-peft")
    urgent = None
    try:
        wait_for(lambda: shard_steps(out, "tiny-medical-seed0") >= {4}, 300, "training to pass step 4", process)
        jobs = {key: row["job_id"] for key, row in units(out).items()}
        # a job of the urgent partition asking every CPU of the node: Slurm preempts (requeues) emkit's jobs
        cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", cpus.rstrip("+"), "--mem=100",
                                 "-o", str(tmp_path / "urgent.out"),
                                 "--wrap", "sleep 8"], capture_output=True, text=True, check=True).stdout.strip()
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
        if urgent:
            subprocess.run(["scancel", urgent], capture_output=True)
    assert process.returncode == 0, stderr[-3000:]
    after = units(out)
    assert {row["state"] for row in after.values()} == {"done"}
    # every unit ran in the job it was first submitted as: requeued by Slurm, never submitted twice
    for key, job_id in jobs.items():
        if job_id:
            assert after[key]["job_id"] == job_id and after[key]["attempts"] == 1, (key, after[key])
    assert "submitting it again" not in stderr
    assert "starts" in job_log(out, jobs["tiny-medical-seed0"])
    assert job_log(out, jobs["tiny-medical-seed0"]).count("unit tiny-medical-seed0 starts") >= 2  # it was preempted
    assert_same_results(out, local_grid)
