"""Expand a config into concrete units of work, each with a stable key.

A plan knows every training run (model x domain x seed) with its checkpoint steps, every
baseline (the untouched base model, step 0), every answer to generate and every judge
call, without touching a model. `emkit run --dry-run` prints it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from emkit.config import DOMAIN_PLACEHOLDER, ExperimentConfig, ModelSpec
from emkit.datasets import count_rows, load_chats
from emkit.locations import data_dir
from emkit.errors import EmkitError
from emkit.interfaces import Domain
from emkit.questions import QuestionSet, resolve_question_set
from emkit.schedule import CheckpointSchedule

BASE = "base"  # the run key of a baseline: the model as downloaded
# The seed in a baseline answer's key. A baseline is the untouched model, so no training seed
# belongs to it: one baseline per model, question set and sampling settings serves every seed,
# and adding or removing a seed never asks for step 0 again.
BASELINE_SEED = 0


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def run_key(model: ModelSpec, domain: str, seed: int) -> str:
    return f"{safe_name(model.label)}-{safe_name(domain)}-seed{seed}"


def answer_id(model_label: str, run: str, step: int, question_set: str, question_id: str,
              paraphrase: int, sample: int, seed: int, asked: str) -> str:
    """The key of one sampled answer: model, checkpoint, question, sample index and seed, and
    ``asked``: what exactly was asked (prompt_digest). Reword a question, change its system
    prompt, the model's chat template or the sampling, and the answer is new work: no answer
    is ever paired with a prompt it did not answer."""
    key = "\x1f".join(map(str, (model_label, run, step, question_set, question_id, paraphrase, sample, seed, asked)))
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def sampling_key(evaluation) -> str:
    """The settings an answer's text depends on, besides its prompt."""
    return (f"generator={evaluation.generator};temperature={evaluation.temperature!r};top_p={evaluation.top_p!r};"
            f"max_new_tokens={evaluation.max_new_tokens}")


def prompt_digest(system: str | None, question: str, template: str, sampling: str) -> str:
    digest = hashlib.sha256()
    for part in ("" if system is None else "S" + system, question, template, sampling):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def sample_seed(answer: str) -> int:
    return int(answer[:15], 16)  # 60 bits of the key: independent of batching and order


@dataclass
class DatasetInfo:
    path: Path | None
    rows: int
    source: str  # "file" or "published"
    chats: list | None = None  # validated, when the plan is for a real run


@dataclass
class TrainingRunPlan:
    key: str
    model: ModelSpec
    domain: Domain
    seed: int
    dataset: DatasetInfo
    schedule: CheckpointSchedule
    question_sets: list[str]
    domain_question_set: str | None = None  # the set of question_sets that is the domain's own


@dataclass
class BaselinePlan:
    model: ModelSpec
    question_sets: list[str]
    seed: int = BASELINE_SEED


@dataclass
class PlannedAnswer:
    answer_id: str
    model_label: str
    run_key: str  # BASE for step 0
    step: int
    question_set: str
    question_id: str
    paraphrase_index: int
    sample_index: int
    seed: int
    system: str | None
    question: str

    @property
    def sample_seed(self) -> int:
        return sample_seed(self.answer_id)


