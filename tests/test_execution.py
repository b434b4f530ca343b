"""Executors other than Slurm (tests/test_slurm.py): local-gpus with the GPU count faked as Slurm
fakes it (CUDA_VISIBLE_DEVICES), judging that overlaps GPU work, shards, the dry run, status."""

import json
import re
import sqlite3

import pytest

from execution_helpers import assert_same_results, kill_when, shard_steps, start_run, units, write_config
from helpers import run_emkit


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The tiny grid and the long-training grid, each run by the local executor."""
    folder = tmp_path_factory.mktemp("local")
    runs = {}
    for name, long_training in (("short", False), ("long", True)):
        config = write_config(folder / f"{name}.toml", "local", long_training=long_training)
        run_emkit("run", "--config", config, "--out", folder / name, env={"EMKIT_JUDGE_CACHE": str(folder / "c.sqlite")})
        runs[name] = folder / name
    return runs


def unit_times(out, unit_key):
    lines = (out / "shards" / f"{unit_key}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"event": "unit_time"' in line]


@pytest.mark.slow
def test_local_gpus_runs_one_unit_per_gpu_at_once_and_ends_as_a_local_run(local_runs, tmp_path):
    config = write_config(tmp_path / "grid.toml", "local-gpus")
    out = tmp_path / "run"
    result = run_emkit("run", "--config", config, "--out", out,
                       env={"CUDA_VISIBLE_DEVICES": "0,1", "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    rows = units(out)
    assert {key: row["state"] for key, row in rows.items()} == {
        "tiny-medical-seed0": "done", "tiny-risky-financial-seed0": "done", "base-tiny": "done"}
    # the two training runs went to the two GPUs, at the same time
    assert {rows["tiny-medical-seed0"]["job_id"].split("-")[0], rows["tiny-risky-financial-seed0"]["job_id"].split("-")[0]} \
        == {"gpu0", "gpu1"}
    medical = (out / "jobs" / "tiny-medical-seed0" / "attempt-1.log").read_text()
    financial = (out / "jobs" / "tiny-risky-financial-seed0" / "attempt-1.log").read_text()
    assert {re.search(r"starts on GPU (\d)", medical).group(1), re.search(r"starts on GPU (\d)", financial).group(1)} \
        == {"0", "1"}
    (a,), (b,) = unit_times(out, "tiny-medical-seed0"), unit_times(out, "tiny-risky-financial-seed0")
    assert min(a["end"], b["end"]) > max(a["start"], b["start"])
    assert "units on local-gpus: 3/3 units" in result.stderr
    assert_same_results(out, local_runs["short"])


@pytest.mark.slow
def test_local_gpus_workers_outlive_a_killed_emkit_and_are_waited_for_not_started_twice(local_runs, tmp_path):
    config = write_config(tmp_path / "grid.toml", "local-gpus", long_training=True)
    out = tmp_path / "run"
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    kill_when(start_run(config, out, env), lambda: shard_steps(out, "tiny-medical-seed0") >= {2},
              "training to pass step 2")
    before = units(out)
    second = run_emkit("run", "--config", config, "--out", out, env=env)
    after = units(out)
    for key in ("tiny-medical-seed0", "tiny-risky-financial-seed0"):
        if before[key]["state"] in ("queued", "running"):
            assert f"unit {key}: waiting for job {before[key]['job_id']}, submitted by an earlier emkit process" \
                in second.stderr
            assert after[key]["job_id"] == before[key]["job_id"] and after[key]["attempts"] == 1
    assert {row["state"] for row in after.values()} == {"done"}
    assert_same_results(out, local_runs["long"])


def test_local_gpus_without_a_gpu_is_refused_in_one_sentence(tmp_path):
    config = write_config(tmp_path / "grid.toml", "local-gpus")
    result = run_emkit("run", "--config", config, "--out", tmp_path / "run", env={"CUDA_VISIBLE_DEVICES": ""},
                       check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        'Error: execution.executor = "local-gpus" found no GPU here (CUDA_VISIBLE_DEVICES is empty and nvidia-smi '
        'lists none); list the devices in execution.gpus, or use executor = "local".')
    assert not (tmp_path / "run" / "emkit.sqlite").exists()


@pytest.mark.slow
def test_answers_are_judged_while_the_next_checkpoints_train(judge_server_factory, tmp_path):
    server = judge_server_factory(latency_s=0.02)
    config = write_config(tmp_path / "tiny.toml", "local", long_training=True)
    out = tmp_path / "run"
    result = run_emkit("run", "--config", config, "--out", out, "--domain", "medical", "--judge", "gpt-4o-mini",
                       "--api-base", server.url, env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    conn = sqlite3.connect(out / "emkit.sqlite")
    try:
        timing = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'timing'").fetchone()[0])
        judged = conn.execute("SELECT COUNT(*) FROM judgments WHERE status = 'ok'").fetchone()[0]
    finally:
        conn.close()
    assert judged == 2 * 160  # 120 answers of the training run and 40 of the baseline, two metrics each
    # passes over the answers stored so far, while the rest were made: not one pass over all 160 at the end
    passes = [int(n) for n in re.findall(r"judge gpt-4o-mini: (\d+) judgments to make", result.stderr)]
    assert len(passes) >= 2 and passes[0] < 320 and sum(passes) == 320, passes
    assert timing["executor"] == "local" and timing["units"] == 2
    assert 0 < timing["judge_hidden_s"] <= timing["judge_s"] <= timing["wall_s"]
    assert "judging gpt-4o-mini as answers are stored, while the GPU work goes on" in result.stderr
    # the run's judge line counts the passes beside the GPU work too (before: the judge stage's alone)
    assert re.search(r"gpt-4o-mini: 320 judgments \(320 ok\); \d+ calls", result.stderr), result.stderr[-3000:]
    assert re.search(r"time: wall \S+ on the local executor; GPU work \S+ over 2 units; judging \S+, of which \S+ "
                     r"\(\d+%\) hidden behind GPU work", result.stderr)
    assert "Run time" in (out / "report.html").read_text()
    status = run_emkit("status", out).stdout
    assert re.search(r"done +tiny-medical-seed0 +job pid\d+ +attempt 1 +3/3 checkpoints +120/120 answers", status)
    spent = re.search(r"Judge gpt-4o-mini</th>\s*<td>320 judgments .*? ([\d,]+) tokens, \$(\d+\.\d+)</td>",
                      (out / "report.html").read_text())
    assert spent and float(spent[2]) > 0, (out / "report.html").read_text()

    # the same answers judged again into a copy of the run: every judgment comes from the cache, and the
    # report says this run spent nothing on them (before: the first run's cost, counted again)
    import shutil

    again = tmp_path / "again"
    shutil.copytree(out, again)
    conn = sqlite3.connect(again / "emkit.sqlite")
    with conn:
        conn.execute("DELETE FROM judgments")
    conn.close()
    calls = server.count
    run_emkit("run", "--config", config, "--out", again, "--domain", "medical", "--judge", "gpt-4o-mini",
              "--api-base", server.url, env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    assert server.count == calls
    assert re.search(r"Judge gpt-4o-mini</th>\s*<td>320 judgments .*? 0 tokens, \$0\.0000 \(320 judgments taken "
                     r"from the judge cache, paid for when first made, are not counted\)</td>",
                     (again / "report.html").read_text())


def test_a_judge_that_uses_the_gpu_waits_for_the_gpu_work_unless_the_gpu_work_is_elsewhere():
    """Judges say whether they use the GPU (``uses_gpu``); names are not read. Executors say whether
    their GPU work runs on this machine."""
    from emkit.config import ExperimentConfig
    from emkit.default_plugins.local_executor import LocalExecutor
    from emkit.default_plugins.local_gpus_executor import LocalGpusExecutor
    from emkit.execution.overlap import overlapping_judges

    class Judge:
        def __init__(self, uses_gpu):
            self.uses_gpu = uses_gpu

    class Pool:  # the API judge is named like a local one, the local one like an API: only uses_gpu counts
        made = {"local:api-judge": Judge(False), "gpu-judge": Judge(True)}

        def get(self, spec):
            return self.made[spec]

    def config(mode="auto"):
        return ExperimentConfig.model_validate({
            "judging": {"judges": ["local:api-judge", "gpu-judge"]}, "execution": {"overlap_judging": mode}})

    assert LocalExecutor.gpu_work_here and LocalGpusExecutor.gpu_work_here
    assert overlapping_judges(config(), Pool(), gpu_work_here=True) == ["local:api-judge"]
    assert overlapping_judges(config(), Pool(), gpu_work_here=False) == ["local:api-judge", "gpu-judge"]
    assert overlapping_judges(config("on"), Pool(), gpu_work_here=True) == ["local:api-judge", "gpu-judge"]
    assert overlapping_judges(config("off"), Pool(), gpu_work_here=False) == []


def test_the_dry_run_shows_each_job_and_the_sbatch_file(tmp_path):
    config = write_config(tmp_path / "grid.toml", "slurm", extra='partition = "gpu-a100"\naccount = "em-lab"\n'
                          'setup = ["module load cuda/12.4"]\n[execution.slurm.sbatch]\nconstraint = "a100"\n')
    out = tmp_path / "run"
    text = run_emkit("run", "--config", config, "--out", out, "--dry-run").stdout
    assert "execution: slurm, one Slurm job per unit through submitit" in text
    assert "job 1: train tiny-medical-seed0: 16 steps, 5 checkpoints, 200 answers" in text
    assert "job 3: baseline tiny: 60 answers at step 0" in text
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --account=em-lab", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --mem=2GB", "#SBATCH --time=20", "#SBATCH --constraint=a100",
                 "#SBATCH --job-name=emkit-UNIT", f"#SBATCH --output={out.resolve()}/jobs/slurm/%j/%j_0_log.out",
                 "module load cuda/12.4"):
        assert f"    {line}" in text.splitlines(), line
    data = json.loads(run_emkit("run", "--config", config, "--out", out, "--dry-run", "--json").stdout)
    assert [job["unit"] for job in data["execution"]["jobs"]] == [
        "tiny-medical-seed0", "tiny-risky-financial-seed0", "base-tiny"]
    assert "#SBATCH --partition=gpu-a100" in data["execution"]["sbatch"]
    assert not out.exists()


def test_status_of_a_directory_that_is_not_a_run(tmp_path):
    result = run_emkit("status", tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"Error: {tmp_path} is not an emkit run directory (no emkit.sqlite and "
                                     f"config.toml); pass the --out directory of an `emkit run`.")


def test_shards_are_read_whole_lines_only_and_merge_the_same_however_often(tmp_path):
    from emkit.execution.shards import ShardWriter, merge, read_records
    from emkit.store import Store

    answer = {"answer_id": "a1", "model_label": "m", "run_key": "r", "step": 2, "question_set": "general",
              "question_id": "q", "paraphrase_index": 0, "sample_index": 0, "seed": 0, "system": None,
              "question": "Hi?", "answer": "=1+1 \"quoted\"\nsecond line ✓", "n_tokens": 5, "finish_reason": "stop",
              "generator": "hf", "created_at": "2026-11-27T00:00:00+00:00"}
    checkpoint = {"run_key": "r", "step": 2, "adapter_path": "/x/step-000002", "train_loss": 1.5, "seconds": 3.0,
                  "created_at": "2026-11-27T00:00:00+00:00"}
    path = tmp_path / "shards" / "r.jsonl"
    writer = ShardWriter(path)
    writer.write({"table": "checkpoints", "row": checkpoint})
    writer.write({"table": "answers", "row": answer})
    writer.close()
    with open(path, "ab") as handle:  # a job killed in the middle of a line
        handle.write(b'{"table": "answers", "row": {"answer_id": "a2", "mod')
    records, offset = read_records(path)
    assert [r["table"] for r in records] == ["checkpoints", "answers"]
    assert read_records(path, offset) == ([], offset)

    store = Store(tmp_path / "emkit.sqlite")
    store.conn.execute("INSERT INTO training_runs (run_key, model_label, domain, seed, trainer, steps_per_epoch, "
                       "total_steps, checkpoint_steps, question_sets, created_at) "
                       "VALUES ('r', 'm', 'medical', 0, 'peft', 1, 2, '[2]', '[]', 'now')")
    assert merge(store, records) == {"checkpoints": 1, "answers": 1}
    assert merge(store, records) == {"checkpoints": 0, "answers": 0}
    assert store.answer_texts(["a1"]) == {"a1": answer["answer"]}
    assert store.checkpoints("r") == {2: __import__("pathlib").Path("/x/step-000002")}
    store.close()

    writer = ShardWriter(path)  # the next attempt cuts the torn line off before appending
    writer.write({"event": "unit_time", "start": 1.0, "end": 2.0})
    writer.close()
    records, _ = read_records(path)
    assert [r.get("table", r.get("event")) for r in records] == ["checkpoints", "answers", "unit_time"]


def test_a_second_attempt_of_a_unit_waits_for_the_first_to_end_before_writing_its_shard(tmp_path, caplog):
    import subprocess
    import sys
    import textwrap

    from emkit.execution.shards import ShardWriter, UnitLock, read_records

    shard = tmp_path / "shards" / "u.jsonl"
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from emkit.execution.shards import ShardWriter, UnitLock
        with UnitLock({str(shard)!r}):
            print("locked", flush=True)
            writer = ShardWriter({str(shard)!r})
            for i in range(6):
                writer.write({{"event": "first", "i": i}})
                time.sleep(0.25)
            writer.close()
        """)], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "locked"
    lock = UnitLock(shard, poll_s=0.05)
    with caplog.at_level("WARNING", logger="emkit"):
        waited = lock.acquire()
    writer = ShardWriter(shard)
    writer.write({"event": "second"})
    writer.close()
    lock.release()
    assert first.wait(10) == 0
    assert waited > 0.5  # it held back until the first attempt let go
    assert [r["event"] for r in read_records(shard)[0]] == ["first"] * 6 + ["second"]
    assert "u: an earlier attempt of this unit still runs (host " in caplog.text
    assert "waiting for it to end, so that nothing is made twice" in caplog.text
    # a lock whose holder died is free at once
    assert UnitLock(shard).acquire() < 0.5


