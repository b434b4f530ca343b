"""What the executor tests share: configs, a Slurm cluster, and a store compared by content."""

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = (ROOT / "examples" / "tiny.toml").read_text()

# Training slow enough to stop in the middle of: 60 steps, checkpoints at 2, 4 and 60, a saved
# state every 5 steps. One domain, so a grid of two domains is two training jobs and a baseline.
LONG_TRAINING = """
[checkpoints]
steps = [2, 4, 60]
"""


def write_config(path: Path, executor: str, *, long_training: bool = False, extra: str = "") -> Path:
    text = TINY.replace('first_epoch = 2\nevery_epoch = true\n', "") if long_training else TINY
    if long_training:
        text = text.replace("epochs = 4", "epochs = 15").replace("[checkpoints]", LONG_TRAINING.strip(), 1)
        text = text.replace("gradient_checkpointing = false", "gradient_checkpointing = false\nsave_state_every = 5")
    text += f"""
[execution]
executor = "{executor}"
poll_s = 0.5

[execution.slurm]
gpus_per_job = 1
cpus_per_job = 1
mem_gb = 2
time_min = 20
{extra}"""
    path.write_text(text)
    return path


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run([str(ROOT / "scripts" / "slurm-single-node.sh"), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm (scripts/slurm-single-node.sh): started here if it is not up and we are root.
    Where it cannot be started the Slurm tests skip, unless EMKIT_REQUIRE_SLURM=1 (CI) makes that a failure."""
    if not slurm_up():
        if os.geteuid() == 0:
            started = subprocess.run([str(ROOT / "scripts" / "slurm-single-node.sh"), "start"], capture_output=True,
                                     text=True, timeout=600)
            reason = started.stderr[-1000:]
        else:
            reason = "not root"
        if not slurm_up():
            if os.environ.get("EMKIT_REQUIRE_SLURM") == "1":
                pytest.fail(f"a real Slurm is required (EMKIT_REQUIRE_SLURM=1) but could not be started: {reason}")
            pytest.skip(f"no Slurm here and it could not be started: {reason}")
    yield
    subprocess.run(["scancel", "-u", "root"], capture_output=True)


def store_content(out: Path) -> dict:
    """A run's results by content: keys, texts, scores, adapter weights; not paths or times."""
    conn = sqlite3.connect(f"file:{out / 'emkit.sqlite'}?mode=ro", uri=True)
    try:
        checkpoints = conn.execute("SELECT run_key, step, adapter_path FROM checkpoints ORDER BY run_key, step").fetchall()
        return {
            "checkpoints": [(run, step, hashlib.sha256((Path(path) / "adapter_model.safetensors").read_bytes()).hexdigest())
                            for run, step, path in checkpoints],
            "answers": conn.execute("SELECT answer_id, run_key, step, answer, n_tokens, finish_reason, generator, "
                                    "superseded_by FROM answers ORDER BY answer_id").fetchall(),
            "judgments": conn.execute("SELECT answer_id, judge, metric, score, status FROM judgments "
                                      "ORDER BY answer_id, judge, metric").fetchall(),
            "runs": conn.execute("SELECT run_key, dataset_sha256, base_weights, finished_at IS NOT NULL "
                                 "FROM training_runs ORDER BY run_key").fetchall(),
        }
    finally:
        conn.close()


def assert_same_results(out: Path, expected: Path) -> None:
    """The same checkpoints (bit for bit), answers and runs; the same judgments, scores to 1e-4: a local
    judge's scores move in the 7th digit with the batch an answer is scored in (its padding), and
    judging beside the GPU work batches answers differently from judging them all at the end."""
    got, want = store_content(out), store_content(expected)
    for part in ("checkpoints", "answers", "runs"):
        assert got[part] == want[part], part
    assert [j[:3] + j[4:] for j in got["judgments"]] == [j[:3] + j[4:] for j in want["judgments"]]
    for mine, theirs in zip(got["judgments"], want["judgments"]):
        assert (mine[3] is None) == (theirs[3] is None) and abs((mine[3] or 0) - (theirs[3] or 0)) < 1e-4, mine


def units(out: Path) -> dict:
    if not (out / "emkit.sqlite").exists():
        return {}
    conn = sqlite3.connect(f"file:{out / 'emkit.sqlite'}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return {row["unit_key"]: dict(row) for row in conn.execute("SELECT * FROM units")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def shard_steps(out: Path, unit_key: str) -> set[int]:
    """Checkpoint steps a unit's job has written to its shard so far."""
    import json

    path = out / "shards" / f"{unit_key}.jsonl"
    if not path.exists():
        return set()
    steps = set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("table") == "checkpoints":
            steps.add(record["row"]["step"])
    return steps


def wait_for(condition, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"emkit ended before {what}:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_run(config: Path, out: Path, env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emkit", "run", "--config", str(config), "--out", str(out), *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    """SIGKILL the emkit process as soon as ``condition()`` holds."""
    try:
        wait_for(condition, timeout, what, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
