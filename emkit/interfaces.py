"""What plugins register and what emkit hands them: the objects behind the hook specs.

Nothing here imports torch or any other heavy library; a plugin imports those inside the
method that needs them, so that `emkit --help` and `emkit plugins` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

# --- training -------------------------------------------------------------------------


@dataclass
class TrainingJob:
    """One fine-tune: a base model on one domain's dataset with one seed."""

    run_key: str
    model_id: str  # local path or hub id, already resolved
    model_label: str
    dataset_path: Path
    chats: list[list[dict[str, str]]]  # validated conversations, in file order
    settings: Any  # emkit.config.TrainingSettings
    seed: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_steps: list[int]
    adapters_dir: Path  # adapters go to adapters_dir / f"step-{step:06d}"
    state_dir: Path  # resumable optimizer/scheduler state
    done_steps: frozenset[int] = frozenset()
    trust_remote_code: bool = False

    def adapter_path(self, step: int) -> Path:
        return self.adapters_dir / f"step-{step:06d}"


OnCheckpoint = Callable[[int, Path, dict], None]


@runtime_checkable
class Trainer(Protocol):
    name: str
    description: str

    def train(self, job: TrainingJob, on_checkpoint: OnCheckpoint, progress: Any) -> None:
        """Train, saving the adapter at each of ``job.checkpoint_steps`` not in ``done_steps``
        and calling ``on_checkpoint(step, path, metrics)`` right after each save. ``metrics``
        may hold ``train_loss``, ``seconds`` and ``base_weights`` (emkit.models.base_weights.loaded_base
        of the model trained, as JSON): generation then loads exactly those weights.

        A trainer whose class sets ``isolated = True`` is run in a spawned child process, for
        libraries that patch the process they are imported in (the unsloth trainer). A trainer
        may also have ``unavailable_reason()``: a sentence saying why it cannot run here (a
        package missing), or None; it is asked before any training starts."""


# --- generation -----------------------------------------------------------------------


@dataclass
class GenerationRequest:
    answer_id: str
    messages: list[dict[str, str]]  # the chat up to the user turn
    sample_seed: int  # the sample's own seed: same key, same answer, whatever the batch


@dataclass
class CheckpointRequests:
    step: int
    adapter_path: Path | None  # None: the untouched base model (step 0)
    requests: list[GenerationRequest]


@dataclass
class GenerationJob:
    model_id: str  # the configured model, resolved: its tokenizer and chat template render the prompts
    model_label: str
    checkpoints: list[CheckpointRequests]
    settings: Any  # emkit.config.EvaluationSettings
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    base: Any = None  # emkit.models.base_weights.BaseWeights: the weights the adapters were trained on; load these
    # emkit.directions.hooks.Intervention: every forward pass runs with the residual stream changed (a direction
    # ablated or added). Only a generator with ``supports_interventions = True`` is given one.
    intervention: Any = None


@dataclass
class GeneratedAnswer:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" or "length"


OnAnswer = Callable[[GenerationRequest, GeneratedAnswer], None]


@runtime_checkable
class Generator(Protocol):
    name: str
    description: str

    def generate(self, job: GenerationJob, on_answer: OnAnswer, progress: Any) -> None:
        """Answer every request of every checkpoint, calling ``on_answer`` as each is done. A generator
        that can apply ``job.intervention`` says so with ``supports_interventions = True``."""


# --- judging --------------------------------------------------------------------------

STATUSES = ("ok", "refusal", "code", "unparseable", "error")


@dataclass
class JudgeRequest:
    key: str  # unique within one call of Judge.score
    metric: str
    prompt: str  # the full judge prompt, rendered


@dataclass
class JudgeResult:
    score: float | None
    status: str  # one of STATUSES; only "ok" has a score
    scoring: str  # "logprobs" or "text": how this score was obtained
    raw: str = ""  # the reply (or the top tokens) as the judge gave it
    judge_model: str = ""  # the model that answered, with its dated snapshot when known
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""


@dataclass
class JudgeOptions:
    api_base: str | None = None
    scoring: str = "auto"  # auto | logprobs | text
    concurrency: int = 32
    timeout_s: float = 60.0
    max_retries: int = 5
    retry_backoff_s: float = 1.0
    batch_size: int = 8
    trust_remote_code: bool = False
    transport: str = "auto"  # auto: OpenAI-protocol providers over emkit's lean client; litellm: all via litellm
    api_key_env: str | None = None  # the variable holding the key for a custom api_base
    allow_insecure_http: bool = False  # plain http to an api_base on another machine
    reasoning_effort: str | None = None  # for reasoning models; None: the provider's default
    mode: str = "live"  # live | batch (the provider's batch API, where the backend has one)
    rpm: int = 0  # rate limits set by hand; 0: read from the provider's headers
    tpm: int = 0
    batch_poll_s: float = 60.0
    batch_max_requests: int = 50_000
    batch_max_mb: float = 190.0
    batch_enqueued_tokens: int = 2_000_000
    batch_resend: str = "batch"  # batch | live: how requests an expired or failed batch left undone are sent
    ledger: str | None = None  # the SQLite file that records batches in flight (the judge cache's)


