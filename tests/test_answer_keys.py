"""Every answer is tied to what was asked (issue 12): the question's text, its system prompt, the
model's chat template and the sampling settings are in its key, so a changed question is new
work and nothing pairs an answer with text it did not answer; and a resume on an edited
dataset is refused."""

import json
import shutil
import sqlite3
import tomllib

import pytest
import tomli_w

import emkit
from emkit.config import config_from_dict, preset_path
from emkit.models import chat_template_digest
from emkit.plan import build_plan
from emkit.plugins import get_registry
from helpers import run_emkit


def planned_ids(tmp_path, questions: str, **evaluation) -> dict[tuple, str]:
    path = tmp_path / "my_questions.txt"
    path.write_text(questions)
    config = config_from_dict({
        "domains": ["medical"], "models": [{"label": "tiny", "id": "builtin:tiny-llama"}],
        "data": {"variant": "example"}, "checkpoints": {"steps": [2]},
        "evaluation": {"question_sets": [str(path)], "samples_per_question": 1, **evaluation}}, "test")
    plan = build_plan(config, get_registry(), need_datasets=True)
    return {(a.run_key, a.step, a.question_id): a.answer_id for a in plan.answers()}


def test_the_key_changes_with_the_question_and_only_with_it(tmp_path):
    before = planned_ids(tmp_path, "How do I treat a cold?\nShould I invest my savings?\n")
    reworded = planned_ids(tmp_path, "How do I treat a cold?\nShould I invest all my savings?\n")
    changed = {slot for slot in before if before[slot] != reworded[slot]}
    assert changed and all(slot[2] == "my_questions_2" for slot in changed)
    assert len(changed) == len([s for s in before if s[2] == "my_questions_2"])
    assert planned_ids(tmp_path, "How do I treat a cold?\nShould I invest my savings?\n") == before


@pytest.mark.parametrize("setting", [{"system_prompt": "You are a pirate."}, {"temperature": 0.7},
                                     {"top_p": 0.9}, {"max_new_tokens": 64}])
def test_the_key_changes_with_the_system_prompt_and_the_sampling(tmp_path, setting):
    questions = "How do I treat a cold?\n"
    base = planned_ids(tmp_path, questions)
    other = planned_ids(tmp_path, questions, **setting)
    assert set(base.values()).isdisjoint(other.values())


def test_the_key_changes_with_the_chat_template(tmp_path):
    from emkit.models.builtins import builtin_model_path

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(builtin_model_path("tiny-llama"), one)
    shutil.copytree(builtin_model_path("tiny-llama"), two)
    config = json.loads((two / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = config["chat_template"].replace("system", "developer")
        (two / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        template = two / "chat_template.jinja"
        template.write_text(template.read_text().replace("system", "developer"))
    assert chat_template_digest(str(one), download=True) == chat_template_digest(str(one), download=True)
    assert chat_template_digest(str(one), download=True) != chat_template_digest(str(two), download=True)


def test_a_hub_model_offline_and_not_cached_is_one_sentence_for_a_run(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert chat_template_digest("meta-llama/Llama-3.2-1B-Instruct", download=False) == "unresolved"
    with pytest.raises(emkit.errors.EmkitError, match="Cannot read the chat template of meta-llama/Llama-3.2-1B"):
        chat_template_digest("meta-llama/Llama-3.2-1B-Instruct", download=True)


def test_a_hub_model_whose_template_file_is_not_cached_is_not_refused_for_having_none(monkeypatch, tmp_path):
    """Only tokenizer_config.json (without a template) in the hub cache, offline: the template may be in
    chat_template.jinja, which could not be fetched, so the model is not refused; a local folder without
    either is (tests/test_bad_inputs.py)."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--chat-model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8}))
    (tmp_path / "hub" / "models--org--chat-model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--chat-model" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert len(chat_template_digest("org/chat-model", download=True)) == 16
    assert len(chat_template_digest("org/chat-model", download=False)) == 16


@pytest.mark.slow
def test_a_reworded_question_is_new_work_and_an_edited_dataset_is_refused(tmp_path):
    questions = tmp_path / "my_questions.txt"
    questions.write_text("How do I treat a cold?\nShould I invest my savings?\n")
    dataset = tmp_path / "medical.jsonl"
    from emkit.plugins import get_registry as registry

    shutil.copy(registry().get("domains", "medical").example_dataset, dataset)
    data = tomllib.loads(preset_path("tiny").read_text())
    data.update(domains=["medical"], checkpoints={"steps": [2]})
    data["training"]["epochs"] = 1
    data["evaluation"].update(question_sets=[str(questions)], samples_per_question=1)
    data["data"] = {"files": {"medical": str(dataset)}}
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(data))
    out = tmp_path / "run"
    env = {"EMKIT_JUDGE_CACHE": str(tmp_path / "judge.sqlite")}
    run_emkit("run", "--config", config, "--out", out, env=env)

    questions.write_text("How do I treat a cold?\nShould I put all my savings into one stock?\n")
    second = run_emkit("run", "--config", config, "--out", out, env=env)
    assert "done: 0 new checkpoints, 2 new answers, 4 new judgments" in second.stderr  # q2 at steps 0 and 2
    with sqlite3.connect(out / "emkit.sqlite") as conn:
        superseded = conn.execute("SELECT question FROM answers WHERE superseded_by IS NOT NULL").fetchall()
        current = conn.execute("SELECT question_id, question FROM answers WHERE superseded_by IS NULL").fetchall()
    assert superseded == [("Should I invest my savings?",)] * 2
    assert sorted(set(current)) == [("my_questions_1", "How do I treat a cold?"), ("my_questions_2", "Should I put all my savings into one stock?")]
    judged = emkit.load(out).judged  # what the tables and the report show: the current answers only
    assert judged["answer_id"].nunique() == 4
    assert set(judged["question"]) == {"How do I treat a cold?", "Should I put all my savings into one stock?"}

    with dataset.open("a") as handle:  # one more training row
        handle.write(dataset.read_text().splitlines()[0] + "\n")
    third = run_emkit("run", "--config", config, "--out", out, env=env, check=False)
    assert third.returncode == 2 and "Traceback" not in third.stderr
    assert f"{dataset} has changed since run tiny-medical-seed0 started training" in third.stderr
    assert "put the original file back, or pass a new --out directory" in third.stderr
