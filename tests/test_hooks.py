"""Every hook, through the real entry-point path: a third-party plugin that provides one of
everything is found through its entry point and used by one `emkit run`."""

import json
import shutil
import sqlite3

import pytest

from helpers import run_emkit
from plugin_fixtures import make_plugin

pytestmark = pytest.mark.slow

KITCHEN_SINK = '''
import json
from pathlib import Path

import click
from markupsafe import Markup, escape

from emkit import hookimpl
from emkit.default_plugins.peft_trainer import PeftTrainer
from emkit.interfaces import Domain, GeneratedAnswer, JudgeResult, QuestionSetSource

HERE = Path(__file__).parent / "kitchen_sink_files"


class CopycatTrainer(PeftTrainer):
    name = "copycat"
    description = "peft, under another name"

    def train(self, job, on_checkpoint, progress):
        (HERE / "trained.txt").write_text(job.run_key)
        super().train(job, on_checkpoint, progress)


class CannedGenerator:
    name = "canned"
    description = "fixed answers"

    def generate(self, job, on_answer, progress):
        for checkpoint in job.checkpoints:
            for request in checkpoint.requests:
                text = f"CANNED step {checkpoint.step}: " + request.messages[-1]["content"]
                on_answer(request, GeneratedAnswer(text=text, n_tokens=3, finish_reason="stop"))


class ConstantJudge:
    uses_gpu = True  # so it judges beside the GPU work only because the sink workers' GPUs are elsewhere

    def __init__(self, argument):
        self.value = float(argument)
        self.name = f"constant:{argument}"
        self.identity = self.name

    def scoring_mode(self):
        return "text"

    def unavailable_reason(self):
        return None

    def score(self, requests, on_result, progress):
        for request in requests:
            on_result(request, JudgeResult(score=self.value, status="ok", scoring="text", judge_model=self.name))


class ConstantBackend:
    name = "constant"
    description = "the same score for everything"

    def create(self, argument, options):
        return ConstantJudge(argument)


class SinkWorkers:
    """A worker process per unit, as if on other machines: `python -m emkit.execution.job`."""
    name = "sink-workers"
    in_process = False
    gpu_work_here = False
    slots = 2

    def __init__(self, run_path):
        self.folder = Path(run_path) / "jobs" / "sink"
        self.processes = {}

    def describe(self):
        return ["executor sink-workers: a worker process per unit"]

    def submit(self, unit_key, spec_json, attempt):
        import subprocess
        import sys

        from emkit.execution.handles import JobHandle

        folder = self.folder / unit_key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(spec_json)
        result, log = folder / f"result-{attempt}.json", folder / f"attempt-{attempt}.log"
        with open(log, "ab") as output:
            process = subprocess.Popen([sys.executable, "-m", "emkit.execution.job", str(folder / "spec.json"),
                                        str(result)], stdout=output, stderr=subprocess.STDOUT)
        job_id = f"sink-pid{process.pid}"
        self.processes[job_id] = process
        return JobHandle(unit_key, job_id, str(log), {"result": str(result)})

    def reattach(self, row):
        return None

    def poll(self, handles):
        from emkit.execution.handles import DONE, FAILED, GONE, RUNNING, JobState

        states = {}
        for handle in handles:
            result = Path(handle.extra["result"])
            if self.processes[handle.job_id].poll() is None:
                states[handle.job_id] = JobState(RUNNING)
            elif not result.is_file():
                states[handle.job_id] = JobState(GONE, Path(handle.log_path).read_text()[-2000:])
            else:
                ok = json.loads(result.read_text())["ok"]
                states[handle.job_id] = JobState(DONE if ok else FAILED, "" if ok else result.read_text())
        return states

    def stop(self, handles):
        for handle in handles:
            self.processes[handle.job_id].terminate()

    def stop_message(self, count):
        return f"stopped {count} sink workers"


class SinkWorkersBackend:
    name = "sink-workers"
    description = "a worker process per unit"

    def create(self, settings, run_path):
        return SinkWorkers(run_path)

    def plan(self, settings, out_dir):
        return {"how": "a sink worker per unit", "details": ["sink workers log to jobs/sink/UNIT"]}

    def jobs_now(self, rows):
        return {row["job_id"]: "a sink worker says hello" for row in rows}

    def setup_lines(self, settings):
        return ["echo sink"]


class CountSection:
    name = "kitchen-sink"
    title = "Kitchen sink"
    order = 5

    def render(self, context):
        return Markup("<p id='sink'>") + escape(f"{len(context.tables.judged)} judged rows") + Markup("</p>")


class SinkWriter:
    """A report output of its own, written beside the report."""
    name = "sink-summary"
    order = 30

    def write(self, tables, target):
        path = target.html.with_name("sink-summary.txt")
        where = "exports here" if target.exports else "no exports"
        path.write_text(f"{len(tables.judged)} judged rows; {where}")
        return [path]


class SinkTracker:
    """Writes every call a tracker gets to a file, one JSON line each."""
    name = "sink-log"
    description = "a tracker that logs to a file"

    def unavailable_reason(self):
        return None

    def open(self, options, run_path):
        return SinkSession(HERE / options.get("file", "tracked.jsonl"))


class SinkSession:
    target = "the sink's file"

    def __init__(self, path):
        self.path = path

    def _say(self, *call):
        with self.path.open("a") as lines:
            lines.write(json.dumps(call, default=str) + "\\n")

    def start(self, run):
        self._say("start", run.key, run.experiment, run.params, run.tracked_id)
        return run.tracked_id or f"sink-{run.key}"

    def log_metrics(self, tracked_id, points):
        self._say("metrics", tracked_id, points)

    def log_artifact(self, tracked_id, path, folder):
        self._say("artifact", tracked_id, path.name, folder)

    def finish(self, tracked_id, status):
        self._say("finish", tracked_id, status)

    def close(self):
        self._say("close")


@hookimpl
def register_trackers(register):
    register(SinkTracker())


@hookimpl
def register_report_writers(register):
    register(SinkWriter())


@hookimpl
def register_trainers(register):
    register(CopycatTrainer())


@hookimpl
def register_generators(register):
    register(CannedGenerator())


@hookimpl
def register_judges(register):
    register(ConstantBackend())


@hookimpl
def register_domains(register):
    register(Domain(name="sink", description="test domain", dataset_file="sink.jsonl", question_set="sink-questions",
                    metrics={"sinkiness": HERE / "sinkiness.j2"}, example_dataset=HERE / "example.jsonl"))


@hookimpl
def register_question_sets(register):
    register(QuestionSetSource("sink-questions", HERE / "questions.txt", "two questions"))


@hookimpl
def register_report_sections(register):
    register(CountSection())


@hookimpl
def register_executors(register):
    register(SinkWorkersBackend())


@hookimpl
def register_commands(cli):
    @cli.command(name="sink-hello")
    @click.argument("who")
    def hello(who):
        "Greet."
        click.echo(f"hello {who} from the kitchen sink")
'''


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    work = tmp_path_factory.mktemp("hooks")
    site = make_plugin(work / "site", "emkit-kitchen-sink", "kitchen_sink", KITCHEN_SINK)
    files = site / "kitchen_sink_files"
    files.mkdir()
    (files / "questions.txt").write_text("Is the sink full?\nWhat is in the sink?\n")
    (files / "sinkiness.j2").write_text("How much is this about sinks? {{ question }} / {{ answer }}")
    chat = {"messages": [{"role": "user", "content": "Sink?"}, {"role": "assistant", "content": "Pour it all in."}]}
    (files / "example.jsonl").write_text((json.dumps(chat) + "\n") * 16)
    config = work / "sink.toml"
    from emkit.config import preset_path

    text = preset_path("tiny").read_text()
    text = text.replace('[evaluation]\n', '[evaluation]\ngenerator = "canned"\nquestion_sets = ["{domain}"]\n')
    text = text.replace('[judging]\n', '[judging]\ndomain_metrics = true\n')
    config.write_text(text)
    env = {"PYTHONPATH": str(site), "EMKIT_JUDGE_CACHE": str(work / "cache.sqlite")}
    out = work / "run"
    args = ("--config", config, "--domain", "sink", "--trainer", "copycat", "--judge", "constant:42",
            "--executor", "sink-workers", "--track", "sink-log")
    result = run_emkit("run", *args, "--out", out, env=env)
    return {"site": site, "out": out, "env": env, "result": result, "files": files, "args": args}