OnJudged = Callable[[JudgeRequest, JudgeResult], None]


@runtime_checkable
class Judge(Protocol):
    """A judge says what it needs as attributes (read through ``JudgeNeeds.of``, so a plugin that
    leaves one out gets its default): ``uses_gpu``, ``supports_batch``, ``supports_logprobs``,
    ``models``. The runner reads them; no judge is recognised by its name."""

    name: str  # the spec the user wrote: "gpt-4o-mini", "local:/models/judge"
    identity: str  # what makes two judges interchangeable for the cache
    # Runs a model on this machine's GPU (its CPU where there is none): kept from judging beside GPU
    # work on this machine.
    uses_gpu: bool

    def unavailable_reason(self) -> str | None:
        """A sentence saying why this judge cannot be used here (no key, unreachable), or None."""

    def scoring_mode(self) -> str:
        """"logprobs" or "text": how this judge will score (``auto`` resolved)."""

    def score(self, requests: list[JudgeRequest], on_result: OnJudged, progress: Any) -> None:
        """Score every request, calling ``on_result`` as each finishes (errors included)."""


class JudgeNeeds:
    """What a judge needs and can do, as the runner reads it; a judge that says nothing about one
    of these gets the default (so older plugins keep working). Each is read from the judge when
    asked, so asking one (the GPU) never makes a judge work out another (its provider's logprobs)."""

    def __init__(self, judge):
        self._judge = judge

    @classmethod
    def of(cls, judge) -> "JudgeNeeds":
        return cls(judge)

    @property
    def uses_gpu(self) -> bool:  # runs a model on this machine: kept from judging beside GPU work here
        return bool(getattr(self._judge, "uses_gpu", False))

    @property
    def supports_batch(self) -> bool:  # can send through a provider's batch API ([judging] mode = "batch")
        return bool(getattr(self._judge, "supports_batch", False))

    @property
    def supports_logprobs(self) -> bool:  # can score from its first token's logprobs (scoring = "logprobs")
        return bool(getattr(self._judge, "supports_logprobs", False))

    @property
    def models(self) -> tuple[str, ...]:  # model sources it loads here (builtin:NAME ones are built first)
        return tuple(getattr(self._judge, "models", ()) or ())


@runtime_checkable
class JudgeBackend(Protocol):
    name: str
    description: str

    def create(self, argument: str, options: JudgeOptions) -> Judge: ...


# --- executors --------------------------------------------------------------------------
# Where a run's GPU work runs (emkit.execution): units handed out and watched. A unit that runs
# outside the emkit process is `python -m emkit.execution.job SPEC RESULT` (or
# emkit.execution.job.run_unit): it appends its rows to its shard, which the coordinator merges.


@runtime_checkable
class Executor(Protocol):
    name: str  # as stored in the units table: the backend's name
    in_process: bool  # True: units run one after another in this process, into the store (no jobs)
    # the units use this machine's GPU: a judge that uses the GPU (Judge.uses_gpu) waits for them
    gpu_work_here: bool
    slots: int  # units at once

    def describe(self) -> list[str]:
        """Lines for the log: where the units run."""

    # the rest only where in_process is False (emkit.execution.handles: JobHandle, JobState)
    def submit(self, unit_key: str, spec_json: str, attempt: int) -> Any:
        """Start the unit's job (spec_json: an emkit.execution.job.UnitSpec); return its JobHandle. An
        executor that also has ``room_for(load) -> bool`` (may a unit of this emkit.execution.units.UnitLoad
        start now?) is asked that instead of counting slots, and gets ``load=`` here."""

    def reattach(self, row: dict) -> Any:
        """The JobHandle of a job an earlier emkit process submitted (a units-table row), if it may
        still run or has left its result; None: submit the unit again."""

    def poll(self, handles: list) -> dict:
        """job id -> JobState now, for each handle."""

    def stop(self, handles: list) -> None:
        """Ctrl-C or an error: stop the jobs, or leave them running, as the executor's design says."""

    def stop_message(self, count: int) -> str:
        """What happened to ``count`` jobs on stop, for the log."""


