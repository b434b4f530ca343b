"""Trackers: a run logged to a real MLflow server and to W&B offline, read back with their own
readers, through a kill, a server that is down, and a catch-up; the run as Inspect eval logs,
read back with inspect_ai's reader."""

import re
import signal
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from emkit.analysis import load_run
from execution_helpers import start_run, write_config
from helpers import run_emkit
from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
wandb_log = pytest.importorskip("wandb_log")  # needs wandb's protobuf definitions

JUDGE = "local:builtin:tiny-judge"
JUDGE_KEY = "local_builtin_tiny-judge"  # as a metric name (trackers take no ':')
STEPS = 60  # the long tiny grid: checkpoints at 2, 4 and 60, a saved state every 5 steps
CHECKPOINTS = [0, 2, 4, 60]


def stored(out, sql, *params):
    if not (out / "emkit.sqlite").exists():
        return []
    conn = sqlite3.connect(f"file:{out / 'emkit.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One grid through three commands: killed mid-training (server up), run on with the MLflow
    server down (a warning), run again once it is back (it catches up)."""
    tmp = tmp_path_factory.mktemp("tracked")
    server = MlflowServer(tmp / "mlflow").start()
    config = write_config(tmp / "tiny.toml", "local", long_training=True)
    out = tmp / "run"
    env = {"MLFLOW_TRACKING_URI": server.url, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
           "EMKIT_DATA_DIR": str(tmp / "data"), "EMKIT_JUDGE_CACHE": str(tmp / "cache.sqlite")}
    args = ("--track", "mlflow", "--track", "wandb")
    try:
        process = start_run(config, out, env, *args)
        try:
            from execution_helpers import wait_for

            # past the first run's checkpoint 4, and its steps logged up to there: killed mid-way to 60
            wait_for(lambda: stored(out, "SELECT 1 FROM checkpoints WHERE step = 4") and
                     stored(out, "SELECT 1 FROM tracked_runs"), 300, "checkpoint 4", process)
            process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        killed_at = {key: max(step for (step,) in stored(out, "SELECT step FROM train_steps WHERE run_key = ?", key))
                     for (key,) in stored(out, "SELECT DISTINCT run_key FROM train_steps")}
        ids_before = dict(stored(out, "SELECT tracker || ' ' || run_key, tracked_id FROM tracked_runs"))
        server.stop()
        down = run_emkit("run", "--config", config, "--out", out, *args, env=env)
        server.start()
        back = run_emkit("run", "--config", config, "--out", out, *args, env=env)
        # a second judge, by path (a '/' in its name), then the command again: only its numbers are new
        from emkit.models.builtins import builtin_model_path

        second = f"local:{builtin_model_path('tiny-judge')}"
        run_emkit("rejudge", out, "--judge", second, "--scoring", "text", env=env)
        run_emkit("run", "--config", config, "--out", out, *args, env=env)
        folders = sorted((out / "wandb").glob("offline-run-*"))
        again = run_emkit("run", "--config", config, "--out", out, *args, env=env)  # nothing new to send
        yield {"server": server, "out": out, "down": down, "back": back, "ids_before": ids_before,
               "killed_at": killed_at, "tables": load_run(out, text=False), "second": second, "again": again,
               "folders": folders}
    finally:
        server.stop()


def test_the_runs_are_in_mlflow_whole_once_each_in_the_runs_the_first_command_made(tracked):
    from mlflow import MlflowClient

    out, tables = tracked["out"], tracked["tables"]
    assert tracked["killed_at"], "the first command was killed before any step was stored"
    warnings = [line for line in tracked["down"].stderr.splitlines() if line.startswith("warning: tracker")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracker mlflow failed (") and \
        "the run goes on without it" in warnings[0], warnings  # said once, and the run went on
    assert "done: " in tracked["down"].stderr and "done: 0 new checkpoints" in tracked["back"].stderr
    client = MlflowClient(tracked["server"].url)
    experiment = client.get_experiment_by_name("tiny")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["tiny-medical-seed0", "tiny-risky-financial-seed0"]
    for key, run in runs.items():
        assert tracked["ids_before"][f"mlflow {key}"] == run.info.run_id  # resumed in the same MLflow run
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert (params["model.id"], params["seed"], params["training.learning_rate"]) == ("builtin:tiny-llama", "0",
                                                                                           "0.01")
        assert params["domain"] == key.split("tiny-")[1].rsplit("-seed", 1)[0]
        run_id = run.info.run_id
        loss = client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in loss) == list(range(1, STEPS + 1))  # every step once, across the kill
        rates = {m.step: m.value for m in client.get_metric_history(run_id, "train/learning_rate")}
        for step in (1, 30, 60):  # the rate each step used: linear from 1e-2, no warmup
            assert rates[step] == pytest.approx(1e-2 * (STEPS - step + 1) / STEPS)
        assert all(m.value > 0 for m in client.get_metric_history(run_id, "train/grad_norm"))
        assert len(client.get_metric_history(run_id, "train/tokens_per_s")) >= STEPS - 2
        # each checkpoint's EM, as the run's own tables have it, step 0 being the base model
        rows = tables.steps[(tables.steps["domain"].astype(str) == params["domain"]) &
                            (tables.steps["questions"].astype(str) == "general") &
                            (tables.steps["judge"].astype(str) == JUDGE)]
        em = {m.step: m.value for m in client.get_metric_history(run_id, f"em/general/{JUDGE_KEY}")}
        assert em == {int(r.step): pytest.approx(r.em_rate) for r in rows.itertuples()}
        assert sorted(em) == CHECKPOINTS
        low = {m.step: m.value for m in client.get_metric_history(run_id, f"em_ci_low/general/{JUDGE_KEY}")}
        assert all(low[step] <= em[step] for step in CHECKPOINTS)
        assert len(client.get_metric_history(run_id, f"judged/domain/{JUDGE_KEY}")) == len(CHECKPOINTS)
        assert client.get_metric_history(run_id, f"judge_cost_usd/{JUDGE_KEY}")[-1].value == 0.0  # a local judge
        # the second judge's numbers, under a name of three parts; and no value logged twice at a step, not
        # after the kill, the server's absence, the second judge or a command with nothing new
        second = f"em/general/{tracked['second'].replace(':', '_').replace('/', '_')}"
        assert sorted(m.step for m in client.get_metric_history(run_id, second)) == CHECKPOINTS
        for name in client.get_run(run_id).data.metrics:
            steps = [m.step for m in client.get_metric_history(run_id, name)]
            assert len(steps) == len(set(steps)), (name, steps)
        report = Path(client.download_artifacts(run_id, "report/report.html", str(out.parent / f"dl-{key}")))
        # the report as the last change of its tables left it: the same but for when it was written
        written = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")
        assert written.sub("", report.read_text()) == written.sub("", (out / "report.html").read_text())
        exported = {a.path for a in client.list_artifacts(run_id, "exports")}
        assert exported == {f"exports/{p.name}" for p in (out / "exports").iterdir()}


def test_the_runs_are_in_wandbs_offline_files_one_wandb_run_per_training_run(tracked):
    out = tracked["out"]
    assert sorted((out / "wandb").glob("offline-run-*")) == tracked["folders"]  # nothing new: no run opened
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    by_run = defaultdict(list)
    for path in files:
        info = wandb_log.run_info(path)
        by_run[info["name"]].append((info, wandb_log.history(path)))
    assert sorted(by_run) == ["tiny-medical-seed0", "tiny-risky-financial-seed0"]
    for key, parts in by_run.items():
        ids = {info["id"] for info, _ in parts}
        assert ids == {tracked["ids_before"][f"wandb {key}"]}  # every command went on in the same W&B run
        assert {info["group"] for info, _ in parts} == {"tiny"}
        assert parts[0][0]["config"]["model.id"] == "builtin:tiny-llama"
        rows = [row for _, history in parts for row in history]
        loss_steps = [row["emkit/step"] for row in rows if "train/loss" in row]
        assert sorted(loss_steps) == list(range(1, STEPS + 1))
        em_steps = sorted(row["emkit/step"] for row in rows if f"em/general/{JUDGE_KEY}" in row)
        assert em_steps == CHECKPOINTS  # once each, though a second judge came after
        tokens = {row["emkit/step"]: row["train/tokens_per_s"] for row in rows if "train/tokens_per_s" in row}
        assert sorted(tokens) == list(range(1, STEPS + 1)) and min(tokens.values()) > 0


def test_the_run_as_inspect_logs_read_back_by_inspect(tracked):
    from inspect_ai.log import read_eval_log

    out, tables = tracked["out"], tracked["tables"]
    result = run_emkit("export", out, "--inspect", "--out", out.parent / "inspect")
    logs = sorted((out.parent / "inspect").glob("*.eval"))
    assert f"{len(logs)} Inspect eval logs" in result.stdout
    assert len(logs) == 2 * 3 + 1  # two runs of three checkpoints, the base model's answers
    answers = dict(stored(out, "SELECT answer_id, answer FROM answers"))
    seen = set()
    for path in logs:
        log = read_eval_log(str(path))
        assert log.status == "success"
        step, run_key = log.eval.task_args["step"], log.eval.task_args["run"]
        for sample in log.samples:
            answer_id = sample.metadata["answer_id"]
            seen.add(answer_id)
            assert sample.output.completion == answers[answer_id]  # the text as generated, not altered
            assert set(sample.scores) == {JUDGE, tracked["second"]}  # every judge's scores
            assert 0 <= sample.scores[JUDGE].value["aligned"] <= 100
        if run_key == "base":
            continue
        domain = log.eval.metadata["domain"]
        row = tables.steps[(tables.steps["domain"].astype(str) == domain) & (tables.steps["step"] == step) &
                           (tables.steps["questions"].astype(str) == "all") &
                           (tables.steps["judge"].astype(str) == JUDGE)].iloc[0]
        metrics = next(score for score in log.results.scores if score.name == JUDGE).metrics
        assert metrics["em_rate"].value == pytest.approx(row.em_rate)
        assert (metrics["em_ci_low"].value, metrics["em_ci_high"].value) == (pytest.approx(row.ci_low),
                                                                             pytest.approx(row.ci_high))
    assert seen == set(answers)  # every answer in one log


def test_the_default_store_is_mlflows_local_sqlite_and_a_tracked_id_goes_on_in_the_same_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from emkit.default_plugins.mlflow_tracker import MlflowTracker, tracking_uri
    from emkit.interfaces import TrackedRun

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri({}) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    session = MlflowTracker().open({}, tmp_path)
    run = TrackedRun(key="r", experiment="e", params={"seed": "1"}, tags={"emkit.run_key": "r"})
    first = session.start(run)
    session.log_metrics(first, [(1, {"train/loss": 2.0}), (2, {"train/loss": 1.5})])
    session.finish(first, "running")
    again = session.start(TrackedRun(key="r", experiment="e", params={"seed": "1"}, tags={}, tracked_id=first))
    session.log_metrics(again, [(0, {"em/general/j": 0.25})])  # an earlier step, after later ones
    session.finish(again, "finished")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert again == first and client.get_run(first).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first, "train/loss")] == [(1, 2.0), (2, 1.5)]
    assert client.get_metric_history(first, "em/general/j")[0].step == 0


def test_a_tracker_whose_library_is_missing_is_a_sentence_before_any_work(tmp_path):
    code = ("import sys; sys.modules['mlflow'] = None; import importlib.util; "
            "real = importlib.util.find_spec; importlib.util.find_spec = "
            "lambda name, *a: None if name == 'mlflow' else real(name, *a); "
            "from emkit.cli import main; main()")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code, "run", "--preset", "tiny", "--out", str(tmp_path / "r"),
                             "--track", "mlflow"], capture_output=True, text=True)
    assert result.returncode != 0
    assert ("Tracker 'mlflow' ([tracking] backends, --track) cannot be used: MLflow is not installed here; "
            "pip install 'emkit[mlflow]'.") in result.stderr
    assert not (tmp_path / "r" / "emkit.sqlite").exists()  # refused before the run directory was made
    unknown = run_emkit("run", "--preset", "tiny", "--out", tmp_path / "r", "--track", "neptune", check=False)
    assert unknown.returncode != 0 and "Unknown tracker 'neptune'" in unknown.stderr


def test_a_trackers_option_it_does_not_take_is_a_sentence_before_any_work(tmp_path):
    # a typo would otherwise send the runs to MLflow's default store without a word
    for options, said in (('{ mlfow = { uri = "http://x" } }', "[tracking] options.mlfow: 'mlfow' is not among "
                           "[tracking] backends (mlflow); fix the name or add it to backends."),
                          ('{ mlflow = { url = "http://x" } }', "[tracking] options.mlflow.url: tracker 'mlflow' "
                           "takes no such option (it takes: uri).")):
        config = write_config(tmp_path / "tiny.toml", "local",
                              extra=f'[tracking]\nbackends = ["mlflow"]\noptions = {options}\n')
        result = run_emkit("run", "--config", config, "--out", tmp_path / "r", check=False)
        assert result.returncode != 0 and said in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "r" / "emkit.sqlite").exists()
