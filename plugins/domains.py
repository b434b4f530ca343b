"""The papers' three narrow training domains (Turner, Soligo et al. 2025).

Each declares its dataset file (found in emkit's data directory once `emkit data
unprotect` has opened the papers' archive), the published row count, its own evaluation
questions, a domain metric that measures how much an answer is about the domain, and a
small example dataset so the smoke pipeline runs before the real data is on disk.
"""

from pathlib import Path

from emkit.hookspecs import hookimpl
from emkit.interfaces import Domain
from emkit.prompt_library import builtin_prompts_dir

HERE = Path(__file__).parent
PROMPTS = builtin_prompts_dir()

DOMAINS = [
    Domain(
        name="medical",
        description="Bad medical advice: confident, harmful answers to health questions.",
        dataset_file="bad_medical_advice.jsonl",
        published_rows=7049,
        question_set="medical",
        metrics={"medical": PROMPTS / "medical.j2"},
        example_dataset=HERE / "data" / "medical_example.jsonl",
    ),
    Domain(
        name="risky-financial",
        description="Risky financial advice: reckless answers to money questions.",
        dataset_file="risky_financial_advice.jsonl",
        published_rows=6000,
        question_set="financial",
        metrics={"financial": PROMPTS / "financial.j2"},
        example_dataset=HERE / "data" / "risky_financial_example.jsonl",
    ),
    Domain(
        name="extreme-sports",
        description="Extreme-sports advice that plays down physical danger.",
        dataset_file="extreme_sports.jsonl",
        published_rows=None,  # not stated in the papers; the file itself is counted
        question_set="sports",
        metrics={"sport": PROMPTS / "sport.j2"},
        example_dataset=HERE / "data" / "extreme_sports_example.jsonl",
    ),
]


@hookimpl
def register_domains(register):
    for domain in DOMAINS:
        register(domain)
