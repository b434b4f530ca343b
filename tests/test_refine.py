"""`emkit refine RUN` on the tiny offline run: checkpoints added, resumed from the kept state,
only the new ones generated and judged, resumable after a SIGKILL, and the same weights an
uninterrupted run with those checkpoints gets."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib

import pytest
import tomli_w

from helpers import run_emkit

pytestmark = pytest.mark.slow
TINY = ["--preset", "tiny", "--domain", "medical"]
RUN = "tiny-medical-seed0"
PER_CHECKPOINT = 40  # answers per checkpoint in the tiny preset (general and medical questions)


def rows(out, sql):
    conn = sqlite3.connect(f"file:{out / 'emkit.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def steps_of(out):
    return [s for (s,) in rows(out, f"SELECT step FROM checkpoints WHERE run_key = '{RUN}' ORDER BY step")]


def same_weights(a, b):
    import torch
    from safetensors.torch import load_file

    left = load_file(str(a / "adapter_model.safetensors"))
    right = load_file(str(b / "adapter_model.safetensors"))
    return left.keys() == right.keys() and all(torch.allclose(left[k], right[k], atol=1e-6) for k in left)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("refine")
    out = base / "run"
    run_emkit("run", *TINY, "--out", out, env={"EMKIT_JUDGE_CACHE": str(base / "cache.sqlite")})
    return out


def copy_of(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out, {"EMKIT_JUDGE_CACHE": str(tmp_path / "cache.sqlite")}


def test_given_steps_are_trained_from_the_nearest_kept_state_and_only_they_are_judged(trained, tmp_path):
    out, env = copy_of(trained, tmp_path)
    answers_before = set(rows(out, "SELECT answer_id, answer FROM answers"))
    judged_before = set(rows(out, "SELECT answer_id, judge, metric, score FROM judgments"))
    assert sorted(p.name for p in (out / "train_state" / RUN).glob("step-*")) == [
        "step-000002", "step-000004", "step-000008", "step-000012", "step-000016"]  # kept at every checkpoint

    result = run_emkit("refine", out, "--steps", "3,6", env=env)
    assert "resumed from its saved state at step 2" in result.stderr
    assert "done: 2 new checkpoints, 80 new answers, 160 new judgments" in result.stderr
    assert steps_of(out) == [2, 3, 4, 6, 8, 12, 16]
    answers_after = set(rows(out, "SELECT answer_id, answer FROM answers"))
    assert answers_before <= answers_after and len(answers_after) == len(answers_before) + 2 * PER_CHECKPOINT
    new_ids = {answer_id for answer_id, _ in answers_after - answers_before}
    steps = dict(rows(out, "SELECT answer_id, step FROM answers"))
    assert {steps[i] for i in new_ids} == {3, 6}
    judged_after = set(rows(out, "SELECT answer_id, judge, metric, score FROM judgments"))
    assert judged_before <= judged_after and {row[0] for row in judged_after - judged_before} == new_ids
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["checkpoints"]["refine"] == {RUN: [3, 6]}

    # the report's trajectories and the adapter table gain the new points
    import emkit

    tables = emkit.load(out)
    assert sorted(tables.steps.query("questions == 'all'")["step"].unique()) == [0, 2, 3, 4, 6, 8, 12, 16]
    assert sorted(tables.adapters["step"]) == [0, 2, 3, 4, 6, 8, 12, 16]
    assert {"adapter_trajectory.csv", "adapter_modules.csv", "change_points.csv"} <= {
        p.name for p in (out / "exports").iterdir()}
    report = (out / "report.html").read_text()
    assert "Where misalignment emerges" in report and "cluster 95%" in report

    # an uninterrupted run that had steps 3 and 6 planned from the start trains the same weights
    config = dict(saved, checkpoints={**saved["checkpoints"], "refine": {RUN: [3, 6]}})
    config_file = tmp_path / "planned.toml"
    config_file.write_text(tomli_w.dumps(config))
    planned = tmp_path / "planned"
    run_emkit("run", "--config", config_file, "--out", planned, env=env)
    for step in (3, 6):
        name = f"step-{step:06d}"
        assert same_weights(out / "adapters" / RUN / name, planned / "adapters" / RUN / name), step

    # a second refine at the same steps has nothing to do; a later `emkit run` keeps the added steps
    again = run_emkit("refine", out, "--steps", "3,6", env=env)
    assert "nothing to add" in again.stderr
    run_emkit("run", *TINY, "--out", out, env=env)
    assert steps_of(out) == [2, 3, 4, 6, 8, 12, 16]
    assert tomllib.loads((out / "config.toml").read_text())["checkpoints"]["refine"] == {RUN: [3, 6]}


def test_without_kept_state_it_trains_again_from_step_0_to_the_same_weights(trained, tmp_path):
    out, env = copy_of(trained, tmp_path)
    shutil.rmtree(out / "train_state")
    result = run_emkit("refine", out, "--steps", "5", env=env)
    assert "no saved state before step 5; training again from step 0" in result.stderr
    reference, reference_env = copy_of(trained, tmp_path / "ref")
    run_emkit("refine", reference, "--steps", "5", env=reference_env)  # from the state kept at step 4
    assert same_weights(out / "adapters" / RUN / "step-000005", reference / "adapters" / RUN / "step-000005")


def test_without_steps_it_looks_closer_where_em_jumps(trained, tmp_path):
    out, env = copy_of(trained, tmp_path)
    dry = run_emkit("refine", out, "--dry-run", "--points", "2", env=env)
    match = re.search(rf"{RUN}: would add steps ([\d, ]+) \(EM on the general questions goes from \d+% to \d+% "
                      rf"between steps (\d+) and (\d+)", dry.stdout)
    assert match, dry.stdout + dry.stderr
    added = [int(s) for s in match.group(1).split(", ")]
    low, high = int(match.group(2)), int(match.group(3))
    assert all(low < s < high for s in added)
    assert steps_of(out) == [2, 4, 8, 12, 16]  # a dry run trains nothing
    # the saved config runs as it is: refine shows it before anything runs
    assert f"refine runs the config saved in {out / 'config.toml'}:" in dry.stderr
    assert re.search(r"\n  models \S+=\S+; domains [\w, -]+; seeds [\d, ]+\n", dry.stderr), dry.stderr

    import emkit  # the change the dry run named is one the report lists

    table = emkit.load(out).change_points
    general = table[(table["questions"] == "general") & (table["scope"] == "run")]
    assert (low, high) in set(zip(general["step_before"], general["step_after"]))
    run_emkit("refine", out, "--points", "2", env=env)
    assert set(added) <= set(steps_of(out))


def test_a_killed_refine_is_finished_by_the_next_one(trained, tmp_path):
    out, env = copy_of(trained, tmp_path)
    before = rows(out, "SELECT COUNT(*) FROM answers")[0][0]
    process = subprocess.Popen([sys.executable, "-m", "emkit", "refine", str(out), "--steps", "3,5,7"],
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            made = rows(out, "SELECT COUNT(*) FROM answers")[0][0]
        except sqlite3.OperationalError:
            made = before
        if before < made < before + 3 * PER_CHECKPOINT:  # generating the new checkpoints' answers
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the refine ended before the moment to stop it"

    finished = run_emkit("refine", out, env=env)
    assert "finishing the checkpoints added earlier to tiny-medical-seed0" in finished.stderr
    assert steps_of(out) == [2, 3, 4, 5, 7, 8, 12, 16]
    assert rows(out, "SELECT COUNT(*) FROM answers")[0][0] == before + 3 * PER_CHECKPOINT
    assert rows(out, "SELECT COUNT(*) FROM judgments")[0][0] == 2 * (before + 3 * PER_CHECKPOINT)


@pytest.mark.parametrize("args, message", [
    (["--steps", "3,x"], "--steps: 'x' is not a step number"),
    (["--steps", "99"], "--steps 99: run tiny-medical-seed0 trains for 16 steps"),
    (["--run", "nope", "--steps", "3"], "--run nope: no such training run here; the runs are tiny-medical-seed0"),
])
def test_bad_refine_requests_are_one_sentence(trained, tmp_path, args, message):
    out, env = copy_of(trained, tmp_path)
    result = run_emkit("refine", out, *args, env=env, check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert steps_of(out) == [2, 4, 8, 12, 16]


def test_refining_what_is_not_a_run_says_so(tmp_path):
    result = run_emkit("refine", tmp_path, check=False)
    assert result.returncode != 0 and "is not an emkit run directory" in result.stderr


def test_refine_shows_the_shell_lines_and_remote_code_its_saved_config_runs(tmp_path):
    from emkit.config import ExperimentConfig
    from emkit.plugins import get_registry
    from emkit.refine import config_lines

    config = ExperimentConfig.model_validate({
        "trust_remote_code": True, "judging": {"judges": ["gpt-4o-mini"], "fallback": ["local:/models/judge"]},
        "execution": {"executor": "slurm", "slurm": {"setup": ["module load cuda/12.4", "source ~/env/bin/activate"]}}})
    lines = config_lines(config, tmp_path, get_registry())
    assert lines[0] == f"refine runs the config saved in {tmp_path / 'config.toml'}:"
    assert "judges gpt-4o-mini (fallback local:/models/judge)" in lines[2]
    assert "  trust_remote_code = true: code shipped with these models runs here" in lines
    assert lines[-3:] == ["  shell lines each slurm job runs first:",
                          "    module load cuda/12.4", "    source ~/env/bin/activate"]