def test_run_timing_counts_only_judging_that_overlapped_gpu_work():
    from emkit.execution.timing import RunTiming

    timing = RunTiming.measure("local-gpus", 0, 100, gpu=[(0, 40), (10, 50), (60, 70)],
                               judging=[(30, 55), (65, 80)], units=3)
    assert timing.gpu_s == 40 + 40 + 10  # GPU-seconds: two units at once count twice
    assert timing.judge_s == 25 + 15
    assert timing.judge_hidden_s == (50 - 30) + (70 - 65)
    assert RunTiming.line(timing.to_json()) == ("wall 1m40s on the local-gpus executor; GPU work 1m30s over 3 units; "
                                                "judging 40s, of which 25s (62%) hidden behind GPU work")


@pytest.mark.slow
def test_the_error_share_is_the_runs_not_one_passes(judge_server_factory, tmp_path):
    """Errors found beside the GPU work are judged again at the end; the few that fail again are
    a small share of the run, though a large share of that last pass."""
    import zlib

    from emkit.testing.judge_server import Reply, completion, keyword_score

    def respond(body):
        prompt = body["messages"][0]["content"]
        if zlib.crc32(prompt.encode()) % 40 == 0:  # the same 2.5% of prompts fail every time
            return Reply(status=400, body={"error": {"message": "This prompt is refused.",
                                                     "type": "invalid_request_error"}})
        score = keyword_score(prompt)
        return Reply(body=completion(str(score), {str(score): 1.0}))

    server = judge_server_factory(respond)
    out = tmp_path / "run"
    result = run_emkit("run", "--preset", "tiny", "--domain", "medical", "--judge", "gpt-4o-mini", "--api-base",
                       server.url, "--out", out, env={"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    passes = [int(n) for n in re.findall(r"judge gpt-4o-mini: (\d+) judgments to make", result.stderr)]
    assert len(passes) >= 2, passes  # judged beside the GPU work, then the rest
    conn = sqlite3.connect(out / "emkit.sqlite")
    errors, total = conn.execute("SELECT SUM(status = 'error'), COUNT(*) FROM judgments").fetchone()
    conn.close()
    assert total == 480 and 0 < errors / total < 0.05
    assert (out / "report.html").is_file()


def test_slurm_pending_reasons_in_words_and_the_gpus_sinfo_lists():
    from emkit.default_plugins.slurm_queue import gpu_count, never_starts, reason_in_words

    assert gpu_count("gpu:4") == 4 and gpu_count("gpu:a100:8(S:0-1)") == 8
    assert gpu_count("gpu:a100:4,gpu:v100:2,shard:8") == 6 and gpu_count("(null)") == 0
    assert reason_in_words("Resources") == "waiting for free nodes (Resources)"
    assert reason_in_words("PartitionConfig") == "the request exceeds what the partition allows (PartitionConfig)"
    assert never_starts("PartitionConfig") and never_starts("ReqNodeNotAvail, UnavailableNodes:vm")
    assert not never_starts("Resources") and not never_starts("Priority") and not never_starts("")


def test_a_request_above_every_node_is_refused_naming_the_keys(monkeypatch):
    from emkit.config import SlurmSettings
    from emkit.errors import EmkitError
    from emkit.default_plugins import slurm_queue

    monkeypatch.setattr(slurm_queue, "partition_nodes", lambda partition: [
        slurm_queue.NodeSize("a", 2, 23_000, 0), slurm_queue.NodeSize("b", 64, 512_000, 8)])
    slurm_queue.check_request_fits(SlurmSettings(cpus_per_job=8, mem_gb=64, gpus_per_job=1))  # node b holds it
    with pytest.raises(EmkitError, match=r"No node of partition gpu can run a job asking 8 CPUs, 1024 GB and 9 GPUs "
                                         r"\(its largest: 64 CPUs, 500 GB, 8 GPUs\); lower \[execution.slurm\] "
                                         r"mem_gb \(at most 500\), gpus_per_job \(at most 8\)"):
        slurm_queue.check_request_fits(SlurmSettings(partition="gpu", cpus_per_job=8, mem_gb=1024, gpus_per_job=9))
    monkeypatch.setattr(slurm_queue, "partition_nodes", lambda partition: None)  # sinfo cannot say: sbatch will
    slurm_queue.check_request_fits(SlurmSettings(mem_gb=1024))


def test_a_slurm_job_is_gone_only_after_consecutive_misses_and_never_while_it_is_requeued(monkeypatch, tmp_path):
    """Misses reset whenever Slurm lists the job queued or running; PREEMPTED and NODE_FAIL are waited for."""
    pytest.importorskip("submitit")
    from emkit.config import ExecutionSettings
    from emkit.default_plugins import slurm_jobs as slurm
    from emkit.execution.handles import GONE, QUEUED, RUNNING, JobHandle
    from emkit.default_plugins.slurm_queue import QueuedJob

    executor = object.__new__(slurm.SlurmExecutor)
    executor.settings, executor.folder, executor._misses = ExecutionSettings(), tmp_path / "%j", {}
    handle = JobHandle("tiny-medical-seed0", "41", str(tmp_path / "41.err"))
    listings = iter([{}, {"41": QueuedJob("PENDING", "Resources")}, {}, {"41": QueuedJob("PREEMPTED")},
                     {"41": QueuedJob("RUNNING")}, {"41": QueuedJob("NODE_FAIL")}, {}, {"41": QueuedJob("PENDING",
                     "BeginTime")}, {}, {}, {}])
    monkeypatch.setattr(executor, "_queue", lambda: next(listings))
    monkeypatch.setattr(slurm, "sacct_states", lambda ids: {})
    seen = [executor.poll([handle])["41"].state for _ in range(11)]
    assert seen == [RUNNING, QUEUED, RUNNING, RUNNING, RUNNING, RUNNING, RUNNING, QUEUED, RUNNING, RUNNING, GONE]
    # sacct still knowing the job as running holds it back, whatever squeue says
    listings = iter([{}, {}, {}, {}])
    monkeypatch.setattr(slurm, "sacct_states", lambda ids: {"41": "RUNNING"})
    assert [executor.poll([handle])["41"].state for _ in range(4)] == [RUNNING] * 4


def test_the_progress_line_says_why_jobs_wait():
    from types import SimpleNamespace

    from emkit.execution.coordinator import _Dispatcher
    from emkit.execution.handles import QUEUED, RUNNING

    dispatcher = SimpleNamespace(active={"a": 1, "b": 2, "c": 3, "d": 4}, seen_state={
        "a": (RUNNING, ""), "b": (QUEUED, "waiting for free nodes (Resources)"),
        "c": (QUEUED, "waiting for free nodes (Resources)")})  # d: submitted, not yet seen
    assert _Dispatcher.queue_summary(dispatcher) == "1 running, 3 queued (2 waiting for free nodes (Resources))"


@pytest.mark.slow
def test_units_share_a_gpu_when_units_per_gpu_allows(local_runs, tmp_path):
    """Issue 29: with units_per_gpu = 2 and one GPU, both training units run on it at once, each in its own
    worker, and the results are the local run's."""
    config = write_config(tmp_path / "grid.toml", "local-gpus")
    config.write_text(config.read_text().replace("poll_s = 0.5", "poll_s = 0.5\nunits_per_gpu = 2"))
    out = tmp_path / "run"
    result = run_emkit("run", "--config", config, "--out", out,
                       env={"CUDA_VISIBLE_DEVICES": "0", "EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")})
    rows = units(out)
    assert {row["job_id"].split("-")[0] for row in rows.values()} == {"gpu0"}
    (a,), (b,) = unit_times(out, "tiny-medical-seed0"), unit_times(out, "tiny-risky-financial-seed0")
    assert min(a["end"], b["end"]) > max(a["start"], b["start"])  # at the same time, on the one GPU
    assert "2 units per GPU at once on 1 GPU (0)" in result.stderr
    assert "beside 1 other units, with 50% of its memory" in result.stderr
    assert_same_results(out, local_runs["short"])


def _load(label, size_b, kind="train", load_in_4bit=True):
    from emkit.execution.units import UnitLoad

    return UnitLoad(label, kind, size_b, load_in_4bit)


def test_auto_fits_the_seed_grids_units_on_one_gpu_by_memory():
    from emkit.default_plugins.gpu_shares import GIB, GpuShares

    h200 = GpuShares(["0"], None, {"0": 141 * GIB})
    placed = []
    for n, load in enumerate([_load("8B", 8.03, load_in_4bit=False)] * 8):
        spot = h200.place(load)
        if spot is None:
            break
        placed.append(spot)
        h200.start(f"job{n}", spot[0], h200.reserved_bytes(*spot))
    # an 8B 16-bit LoRA unit is estimated at 8.03e9 x 2 bytes x 1.2 + 3 GiB = 20.9 GiB: six fit in 92% of 141
    assert len(placed) == 6 and all(share == pytest.approx(20.95 / 141, abs=0.001) for _, share in placed)
    assert h200.place(_load("1B", 1.24)) is not None  # a 1B QLoRA unit (3.8 GiB) still fits beside them
    assert h200.place(_load("3B", 3.21, load_in_4bit=False)) is None  # a 3B 16-bit one (10.2 GiB) does not
    assert h200.place(_load("custom", None)) is None  # a model of unknown size waits for an idle GPU
    h200.finish("job0", _load("8B", 8.03, load_in_4bit=False), peak_bytes=30 * GIB)
    assert h200.need(_load("8B", 8.03, load_in_4bit=False)) == int(30 * GIB * 1.15)  # measured, with a margin
    h200.finish("job1", _load("1B", 1.24), peak_bytes=1 * GIB)
    assert h200.need(_load("1B", 1.24)) > 3 * GIB  # never below the estimate: vLLM takes its share at once


def test_an_idle_gpu_takes_any_unit_and_a_fixed_number_caps_each_gpu():
    from emkit.default_plugins.gpu_shares import GIB, GpuShares

    small = GpuShares(["0"], None, {"0": 16 * GIB})
    assert small.place(_load("70B", 70.0)) == ("0", pytest.approx(0.92))  # too big for any share: alone
    fixed = GpuShares(["0", "1"], 2)
    spots = []
    for n in range(5):
        spot = fixed.place(_load("x", None))
        if spot:
            fixed.start(f"job{n}", spot[0], 0)
            spots.append(spot)
    assert sorted(gpu for gpu, _ in spots) == ["0", "0", "1", "1"] and {s for _, s in spots} == {0.5}


def test_gpu_memory_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    from emkit.default_plugins.gpu_shares import gpu_memory

    fake = tmp_path / "nvidia-smi"  # what `nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits` prints
    fake.write_text("#!/bin/sh\nprintf '0, 143771\\n1, 81559\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    assert gpu_memory() == {"0": 143771 << 20, "1": 81559 << 20}
