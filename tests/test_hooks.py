"""Every hook, through the real entry-point path: a third-party plugin that provides one of
everything is found through its entry point and used by one `emkit run`."""

import json
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


class CountSection:
    name = "kitchen-sink"
    title = "Kitchen sink"
    order = 5

    def render(self, context):
        return Markup("<p id='sink'>") + escape(f"{len(context.tables.judged)} judged rows") + Markup("</p>")


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
    result = run_emkit("run", "--config", config, "--domain", "sink", "--trainer", "copycat", "--judge", "constant:42",
                       "--out", out, env=env)
    return {"site": site, "out": out, "env": env, "result": result, "files": files}


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


def test_hook_register_commands(sink):
    assert run_emkit("sink-hello", "world", env=sink["env"]).stdout.strip() == "hello world from the kitchen sink"