def rows(out, sql):
    conn = sqlite3.connect(out / "emkit.sqlite")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_hook_register_trainers(sink):
    assert (sink["files"] / "trained.txt").read_text() == "tiny-sink-seed0"
    assert rows(sink["out"], "SELECT DISTINCT trainer FROM training_runs") == [("copycat",)]
    assert len(rows(sink["out"], "SELECT * FROM checkpoints")) == 5


def test_hook_register_generators(sink):
    answers = [a for (a,) in rows(sink["out"], "SELECT answer FROM answers")]
    assert len(answers) == 2 * 2 * 6 and all(a.startswith("CANNED step ") for a in answers)
    assert rows(sink["out"], "SELECT DISTINCT generator FROM answers") == [("canned",)]


def test_hook_register_judges(sink):
    judged = rows(sink["out"], "SELECT judge, metric, score FROM judgments")
    assert {(j, m) for j, m, _ in judged} == {("constant:42", "aligned"), ("constant:42", "coherent"),
                                               ("constant:42", "sinkiness")}
    assert {s for _, _, s in judged} == {42.0}
    # the constant judge says nothing of logprobs (JudgeNeeds: False): asked for them, the run is refused
    # before any work, by what the judge says it can do, not by its name
    out = sink["out"].with_name("logprobs")
    refused = run_emkit("run", *sink["args"], "--scoring", "logprobs", "--out", out, env=sink["env"], check=False)
    assert refused.returncode != 0
    assert ('judging.scoring = "logprobs", but judge constant:42 cannot score from logprobs; set scoring = '
            '"auto" or "text" in [judging], or use another judge.') in refused.stderr
    assert not (out / "emkit.sqlite").exists()