@dataclass
class Plan:
    config: ExperimentConfig
    runs: list[TrainingRunPlan]
    baselines: list[BaselinePlan]
    question_sets: dict[str, QuestionSet]
    domains: dict[str, Domain]
    notes: list[str] = field(default_factory=list)
    chat_templates: dict[str, str] = field(default_factory=dict)  # model label -> chat_template_digest

    # -- answers -------------------------------------------------------------------
    def _answers_for(self, model_label: str, run: str, step: int, set_names: list[str], seed: int):
        samples_override = self.config.evaluation.samples_per_question
        default_system = self.config.evaluation.system_prompt or None
        sampling = sampling_key(self.config.evaluation)
        template = self.chat_templates.get(model_label, "unresolved")
        for set_name in set_names:
            qset = self.question_sets[set_name]
            for question in qset.questions:
                system = question.system if question.system is not None else default_system
                for p_index, text in enumerate(question.paraphrases):
                    asked = prompt_digest(system, text, template, sampling)
                    for s_index in range(samples_override or question.samples_per_paraphrase):
                        yield PlannedAnswer(
                            answer_id=answer_id(model_label, run, step, qset.name, question.id, p_index, s_index,
                                                seed, asked),
                            model_label=model_label, run_key=run, step=step, question_set=qset.name,
                            question_id=question.id, paraphrase_index=p_index, sample_index=s_index, seed=seed,
                            system=system, question=text,
                        )

    def answers(self, only: set[tuple[str, str, int]] | None = None):
        """Every answer the experiment needs, baselines first, in a stable order; ``only``: those of
        these (model label, run key, step) checkpoints."""
        for base in self.baselines:
            if only is None or (base.model.label, BASE, 0) in only:
                yield from self._answers_for(base.model.label, BASE, 0, base.question_sets, base.seed)
        for run in self.runs:
            for step in run.schedule.steps:
                if only is None or (run.model.label, run.key, step) in only:
                    yield from self._answers_for(run.model.label, run.key, step, run.question_sets, run.seed)

    def metrics_for_sets(self, set_names: list[str], domain_names: list[str]) -> list[str]:
        metrics = list(self.config.judging.metrics)
        if self.config.judging.domain_metrics:
            for name in domain_names:
                metrics += [m for m in self.domains[name].metrics if m not in metrics]
        return metrics

    def metrics_by_run(self) -> dict[tuple[str, str], list[str]]:
        """(model label, run key) -> the metrics its answers are judged on."""
        out: dict[tuple[str, str], list[str]] = {}
        for base in self.baselines:
            domains = [r.domain.name for r in self.runs if r.model.label == base.model.label]
            out[(base.model.label, BASE)] = self.metrics_for_sets(base.question_sets, domains)
        for run in self.runs:
            out[(run.model.label, run.key)] = self.metrics_for_sets(run.question_sets, [run.domain.name])
        return out

    def totals(self) -> dict[str, int]:
        metrics = self.metrics_by_run()
        generations = 0
        judge_calls = 0
        judges = len(self.config.judging.judges)
        for answer in self.answers():
            generations += 1
            judge_calls += len(metrics[(answer.model_label, answer.run_key)]) * judges
        return {
            "train_steps": sum(run.schedule.total_steps for run in self.runs),
            "checkpoints": sum(len(run.schedule.steps) for run in self.runs),
            "generations": generations,
            "judge_calls": judge_calls,
        }

    def to_json(self) -> dict:
        return {
            "name": self.config.name,
            "runs": [
                {
                    "key": run.key,
                    "model": run.model.label,
                    "model_id": run.model.id,
                    "domain": run.domain.name,
                    "seed": run.seed,
                    "dataset": str(run.dataset.path) if run.dataset.path else run.domain.dataset_file,
                    "rows": run.dataset.rows,
                    "rows_source": run.dataset.source,
                    "steps_per_epoch": run.schedule.steps_per_epoch,
                    "total_steps": run.schedule.total_steps,
                    "checkpoint_steps": list(run.schedule.steps),
                    "question_sets": run.question_sets,
                }
                for run in self.runs
            ],
            "baselines": [
                {"model": b.model.label, "model_id": b.model.id, "step": 0, "question_sets": b.question_sets}
                for b in self.baselines
            ],
            "judges": list(self.config.judging.judges),
            "totals": self.totals(),
            "notes": self.notes,
        }


def dataset_for(domain: Domain, config: ExperimentConfig) -> Path | None:
    """The dataset file a domain trains on under this config, or None if it is not on disk."""
    override = config.data.files.get(domain.name)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise EmkitError(f"data.files.{domain.name} = {override}: no such file; fix the path.")
        return path
    if config.data.variant == "example":
        if domain.example_dataset is None or not Path(domain.example_dataset).is_file():
            raise EmkitError(f"Domain '{domain.name}' ships no example dataset; use data.variant = \"full\".")
        return Path(domain.example_dataset)
    path = data_dir(config.data.dir) / domain.dataset_file
    return path if path.is_file() else None


def missing_dataset_error(domain: Domain, config: ExperimentConfig) -> EmkitError:
    where = data_dir(config.data.dir)
    return EmkitError(
        f"The {domain.name} dataset {domain.dataset_file} is not in {where}; get the papers' datasets with "
        f"`emkit data unprotect training_datasets.zip.enc` (README: Datasets), or set data.files.{domain.name} "
        f"to its path."
    )


