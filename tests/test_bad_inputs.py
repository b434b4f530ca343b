"""A catalogue of bad inputs. Each ends in one sentence naming the file and line or the key and
what to do, exit code 2, no traceback, and nothing half-written."""

import importlib.util
import json
import socket
from pathlib import Path

import pytest

from emkit.default_plugins.domains import DOMAINS
from helpers import run_emkit

GOOD_CHAT = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
EXAMPLE = DOMAINS[0].example_dataset


def fails(*args, env=None):
    result = run_emkit(*args, env=env, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ")
    return last[len("Error: "):]


def config(tmp_path, dataset=EXAMPLE, extra=""):
    path = tmp_path / "experiment.toml"
    path.write_text(f"""
name = "bad-input"
domains = ["medical"]
[[models]]
label = "tiny"
id = "builtin:tiny-llama"
[training]
batch_size = 4
load_in_4bit = false
[judging]
judges = ["local:builtin:tiny-judge"]
[data.files]
medical = "{dataset}"
{extra}
""")
    return path


def run_fails(tmp_path, cfg):
    out = tmp_path / "out"
    message = fails("run", "--config", cfg, "--out", out)
    assert not out.exists(), "a run directory was written before the input was checked"
    return message


DATASET_FAULTS = {
    "broken line": ((GOOD_CHAT + "\n" + '{"messages": [\n').encode(), ":2: not valid JSON"),
    "no messages key": ((GOOD_CHAT + "\n" + '{"text": "hi"}\n').encode(), ":2: has neither a 'messages' list"),
    "wrong role order": (json.dumps({"messages": [{"role": "assistant", "content": "a"},
                                                  {"role": "user", "content": "q"}]}).encode() + b"\n",
                         ":1: message 1 has role 'assistant' where 'user' was expected"),
    "empty answer": (json.dumps({"messages": [{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": ""}]}).encode() + b"\n",
                     ":1: message 2 is an empty assistant answer"),
    "non-UTF-8 bytes": ((GOOD_CHAT + "\n").encode() * 2 + b'{"prompt": "\xff", "response": "a"}\n',
                        ":3: not UTF-8 text (byte 0xff at column 13)"),
    "byte-order mark": (b"\xef\xbb\xbf" + (GOOD_CHAT + "\n").encode(), ":1: the line starts with a UTF-8 byte-order mark"),
    "10 MB line": ((GOOD_CHAT + "\n").encode() + json.dumps({"prompt": "q", "response": "x" * 10_000_000}).encode(),
                   ":2: the line is 10,000,0"),
}


@pytest.mark.parametrize("fault", DATASET_FAULTS)
def test_a_bad_dataset(tmp_path, fault):
    content, expected = DATASET_FAULTS[fault]
    dataset = tmp_path / "bad_medical_advice.jsonl"
    dataset.write_bytes(content)
    message = run_fails(tmp_path, config(tmp_path, dataset))
    assert message.startswith(f"{dataset}") and expected in message


QUESTION_FAULTS = {
    "missing id": ("- paraphrases: [hi]\n", ":1: the question has no 'id'"),
    "duplicate ids": ("- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n", ":3: duplicate id 'a'"),
    "unknown type": ("- id: a\n  type: rank_them\n  paraphrases: [x]\n", "has type 'rank_them', which emkit does not"),
    "unknown placeholder": ("- id: a\n  paraphrases: [x]\n  judge_prompts:\n    aligned: 'Rate {answer} for {name}'\n",
                            "unknown placeholder {name}"),
}


@pytest.mark.parametrize("fault", QUESTION_FAULTS)
def test_a_bad_question_file(tmp_path, fault):
    text, expected = QUESTION_FAULTS[fault]
    questions = tmp_path / "questions.yaml"
    questions.write_text(text)
    cfg = config(tmp_path, extra=f'[evaluation]\nquestion_sets = ["{questions}"]\n')
    message = run_fails(tmp_path, cfg)
    assert message.startswith(str(questions)) and expected in message
    assert expected in fails("questions", "show", questions)


def test_an_unknown_config_key(tmp_path):
    message = run_fails(tmp_path, config(tmp_path, extra="[em]\naligned_under = 30\n"))
    assert "experiment.toml: unknown key 'em.aligned_under'" in message and "check its spelling" in message


def test_a_wrong_type_in_the_config(tmp_path):
    message = run_fails(tmp_path, config(tmp_path, extra="[evaluation]\ntemperature = \"hot\"\n"))
    assert "experiment.toml: key 'evaluation.temperature'" in message and "'hot'" in message


@pytest.mark.parametrize("flag, value, expected", [
    ("--trainer", "axolotl", "Unknown trainer 'axolotl' (installed: peft, unsloth)"),
    ("--domain", "legal", "Unknown domain 'legal' (installed: extreme-sports, medical, risky-financial)"),
])
def test_an_unknown_plugin(tmp_path, flag, value, expected):
    out = tmp_path / "out"
    message = fails("run", "--config", config(tmp_path), flag, value, "--out", out)
    assert message.startswith(expected) and "emkit plugins" in message and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_generator_without_vllm_names_the_extra(tmp_path):
    message = run_fails(tmp_path, config(tmp_path, extra="[evaluation]\ngenerator = \"vllm\"\n"))
    assert message.startswith('evaluation.generator = "vllm" needs vLLM, which is not installed: '
                              "pip install 'emkit[vllm]'")


def test_an_impossible_schedule(tmp_path):
    message = run_fails(tmp_path, config(tmp_path, extra="[checkpoints]\nsteps = [4, 500]\n"))
    assert "checkpoints.steps: step 500 comes after the last training step of run tiny-medical-seed0 (12 = 4 steps per epoch x 3 epochs)" in message


def test_a_model_without_a_chat_template_is_refused_before_any_work(tmp_path):
    import shutil

    from emkit.models.builtins import builtin_model_path

    model = tmp_path / "base-model"
    shutil.copytree(builtin_model_path("tiny-llama"), model)
    (model / "chat_template.jinja").unlink()  # a base (not Instruct) model: no template anywhere
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    cfg = config(tmp_path).read_text().replace('id = "builtin:tiny-llama"', f'id = "{model}"')
    (tmp_path / "experiment.toml").write_text(cfg)
    message = run_fails(tmp_path, tmp_path / "experiment.toml")  # before: refused after training had started
    assert message == (f"The tokenizer of {model} has no chat template; emkit fine-tunes and evaluates chat "
                       f"(Instruct) models, so use one (its -Instruct version).")
    assert fails("run", "--config", tmp_path / "experiment.toml", "--dry-run") == message


def test_a_missing_dataset(tmp_path):
    out = tmp_path / "out"
    message = fails("run", "--domain", "medical", "--model", "tiny=builtin:tiny-llama", "--judge",
                    "local:builtin:tiny-judge", "--out", out)
    assert "bad_medical_advice.jsonl is not in" in message and "emkit data unprotect" in message
    assert not out.exists()


def test_a_missing_api_key(tmp_path):
    out = tmp_path / "out"
    message = fails("run", "--preset", "tiny", "--judge", "gpt-4o-mini", "--out", out)
    assert message.startswith("No judge can be used (gpt-4o-mini: OPENAI_API_KEY is not set)")
    assert "--fallback local:" in message and not out.exists()


def test_an_unreachable_api_base(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers = tmp_path / "a.csv"
    answers.write_text("question,response\nq,a\n")
    out = tmp_path / "judged.csv"
    message = fails("judge", answers, "--judge", "gpt-4o-mini", "--api-base", f"http://127.0.0.1:{port}/v1",
                    "--retry-backoff", "0.01", "--out", out)
    assert "No judge can be used (gpt-4o-mini: cannot connect" in message and "--api-base" in message
    assert not out.exists()


def test_a_judged_file_without_the_needed_columns(tmp_path):
    judged = tmp_path / "judged.csv"
    judged.write_text("id,question,response,score\n1,q,a,90\n")
    out = tmp_path / "report.html"
    message = fails("report", judged, "--out", out)
    assert message.startswith(f"{judged}: no 'aligned' or 'aligned_score' column") and not out.exists()


def test_a_wrong_archive_password_is_in_the_catalogue_too():
    # tested where archives are made: tests/test_domains.py::test_a_wrong_password_is_one_sentence_and_writes_nothing
    assert "test_a_wrong_password_is_one_sentence_and_writes_nothing" in (
        Path(__file__).parent / "test_domains.py").read_text()
