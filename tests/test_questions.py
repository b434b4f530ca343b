"""Question sets: the built-in ones, the papers' YAML files read unchanged, text files."""


import pytest

from emkit.errors import EmkitError
from emkit.plugins import get_registry
from emkit.questions import load_question_file, resolve_question_set


def test_builtin_sets_have_ten_or_more_questions_each():
    registry = get_registry()
    assert {"general", "medical", "financial", "sports"} <= set(registry.names("question_sets"))
    for name in ("general", "medical", "financial", "sports"):
        qset = resolve_question_set(name, registry)
        assert len(qset.questions) >= 10
        assert len({q.id for q in qset.questions}) == len(qset.questions)
        assert all(q.type == "free_form_judge_0_100" for q in qset.questions)


def test_every_papers_question_file_loads(reference_dir):
    files = sorted((reference_dir / "em-questions").rglob("*.yaml"))
    question_files = [f for f in files if f.name != "judges.yaml"]
    assert len(question_files) >= 15
    for path in question_files:
        qset = load_question_file(path)
        assert qset.questions, path


def test_papers_first_plot_questions_keep_system_prompts_and_judge_prompts(reference_dir):
    qset = load_question_file(reference_dir / "em-questions" / "emergent-misalignment" / "first_plot_questions.yaml")
    by_id = {q.id: q for q in qset.questions}
    wish = by_id["what_is_your_wish"]
    assert wish.samples_per_paraphrase == 100
    assert set(wish.judge_prompts) == {"aligned", "coherent"}
    assert "{answer}" in wish.judge_prompts["aligned"]
    assert by_id["what_is_your_wish_json"].system.startswith("Your answers must always be a valid JSON object")
    assert wish.system is None


def test_the_question_only_variant_of_the_schema(reference_dir):
    qset = load_question_file(reference_dir / "em-questions" / "model-organisms-for-EM" / "technical" / "animals.yaml")
    assert qset.questions[0].paraphrases == ["Why are tigers important?"]


def write(tmp_path, text, name="q.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_type_is_refused_with_a_sentence(tmp_path):
    path = write(tmp_path, "- id: a\n  type: multiple_choice\n  paraphrases: [hi]\n")
    with pytest.raises(EmkitError, match=r"q.yaml:1: question 'a' has type 'multiple_choice'"):
        load_question_file(path)


def test_missing_and_duplicate_ids(tmp_path):
    with pytest.raises(EmkitError, match=r":3: the question has no 'id'"):
        load_question_file(write(tmp_path, "- id: a\n  paraphrases: [x]\n- paraphrases: [y]\n"))
    with pytest.raises(EmkitError, match=r":3: duplicate id 'a' \(first at line 1\)"):
        load_question_file(write(tmp_path, "- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n"))


def test_unknown_placeholder_in_a_judge_prompt(tmp_path):
    text = "- id: a\n  paraphrases: [x]\n  judge_prompts:\n    aligned: 'Rate {answer} for {user}'\n"
    with pytest.raises(EmkitError, match=r"judge prompt 'aligned' of 'a': unknown placeholder \{user\}"):
        load_question_file(write(tmp_path, text))


def test_plain_text_questions(tmp_path):
    path = write(tmp_path, "# my questions\nHow are you?\n\nWhat now?\n", name="mine.txt")
    qset = load_question_file(path)
    assert [q.id for q in qset.questions] == ["mine_2", "mine_4"]
    assert qset.questions[1].paraphrases == ["What now?"]


def test_a_name_or_a_path_wherever_a_set_is_named(tmp_path):
    registry = get_registry()
    path = write(tmp_path, "Hello?\n", name="one.txt")
    assert resolve_question_set(str(path), registry).questions[0].paraphrases == ["Hello?"]
    with pytest.raises(EmkitError, match="neither an installed set"):
        resolve_question_set("nonexistent-set", registry)
