"""Nothing lost: SIGKILL at any stage, Ctrl-C, and a second process on the same run directory."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import run_emkit

pytestmark = pytest.mark.slow
COUNTED = {"checkpoints": "SELECT COUNT(*) FROM checkpoints", "answers": "SELECT COUNT(*) FROM answers",
           "judgments": "SELECT COUNT(*) FROM judgments"}
PLANNED = {"checkpoints": 5, "answers": 240, "judgments": 480}  # the smoke preset, medical domain only
SMOKE = ["run", "--preset", "tiny", "--domain", "medical"]


def counts(out):
    store = out / "emkit.sqlite"
    if not store.exists():
        return dict.fromkeys(COUNTED, 0)
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return {name: conn.execute(sql).fetchone()[0] for name, sql in COUNTED.items()}
    except sqlite3.OperationalError:  # tables not made yet
        return dict.fromkeys(COUNTED, 0)
    finally:
        conn.close()


def start(out, env):
    return subprocess.Popen([sys.executable, "-m", "emkit", *SMOKE, "--out", str(out)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(process, out, condition, sig=signal.SIGKILL, timeout=600):
    """Send ``sig`` as soon as ``condition(counts)`` holds; return the counts seen then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = counts(out)
        if condition(seen):
            process.send_signal(sig)
            stdout, stderr = process.communicate(timeout=120)
            return seen, process.returncode, stderr
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the moment to stop it: {seen}\n{process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the moment to stop the run never came")


def keys(out):
    conn = sqlite3.connect(out / "emkit.sqlite")
    try:
        return {
            "checkpoints": sorted(conn.execute("SELECT run_key, step FROM checkpoints").fetchall()),
            "answers": sorted(conn.execute("SELECT answer_id, answer FROM answers").fetchall()),
            "judgments": sorted(conn.execute("SELECT answer_id, judge, metric, status FROM judgments").fetchall()),
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    run_emkit(*SMOKE, "--out", out, env={"EMKIT_JUDGE_CACHE": str(out.parent / "c.sqlite")})
    return out


def test_killed_in_every_stage_the_run_completes_with_the_same_results(uninterrupted, tmp_path):
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    stops = [
        ("training", lambda c: 2 <= c["checkpoints"] < PLANNED["checkpoints"]),
        ("generation", lambda c: 40 <= c["answers"] < PLANNED["answers"]),
        ("judging", lambda c: 100 <= c["judgments"] < PLANNED["judgments"]),
    ]
    logs, stored = [], []
    for stage, condition in stops:
        seen, code, stderr = signal_when(start(out, env), out, condition)
        assert code == -signal.SIGKILL, stage
        after = counts(out)
        assert all(after[k] >= seen[k] for k in COUNTED), f"{stage}: stored units were lost"
        logs.append(stderr)
        stored.append(after)
    resumed = run_emkit(*SMOKE, "--out", out, env=env)
    logs.append(resumed.stderr)
    assert counts(out) == PLANNED
    # each run did only what the store did not hold yet: nothing finished is done twice
    trained_again = re.findall(r"train tiny-\S+: 32 rows, 16 steps, checkpoints \[[\d, ]+\] \((\d+) to save\)", logs[1])
    assert sum(map(int, trained_again)) == PLANNED["checkpoints"] - stored[0]["checkpoints"]
    generated = re.findall(r"generate tiny: (\d+) answers", logs[2])  # one line per unit with answers to make
    assert sum(map(int, generated)) == PLANNED["answers"] - stored[1]["answers"]
    judged = re.search(r"judge local:builtin:tiny-judge: (\d+) judgments to make", logs[3])
    assert int(judged.group(1)) == PLANNED["judgments"] - stored[2]["judgments"]
    assert "done: 0 new checkpoints, 0 new answers" in resumed.stderr
    assert keys(out) == keys(uninterrupted)
    assert not list((out / "adapters").rglob(".*.tmp-*"))


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    seen, code, stderr = signal_when(start(out, env), out, lambda c: c["answers"] >= 40, sig=signal.SIGINT)
    assert code == 130, stderr[-3000:]
    assert "Interrupted. Everything finished so far is saved; run the same command again to resume." in stderr
    assert "Traceback" not in stderr
    after = counts(out)
    assert after["answers"] >= seen["answers"] and after["checkpoints"] == PLANNED["checkpoints"]
    # the unit in progress is shown as stopped (its process is gone), not as running
    status = run_emkit("status", out, env=env).stdout
    assert re.search(r"stopped +tiny-medical-seed0 +job pid\d+ +attempt 1 +5/5 checkpoints", status), status
    # the lock is released: the same command can go on at once (resuming is proven above)
    assert not subprocess.run([sys.executable, "-c", f"import fcntl; f = open({str(out / '.emkit.lock')!r}); "
                               "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"]).returncode


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    first = start(out, env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "emkit.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run_emkit(*SMOKE, "--out", out, env=env, check=False)
        assert second.returncode == 2
        assert f"{out} is in use by emkit process {first.pid}" in second.stderr
        assert "pass another --out directory" in second.stderr
    finally:
        first.kill()
        first.wait()
