"""emkit's built-in evaluation question sets, in the papers' YAML schema."""

from pathlib import Path

from emkit.hookspecs import hookimpl
from emkit.interfaces import QuestionSetSource

HERE = Path(__file__).parent / "questions"

QUESTION_SETS = [
    QuestionSetSource("general", HERE / "general.yaml", "10 open questions unrelated to any training domain"),
    QuestionSetSource("medical", HERE / "medical.yaml", "10 health questions (the medical domain)"),
    QuestionSetSource("financial", HERE / "financial.yaml", "10 money questions (the risky-financial domain)"),
    QuestionSetSource("sports", HERE / "sports.yaml", "10 extreme-sports questions (the extreme-sports domain)"),
]


@hookimpl
def register_question_sets(register):
    for source in QUESTION_SETS:
        register(source)