@runtime_checkable
class ExecutorBackend(Protocol):
    name: str  # what [execution] executor (--executor) selects
    description: str

    def create(self, settings: Any, run_path: Path) -> Executor:
        """An executor for one run (settings: emkit.config.ExecutionSettings); refuse, with an EmkitError
        naming the key to change, what cannot work here (no GPU, no scheduler, a request no node holds)."""

    def plan(self, settings: Any, out_dir: Path) -> dict:
        """For `emkit run --dry-run`: {"how": a phrase, "details": lines to show, and any JSON-able facts}."""

    def jobs_now(self, rows: list[dict]) -> dict[str, str | None]:
        """For `emkit status`: job id -> its state now in words ("" if nothing to add), or None if the job
        no longer runs; a job left out is not known either way. ``rows``: the units table's, of this executor."""

    def setup_lines(self, settings: Any) -> list[str]:
        """Commands each job runs before emkit (shown by `emkit refine` before it runs them); [] if none."""


# --- domains, questions, report -------------------------------------------------------


@dataclass
class Domain:
    """A narrow training domain: its dataset, its own questions and its judge metrics."""

    name: str
    description: str
    dataset_file: str  # file name looked up in the data directory
    question_set: str  # name (or path) of the domain's own evaluation questions
    published_rows: int | None = None
    metrics: dict[str, Path] = field(default_factory=dict)  # extra metric -> prompt template
    example_dataset: Path | None = None  # small bundled chats for the smoke pipeline


@dataclass
class QuestionSetSource:
    name: str
    path: Path  # the papers' YAML schema, or a text file with one question per line
    description: str = ""


@dataclass
class ReportTarget:
    """Where one report goes: its HTML file and, for a single run directory, the folders of its
    CSV exports and PNG figures beside it (None: not written, as for a report of many sources)."""

    html: Path
    exports: Path | None = None
    figures: Path | None = None
    registry: Any = None  # emkit.plugins.Registry: the report sections to render


@runtime_checkable
class ReportWriter(Protocol):
    """One kind of output made from a run's tables (the HTML report, the CSV exports, a plugin's
    own format); writers run in increasing ``order``, each writing what its target asks for."""

    name: str
    order: int

    def write(self, tables: Any, target: ReportTarget) -> list[Path]:
        """Write this writer's files for ``tables`` (emkit.analysis.RunTables); return their paths."""


@runtime_checkable
class ReportSection(Protocol):
    name: str
    title: str
    order: int  # sections are shown in increasing order

    def render(self, tables: Any, env: Any) -> str:
        """Return the section's HTML; ``env`` is the report's autoescaping Jinja2 environment."""


# --- experiment trackers -------------------------------------------------------------


@dataclass
class TrackedRun:
    """One training run as a tracker is told of it (emkit.tracking)."""

    key: str  # the training run's key: the tracked run's name
    experiment: str  # the MLflow experiment / W&B group: the runs of one emkit experiment
    params: dict[str, str]  # the config, flattened: training.learning_rate, model.id, seed, ...
    tags: dict[str, str]  # emkit.run_dir, emkit.version, ...
    tracked_id: str | None = None  # the tracker's id of this run when it was logged before: go on there


@runtime_checkable
class TrackerSession(Protocol):
    """A tracker opened for one `emkit run`. emkit calls, for each training run in turn, ``start``,
    then ``log_metrics`` and ``log_artifact`` any number of times, then ``finish``; and ``close`` at the end.
    Any of them may raise: emkit warns and logs the rest another time."""

    target: str  # where runs go (a tracking URI, an entity/project): a run's id is kept per target

    def start(self, run: TrackedRun) -> str:
        """Begin logging to ``run`` (the one with ``run.tracked_id`` where given); return its id."""

    def log_metrics(self, tracked_id: str, points: list[tuple[int, dict[str, float]]]) -> None:
        """Values at training steps, as (step, {name: value}); later calls may go back to earlier
        steps (a checkpoint's EM comes after the training steps that follow it)."""

    def log_artifact(self, tracked_id: str, path: Path, folder: str) -> None:
        """A file or a folder, stored under ``folder`` (replacing what an earlier call stored there)."""

    def finish(self, tracked_id: str, status: str) -> None:
        """``status``: "finished", "running" (the emkit run goes on later: resumable) or "failed"."""

    def close(self) -> None: ...


@runtime_checkable
class Tracker(Protocol):
    """A tracker may also say which ``[tracking] options.NAME`` keys it takes (``options``, a tuple of
    names): any other is refused before the run, as a typo would otherwise send the runs elsewhere."""

    name: str
    description: str

    def unavailable_reason(self) -> str | None:
        """Why it cannot be used here (its library is not installed), or None."""

    def open(self, options: dict[str, str], run_path: Path) -> TrackerSession:
        """``options``: ``[tracking] options.NAME`` of the config."""