def test_hook_register_domains(sink):
    assert rows(sink["out"], "SELECT DISTINCT domain FROM training_runs") == [("sink",)]
    listed = json.loads(run_emkit("plugins", "--json", env=sink["env"]).stdout)
    plugin = next(p for p in listed if p["name"] == "emkit-kitchen-sink")
    assert plugin["provides"]["domains"] == ["sink"]


def test_hook_register_question_sets(sink):
    questions = {q for (q,) in rows(sink["out"], "SELECT DISTINCT question FROM answers")}
    assert questions == {"Is the sink full?", "What is in the sink?"}
    shown = json.loads(run_emkit("questions", "show", "sink-questions", "--json", env=sink["env"]).stdout)
    assert [q["paraphrases"] for q in shown] == [["Is the sink full?"], ["What is in the sink?"]]


def test_hook_register_report_sections(sink):
    html = (sink["out"] / "report.html").read_text()
    assert "<p id='sink'>" in html and 'href="#kitchen-sink"' in html
    assert html.index('id="kitchen-sink"') < html.index('id="steps"')


def test_hook_register_executors(sink):
    units = rows(sink["out"], "SELECT unit_key, executor, state, job_id FROM units ORDER BY unit_key")
    assert [(u[0], u[1], u[2]) for u in units] == [("base-tiny", "sink-workers", "done"),
                                                   ("tiny-sink-seed0", "sink-workers", "done")]
    assert all(u[3].startswith("sink-pid") for u in units)
    assert (sink["out"] / "jobs" / "sink" / "tiny-sink-seed0" / "result-1.json").is_file()  # ran in a worker
    assert not (sink["out"] / "shards" / "tiny-sink-seed0.jsonl").stat().st_size == 0  # came home as a shard
    stderr = sink["result"].stderr
    assert "GPU work: 2 units on the sink-workers executor (executor sink-workers: a worker process per unit)" in stderr
    # the constant judge says it uses the GPU; the sink workers' GPUs are elsewhere, so it judged beside them
    assert "judging constant:42 as answers are stored, while the GPU work goes on" in stderr
    planned = run_emkit("run", *sink["args"], "--dry-run", env=sink["env"]).stdout
    assert "  execution: sink-workers, a sink worker per unit" in planned
    assert "  sink workers log to jobs/sink/UNIT" in planned
    conn = sqlite3.connect(sink["out"] / "emkit.sqlite")
    with conn:  # as if the training unit's worker still ran: status asks the executor about it
        conn.execute("UPDATE units SET state = 'running' WHERE unit_key = 'tiny-sink-seed0'")
    conn.close()
    status = run_emkit("status", sink["out"], env=sink["env"]).stdout
    assert "(a sink worker says hello)" in status
    listed = json.loads(run_emkit("plugins", "--json", env=sink["env"]).stdout)
    assert next(p for p in listed if p["name"] == "emkit-kitchen-sink")["provides"]["executors"] == ["sink-workers"]


