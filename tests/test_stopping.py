"""Ctrl-C means now: judge calls in flight beside the GPU work are cancelled, not waited for, and the
same command then finishes the run with nothing done twice (live calls and batches). A fallback
judge never judges beside the GPU work; what it scored is listed and judged again on request."""

import json
import signal
import sqlite3
import time

import pytest

from execution_helpers import start_run, units, wait_for, write_config
from emkit.testing.batch_api import BatchBehaviour
from helpers import run_emkit

pytestmark = pytest.mark.slow
PLANNED_ANSWERS = 2 * 120 + 60  # the long tiny grid: two training runs of 3 checkpoints, the baseline on both domains
PLANNED_JUDGMENTS = 2 * PLANNED_ANSWERS


def stored(out, sql):
    """A count from the run's store; 0 while the store is still being made (its file exists before its tables)."""
    conn = sqlite3.connect(f"file:{out / 'emkit.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def interrupt(process, signum=signal.SIGINT) -> tuple[float, str]:
    """Send ``signum``; the seconds until the process ended, and its stderr."""
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return time.monotonic() - sent, stderr


def long_grid(tmp_path, batch: bool = False):
    config = write_config(tmp_path / "tiny.toml", "local", long_training=True)
    if batch:
        config.write_text(config.read_text().replace("[judging]\n", "[judging]\nmode = \"batch\"\nbatch_poll_s = 0.2\n"))
    return config


def training_goes_on(out) -> bool:
    return any(row["state"] == "running" for row in units(out).values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_slow_judge_calls_beside_the_gpu_work_and_the_run_resumes(judge_server_factory, tmp_path,
                                                                                  signum):
    server = judge_server_factory(latency_s=20.0)  # a judge that takes 20 s a call
    config, out = long_grid(tmp_path), tmp_path / "run"
    args = ("--judge", "gpt-4o-mini", "--api-base", server.url)
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    process = start_run(config, out, env, *args)
    # the first unit's answers went to the judge, and the next unit trains
    wait_for(lambda: server.count >= 1 and training_goes_on(out), 300, "a judge call beside training", process)
    seconds, stderr = interrupt(process, signum)
    assert process.returncode == 130, stderr[-3000:]
    assert seconds < 10, seconds
    assert stderr.strip().splitlines()[-1] == (
        "Interrupted. Everything finished so far is saved; run the same command again to resume.")
    assert "Traceback" not in stderr
    assert stored(out, "SELECT COUNT(*) FROM judgments") == 0  # no reply had come back: nothing half-written
    if signum == signal.SIGTERM:
        return  # the resume is the same after either signal: run once, after Ctrl-C
    checkpoints = stored(out, "SELECT COUNT(*) FROM checkpoints")
    calls_before = server.count

    server.latency_s = 0.0
    resumed = run_emkit("run", "--config", config, "--out", out, *args, env=env)
    assert stored(out, "SELECT COUNT(*) FROM judgments WHERE status = 'ok'") == PLANNED_JUDGMENTS
    assert stored(out, "SELECT COUNT(*) FROM answers") == PLANNED_ANSWERS
    # nothing done twice: every judgment asked once more at most (the cancelled ones), no checkpoint remade
    assert server.count - calls_before == PLANNED_JUDGMENTS
    assert stored(out, "SELECT COUNT(*) FROM checkpoints") == 6
    assert f"done: {6 - checkpoints} new checkpoints" in resumed.stderr


def test_ctrl_c_leaves_batches_in_flight_recorded_and_the_next_run_collects_them(judge_server_factory, tmp_path):
    behaviour = BatchBehaviour()
    behaviour.gate.clear()  # the provider holds every batch: "in_progress" for as long as the test likes
    server = judge_server_factory(batch=behaviour)
    config, out = long_grid(tmp_path, batch=True), tmp_path / "run"
    args = ("--judge", "gpt-4o-mini", "--api-base", server.url)
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    process = start_run(config, out, env, *args)

    def batches_made():
        return sum(1 for method, path in server.api_calls if method == "POST" and path.endswith("/batches"))

    wait_for(lambda: batches_made() >= 1 and training_goes_on(out), 300, "a batch beside training", process)
    seconds, stderr = interrupt(process)
    assert process.returncode == 130, stderr[-3000:]
    assert seconds < 10, seconds
    assert "Traceback" not in stderr
    made = batches_made()

    behaviour.gate.set()  # the provider finishes the batches while no emkit runs
    resumed = run_emkit("run", "--config", config, "--out", out, *args, env=env)
    assert stored(out, "SELECT COUNT(*) FROM judgments WHERE status = 'ok'") == PLANNED_JUDGMENTS
    # the batches made before Ctrl-C were collected, not made again: no request was sent twice
    sent = [json.loads(line)["custom_id"] for batch in server.batches.batches.values()
            for line in server.batches.contents[batch["input_file_id"]].splitlines()]
    assert len(sent) == len(set(sent)) == PLANNED_JUDGMENTS
    assert batches_made() > made
    assert "done: " in resumed.stderr


def test_a_fallback_waits_for_the_gpu_work_and_what_it_scored_is_judged_again_on_request(judge_server_factory,
                                                                                        tmp_path):
    server = judge_server_factory()
    config, out = long_grid(tmp_path), tmp_path / "run"
    args = ("--judge", "gpt-4o-mini", "--api-base", server.url, "--fallback", "local:builtin:tiny-judge")
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "c.sqlite")}
    process = start_run(config, out, env, *args)
    wait_for(lambda: (out / "emkit.sqlite").exists() and stored(out, "SELECT COUNT(*) FROM judgments") > 0
             and training_goes_on(out), 300, "judgments beside training", process)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    server.stop()  # the primary refuses connections from now on, mid-run
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    lines = stderr.splitlines()
    last_generation = max(i for i, line in enumerate(lines) if line.startswith("generate tiny:"))
    fallback_passes = [i for i, line in enumerate(lines) if "local:builtin:tiny-judge: " in line
                       and "judgments to make" in line]
    assert fallback_passes and min(fallback_passes) > last_generation  # not beside the GPU work
    # said by the next pass beside the GPU work, or, when none came before the GPU work ended (the stop
    # fell in the last unit), by the judge stage as it turns to the fallback
    assert "judge gpt-4o-mini cannot be reached now" in stderr or "JUDGE FALLBACK: gpt-4o-mini cannot be used" \
        in stderr, stderr[-3000:]
    by_fallback = stored(out, "SELECT COUNT(DISTINCT answer_id) FROM judgments WHERE judge = 'local:builtin:tiny-judge'")
    note = (f"{by_fallback} answers were scored by local:builtin:tiny-judge in place of gpt-4o-mini; once gpt-4o-mini "
            f"can be reached, `emkit run ... --rejudge-fallbacks` has gpt-4o-mini score them too")
    assert 0 < by_fallback < PLANNED_ANSWERS and note in stderr
    assert note in run_emkit("status", out).stdout

    judge_server_factory(port=port)  # the primary is back at the same address
    again = run_emkit("run", "--config", config, "--out", out, *args, "--rejudge-fallbacks", env=env)
    assert stored(out, "SELECT COUNT(*) FROM judgments WHERE judge = 'gpt-4o-mini' AND status = 'ok'") \
        == PLANNED_JUDGMENTS
    assert "in place of" not in again.stderr and "in place of" not in run_emkit("status", out).stdout
    assert "done: 0 new checkpoints, 0 new answers" in again.stderr


def test_an_error_a_library_makes_of_ctrl_c_still_ends_as_the_interrupt(tmp_path):
    """safetensors, interrupted mid-load, raises a ValueError of its own: after Ctrl-C that error is the
    interrupt's (exit 130, how to resume), not a traceback and exit 1. Without Ctrl-C it is shown."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, sys\n"
        "import click\n"
        "from emkit import cli\n"
        "@cli.cli.command()\n"
        "@click.option('--signal', 'send', is_flag=True)\n"
        "def load(send):\n"
        "    try:\n"
        "        if send:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        raise ValueError('could not determine the shape')\n"
        "    except KeyboardInterrupt:\n"
        "        raise ValueError('could not determine the shape of object type UntypedStorage')\n"
        "cli.main(sys.argv[1:])\n")
    import subprocess
    import sys

    interrupted = subprocess.run([sys.executable, str(script), "load", "--signal"], capture_output=True, text=True)
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1].startswith("Interrupted. Everything finished so far is saved")
    assert "Traceback" not in interrupted.stderr
    plain = subprocess.run([sys.executable, str(script), "load"], capture_output=True, text=True)
    assert plain.returncode == 1 and "ValueError: could not determine the shape" in plain.stderr