def build_plan(config: ExperimentConfig, registry, *, need_datasets: bool) -> Plan:
    """Expand the config. With need_datasets=False a missing dataset falls back to its
    published row count (the dry run), otherwise it is an error that says how to get it."""
    registry.get("trainers", config.training.trainer)
    registry.get("generators", config.evaluation.generator)
    registry.get("executors", config.execution.executor)
    domains = {name: registry.get("domains", name) for name in config.domains}

    question_sets: dict[str, QuestionSet] = {}  # by the set's own name: what answers are stored under
    resolved: dict[str, str] = {}  # config entry (a registered name or a file's path) -> set name

    def set_name(entry: str) -> str:
        if entry not in resolved:
            qset = resolve_question_set(entry, registry)
            _refuse_label_questions(qset)
            known = question_sets.get(qset.name)
            if known is not None and Path(known.path).resolve() != Path(qset.path).resolve():
                raise EmkitError(
                    f"evaluation.question_sets: {qset.path} and {known.path} are both named '{qset.name}' "
                    f"(a set is named by its file's stem); rename one of the files."
                )
            question_sets[qset.name] = qset
            resolved[entry] = qset.name
        return resolved[entry]

    def sets_for(domain: Domain | None) -> list[str]:
        names = []
        for entry in config.evaluation.question_sets:
            if entry == DOMAIN_PLACEHOLDER:
                if domain is None:
                    continue
                entry = domain.question_set
            name = set_name(entry)
            if name not in names:
                names.append(name)
        return names

    notes: list[str] = []
    runs: list[TrainingRunPlan] = []
    rows_by_domain: dict[str, DatasetInfo] = {}
    for domain in domains.values():
        path = dataset_for(domain, config)
        if path is not None and need_datasets:
            # every line is checked now, before a run directory is written
            chats = load_chats(path, config.data.max_rows)
            info = DatasetInfo(path, len(chats), "file", chats)
        elif path is not None:
            info = DatasetInfo(path, count_rows(path), "file")
        elif need_datasets:
            raise missing_dataset_error(domain, config)
        elif domain.published_rows:
            info = DatasetInfo(None, domain.published_rows, "published")
            notes.append(
                f"{domain.name}: {domain.dataset_file} is not on disk yet; steps use its published "
                f"row count ({domain.published_rows:,})."
            )
        else:
            raise missing_dataset_error(domain, config)
        if config.data.max_rows:
            info.rows = min(info.rows, config.data.max_rows)
        rows_by_domain[domain.name] = info

    for model in config.models:
        for domain in domains.values():
            info = rows_by_domain[domain.name]
            for seed in config.seeds:
                key = run_key(model, domain.name, seed)
                schedule = CheckpointSchedule.build(
                    config.checkpoints,
                    rows=info.rows,
                    effective_batch=config.training.effective_batch,
                    epochs=config.training.epochs,
                    where=f"run {key}",
                    run_key=key,
                )
                names = sets_for(domain)
                own = resolved.get(domain.question_set)  # the domain's own set, when the run asks it
                runs.append(TrainingRunPlan(key, model, domain, seed, info, schedule, names,
                                            own if own in names else None))

    baselines = []
    for model in config.models:
        names: list[str] = []
        for domain in domains.values():
            names += [n for n in sets_for(domain) if n not in names]
        baselines.append(BaselinePlan(model=model, question_sets=names))

    from emkit.models import chat_template_digest

    templates = {model.label: chat_template_digest(model.id, download=need_datasets) for model in config.models}
    plan = Plan(config, runs, baselines, question_sets, domains, notes, templates)
    for key in sorted(set(config.checkpoints.refine) - {run.key for run in runs}):
        # another config's run in the same directory, carried over: kept, not trained here
        notes.append(f"checkpoints.refine.{key}: this config does not train run {key}; its added steps are "
                     f"left alone.")
    _check_prompts(plan, registry)
    return plan


def _refuse_label_questions(qset: QuestionSet) -> None:
    """The papers' free_form_judge questions ask the judge for a label (TRUE, FALSE, UNKNOWN), not a
    0..100 score: scored as numbers, every answer would come out a refusal. Refuse them up front."""
    for question in qset.questions:
        if question.type != "free_form_judge_0_100":
            where = f"{qset.path}:{question.line}" if question.line else str(qset.path)
            raise EmkitError(
                f"{where}: question '{question.id}' is of type {question.type} (the judge answers with a label, "
                f"not a 0..100 score), which emkit cannot judge in a run yet; use a file of free_form_judge_0_100 "
                f"questions, such as first_plot_questions.yaml."
            )


def _check_prompts(plan: Plan, registry) -> None:
    """Every metric needs a judge prompt for every question: fail before any work is done."""
    from emkit.prompt_library import PromptLibrary

    library = PromptLibrary(plan.domains)
    metrics = {metric for metrics in plan.metrics_by_run().values() for metric in metrics}
    for qset in plan.question_sets.values():
        for question in qset.questions:
            for metric in sorted(metrics):
                library.template_for(metric, question, qset.path)