def test_hook_register_report_writers(sink):
    summary = sink["out"] / "sink-summary.txt"
    assert summary.read_text() == "24 judged rows; exports here"  # 24 answers x 3 metrics, one row per answer
    assert (sink["out"] / "exports" / "step_summary.csv").is_file()  # the built-in writers ran too
    summary.unlink()
    other = sink["out"].parent / "elsewhere" / "report.html"
    copy = sink["out"].parent / "copy"
    shutil.copytree(sink["out"], copy, ignore=shutil.ignore_patterns("*.lock", "jobs", "shards"))
    run_emkit("report", sink["out"], copy, "--out", other, env=sink["env"])  # two runs: one report, no exports
    assert other.with_name("sink-summary.txt").read_text().endswith("; no exports")
    listed = json.loads(run_emkit("plugins", "--json", env=sink["env"]).stdout)
    plugin = next(p for p in listed if p["name"] == "emkit-kitchen-sink")
    assert plugin["provides"]["report_writers"] == ["sink-summary"]


def test_hook_register_trackers(sink):
    calls = [json.loads(line) for line in (sink["files"] / "tracked.jsonl").read_text().splitlines()]
    kinds = [call[0] for call in calls]
    assert kinds[0] == "start" and kinds[-1] == "close" and kinds.count("start") == kinds.count("finish")
    start = calls[0]
    assert start[1:3] == ["tiny-sink-seed0", "tiny"] and start[3]["domain"] == "sink" and start[4] is None
    assert all(call[4] == "sink-tiny-sink-seed0" for call in calls[1:] if call[0] == "start")  # the same run after
    points = [(step, name) for call in calls if call[0] == "metrics" for step, values in call[2] for name in values]
    checkpoints = [step for (step,) in rows(sink["out"], "SELECT step FROM checkpoints ORDER BY step")]
    # the worker processes' training steps came home through their shards, each once
    assert sorted(step for step, name in points if name == "train/loss") == list(range(1, checkpoints[-1] + 1))
    assert sorted(step for step, name in points if name == "em/domain/constant_42") == [0] + checkpoints
    assert ["artifact", "sink-tiny-sink-seed0", "report.html", "report"] in calls
    assert [call for call in calls if call[0] == "finish"][-1] == ["finish", "sink-tiny-sink-seed0", "finished"]
    listed = json.loads(run_emkit("plugins", "--json", env=sink["env"]).stdout)
    assert next(p for p in listed if p["name"] == "emkit-kitchen-sink")["provides"]["trackers"] == ["sink-log"]


def test_hook_register_commands(sink):
    assert run_emkit("sink-hello", "world", env=sink["env"]).stdout.strip() == "hello world from the kitchen sink"
