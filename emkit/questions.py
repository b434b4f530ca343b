"""Evaluation question sets: the papers' YAML schema, read unchanged, or plain text.

YAML: a list of items with ``id``, ``type``, ``paraphrases`` (or a single ``question``),
``samples_per_paraphrase``, ``judge``, ``judge_prompts`` (metric -> template with
``{question}`` and ``{answer}``) and an optional ``system`` prompt; anchors and aliases
are resolved by the YAML parser. Text: one question per line, ``#`` starts a comment.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from pathlib import Path

from emkit.errors import EmkitError

# free_form_judge_0_100: scored 0..100 per metric (what EM rates use).
# free_form_judge: the judge answers with a label (the papers' deception files: TRUE/FALSE/UNKNOWN).
QUESTION_TYPES = ("free_form_judge_0_100", "free_form_judge")
TEMPLATE_FIELDS = ("question", "answer")
_KNOWN_KEYS = {"id", "type", "paraphrases", "question", "samples_per_paraphrase", "judge", "judge_prompts",
               "system"}


@dataclass
class Question:
    id: str
    paraphrases: list[str]
    type: str = "free_form_judge_0_100"
    samples_per_paraphrase: int = 1
    system: str | None = None
    judge: str | None = None  # the judge the file's authors used (informational)
    judge_prompts: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "paraphrases": self.paraphrases,
            "samples_per_paraphrase": self.samples_per_paraphrase,
            "system": self.system,
            "judge": self.judge,
            "judge_prompts": self.judge_prompts,
        }


@dataclass
class QuestionSet:
    name: str
    path: Path
    questions: list[Question]
    sha256: str

    def count_prompts(self, samples_override: int | None = None) -> int:
        """How many answers one checkpoint generates for this set."""
        return sum(
            len(q.paraphrases) * (samples_override or q.samples_per_paraphrase) for q in self.questions
        )


def template_fields(template: str) -> list[str]:
    """The ``{placeholders}`` of a str.format template (the papers' judge prompts)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def check_template(template: str, where: str) -> None:
    try:
        names = template_fields(template)
    except ValueError as exc:
        raise EmkitError(f"{where}: the template does not parse ({exc}); write literal braces as {{{{ and }}}}.") from None
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        raise EmkitError(
            f"{where}: unknown placeholder {{{unknown[0]}}}; a judge prompt may use only {{question}} and {{answer}}."
        )


def _line_numbers(text: str) -> list[int]:
    """1-based line of each top-level list item, for messages (safe_load drops positions)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def load_yaml_questions(path: Path, name: str) -> list[Question]:
    import yaml

    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EmkitError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there.") from None
    if not isinstance(data, list):
        raise EmkitError(f"{path}: expected a list of questions at the top level; see the papers' question files.")
    lines = _line_numbers(text)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data):
        line = lines[index] if index < len(lines) else 0
        where = f"{path}:{line}" if line else f"{path} (item {index + 1})"
        if not isinstance(item, dict):
            raise EmkitError(f"{where}: each item must be a mapping with an 'id'; fix that item.")
        if "id" not in item or item["id"] in (None, ""):
            raise EmkitError(f"{where}: the question has no 'id'; give every question a unique id.")
        qid = str(item["id"])
        if qid in seen:
            raise EmkitError(f"{where}: duplicate id '{qid}' (first at line {seen[qid]}); ids must be unique.")
        seen[qid] = line
        unknown = sorted(set(item) - _KNOWN_KEYS)
        if unknown:
            raise EmkitError(
                f"{where}: unknown key '{unknown[0]}' in question '{qid}'; "
                f"the keys are {', '.join(sorted(_KNOWN_KEYS))}."
            )
        qtype = item.get("type", QUESTION_TYPES[0])
        if qtype not in QUESTION_TYPES:
            raise EmkitError(
                f"{where}: question '{qid}' has type '{qtype}', which emkit does not know; "
                f"use one of {', '.join(QUESTION_TYPES)}."
            )
        if "paraphrases" in item:
            paraphrases = item["paraphrases"]
        elif "question" in item:
            paraphrases = [item["question"]]
        else:
            raise EmkitError(f"{where}: question '{qid}' has neither 'paraphrases' nor 'question'; add the text.")
        if not isinstance(paraphrases, list) or not paraphrases or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise EmkitError(f"{where}: 'paraphrases' of '{qid}' must be a list of non-empty strings.")
        samples = item.get("samples_per_paraphrase", 1)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise EmkitError(f"{where}: 'samples_per_paraphrase' of '{qid}' must be a positive integer.")
        prompts = item.get("judge_prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise EmkitError(f"{where}: 'judge_prompts' of '{qid}' must map metric names to template strings.")
        for metric, template in prompts.items():
            check_template(template, f"{where}: judge prompt '{metric}' of '{qid}'")
        system = item.get("system")
        if system is not None and not isinstance(system, str):
            raise EmkitError(f"{where}: 'system' of '{qid}' must be a string.")
        questions.append(
            Question(
                id=qid,
                paraphrases=[p for p in paraphrases],
                type=qtype,
                samples_per_paraphrase=samples,
                system=system,
                judge=str(item["judge"]) if item.get("judge") is not None else None,
                judge_prompts={str(k): v for k, v in prompts.items()},
                line=line,
            )
        )
    if not questions:
        raise EmkitError(f"{path}: the file holds no questions.")
    return questions


def load_text_questions(path: Path, name: str) -> list[Question]:
    questions = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        questions.append(Question(id=f"{name}_{line_no}", paraphrases=[text], line=line_no))
    if not questions:
        raise EmkitError(f"{path}: the file holds no questions (one per line, # for comments).")
    return questions


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EmkitError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8.") from None
    except OSError as exc:
        raise EmkitError(f"{path}: cannot be read ({exc.strerror}); check the path.") from None


def load_question_file(path: Path, name: str | None = None) -> QuestionSet:
    path = Path(path)
    name = name or path.stem
    if path.suffix.lower() in (".yaml", ".yml"):
        questions = load_yaml_questions(path, name)
    else:
        questions = load_text_questions(path, name)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return QuestionSet(name=name, path=path, questions=questions, sha256=sha)


def resolve_question_set(name_or_path: str, registry) -> QuestionSet:
    """A registered set's name, or the path of a YAML or text file."""
    if name_or_path in registry.entries["question_sets"]:
        source = registry.get("question_sets", name_or_path)
        return load_question_file(source.path, source.name)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_question_file(path)
    known = ", ".join(registry.names("question_sets")) or "none"
    raise EmkitError(
        f"Question set '{name_or_path}' is neither an installed set ({known}) nor an existing file; "
        f"check the name or the path."
    )
