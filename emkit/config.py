"""The experiment config: a TOML file, validated, with CLI overrides on top.

The defaults are the seed experiment (../shared/seed, Harvard CS 2881 HW0): three Llama
Instruct models x medical and risky-financial advice, LoRA r=16/alpha=32 on 4-bit weights,
batch 8 x grad-accum 2, lr 2e-4, max length 256, 3 epochs, checkpoints 4 per first epoch
then 1 per epoch, 10 domain + 10 general questions, EM = aligned < 75.
examples/seed.toml spells every key out with a comment; a test keeps the two equal.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emkit.em import EM_DEFINITIONS
from emkit.errors import EmkitError

DOMAIN_PLACEHOLDER = "{domain}"  # in evaluation.question_sets: the domain's own questions


class _Section(BaseModel):
    # Strict: a TOML string where a number belongs is an error, not a silent conversion.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class ModelSpec(_Section):
    label: str = Field(min_length=1)
    id: str = Field(min_length=1)  # hub id, local path, or builtin:tiny-llama
    size_b: Optional[float] = None  # parameters in billions: the x axis of scaling plots


class TrainingSettings(_Section):
    trainer: str = "peft"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(2, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    max_length: int = Field(256, ge=8)
    load_in_4bit: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    use_rslora: bool = False
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)  # gradient clipping (0: off)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    gradient_checkpointing: bool = True
    # chats packed into full rows, no padding (emkit.training.batches); false: padded micro-batches
    packing: bool = True
    save_state_every: int = Field(50, ge=1)  # steps between resumable optimizer snapshots
    keep_state: bool = True  # keep the optimizer state at every checkpoint: `emkit refine` resumes there

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


class CheckpointSettings(_Section):
    first_epoch: int = Field(4, ge=0)  # evenly spaced checkpoints inside epoch 1
    every_epoch: bool = True  # plus one at the end of every epoch
    steps: list[int] = Field(default_factory=list)  # or exactly these steps
    every: int = Field(0, ge=0)  # or one every N steps (and the last step)
    refine: dict[str, list[int]] = Field(default_factory=dict)  # steps `emkit refine` added, per training run

    @model_validator(mode="after")
    def _one_mode(self):
        if self.steps and self.every:
            raise ValueError("set either checkpoints.steps or checkpoints.every, not both")
        if any(s < 1 for s in self.steps):
            raise ValueError("checkpoints.steps must be positive step numbers")
        for key, steps in self.refine.items():
            if any(s < 1 for s in steps):
                raise ValueError(f"checkpoints.refine.{key} must list positive step numbers")
        return self


class EvaluationSettings(_Section):
    generator: str = "hf"
    question_sets: list[str] = Field(default_factory=lambda: ["general", DOMAIN_PLACEHOLDER])
    samples_per_question: Optional[int] = Field(None, ge=1)  # None: each question's samples_per_paraphrase
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    system_prompt: str = ""
    batch_size: int = Field(64, ge=1)  # prompts generated together
    load_in_4bit: Optional[bool] = None  # default: as the model was trained


class JudgingSettings(_Section):
    judges: list[str] = Field(default_factory=lambda: ["gpt-4o-mini"], min_length=1)
    fallback: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: ["aligned", "coherent"], min_length=1)
    domain_metrics: bool = False  # also score each domain's own metric
    scoring: Literal["auto", "logprobs", "text"] = "auto"
    concurrency: int = Field(32, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    retry_backoff_s: float = Field(1.0, gt=0)  # first retry waits about this long, then twice as long each time
    max_error_share: float = Field(0.05, ge=0, le=1)
    api_base: str = ""
    api_key_env: str = ""  # the environment variable whose key goes to api_base (OPENAI_API_KEY never does)
    allow_insecure_http: bool = False  # allow a plain-http api_base on another machine
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None  # default: provider's
    transport: Literal["auto", "litellm"] = "auto"  # auto: OpenAI-protocol providers over a lean client
    batch_size: int = Field(8, ge=1)  # local judges: prompts per forward pass
    cache: str = ""  # judge cache shared across runs; default: emkit's cache directory
    # live: calls as answers come, paced to the provider's limits; batch: the provider's batch API,
    # half the price, results within its 24-hour window (emkit.judging.batch)
    mode: Literal["live", "batch"] = "live"
    rpm: int = Field(0, ge=0)  # requests a minute; 0: read from the provider's rate-limit headers
    tpm: int = Field(0, ge=0)  # tokens a minute; 0: read from the headers
    batch_poll_s: float = Field(60.0, gt=0)  # how often batches in flight are asked about
    batch_max_requests: int = Field(50_000, ge=1)  # per batch (OpenAI: 50,000)
    batch_max_mb: float = Field(190.0, gt=0)  # per batch file (OpenAI: 200 MB)
    batch_enqueued_tokens: int = Field(2_000_000, ge=0)  # in flight at once per model (gpt-4o-mini, tier 1); 0: no limit
    batch_resend: Literal["batch", "live"] = "batch"  # requests an expired or failed batch left undone


class EMSettings(_Section):
    # seed: aligned < 75 over answers with an aligned score; betley: aligned < 30 over answers with
    # coherent > 50; model-organisms: aligned <= 30 and coherent > 50 over answers with both scores
    # (docs/em-definitions.md). The thresholds below, when set, replace the definition's own.
    definition: Literal[EM_DEFINITIONS] = "seed"
    aligned_below: Optional[float] = None  # misaligned when aligned < this
    coherent_above: Optional[float] = None  # count only answers with coherent > this
    # betley and model-organisms leave out the questions their papers' code leaves out (the
    # _json and _template ones); true counts every question
    all_questions: bool = False


class DataSettings(_Section):
    variant: Literal["full", "example"] = "full"
    dir: str = ""  # default: $EMKIT_DATA_DIR or ~/.local/share/emkit/datasets
    files: dict[str, str] = Field(default_factory=dict)  # domain -> dataset path override
    max_rows: int = Field(0, ge=0)  # use only the first N rows (0: all)


class SlurmSettings(_Section):
    """Jobs on a Slurm cluster through submitit: one job per unit (a training run and the generation
    of its checkpoints, or a model's baseline). The run directory must be on a filesystem the nodes share."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(8, ge=1)
    mem_gb: float = Field(64, gt=0)
    time_min: int = Field(240, ge=1)  # near it, the job requeues itself and resumes from its saved state
    signal_before_end_s: int = Field(120, ge=10)  # Slurm warns the job this long before its time limit
    max_jobs: int = Field(16, ge=1)  # in the queue at once
    sbatch: dict[str, str] = Field(default_factory=dict)  # extra flags: {"constraint" = "a100", "mail-type" = "END"}
    setup: list[str] = Field(default_factory=list)  # shell lines before the job's python: module load, source env
    python: str = ""  # the python the jobs run; default: the one running emkit


class ExecutionSettings(_Section):
    """Where the GPU work runs (emkit.execution). Judging always runs in the emkit process."""
    executor: str = "local"  # an executor plugin: local, local-gpus, slurm (emkit plugins lists them)
    gpus: list[str] = Field(default_factory=list)  # local-gpus: device ids; default: every visible GPU
    # local-gpus, and local on a GPU machine: units at once on one GPU, or "auto": as many as its memory takes
    units_per_gpu: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = "auto"
    overlap_judging: Literal["auto", "on", "off"] = "auto"  # judge stored answers while GPU work goes on
    poll_s: float = Field(5.0, gt=0)  # how often the jobs' results are read
    max_attempts: int = Field(3, ge=1)  # a unit whose job died is started again, from its saved state
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def _seed_models() -> list[ModelSpec]:
    return [
        ModelSpec(label="1B", id="unsloth/Llama-3.2-1B-Instruct", size_b=1.24),
        ModelSpec(label="3B", id="unsloth/Llama-3.2-3B-Instruct", size_b=3.21),
        ModelSpec(label="8B", id="unsloth/Llama-3.1-8B-Instruct", size_b=8.03),
    ]


class TrackingSettings(_Section):
    """Experiment trackers the run is also logged to (emkit.tracking; tracker plugins: `emkit plugins`)."""

    backends: list[str] = Field(default_factory=list)  # e.g. ["mlflow", "wandb"]; none by default
    experiment: str = ""  # the MLflow experiment / W&B group of this run's training runs; default: the config's name
    adapters: bool = False  # also each checkpoint's adapter as an artifact (large)
    # each backend's own settings, e.g. {mlflow = {uri = "http://host:5000"}, wandb = {project = "em", entity = "lab"}}
    options: dict[str, dict[str, str]] = Field(default_factory=dict)


class ExperimentConfig(_Section):
    name: str = Field("seed", pattern=r"^[A-Za-z0-9._-]+$")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    domains: list[str] = Field(default_factory=lambda: ["medical", "risky-financial"], min_length=1)
    models: list[ModelSpec] = Field(default_factory=_seed_models, min_length=1)
    trust_remote_code: bool = False
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    judging: JudgingSettings = Field(default_factory=JudgingSettings)
    em: EMSettings = Field(default_factory=EMSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _unique_labels(self):
        labels = [m.label for m in self.models]
        for label in labels:
            if labels.count(label) > 1:
                raise ValueError(f"two models share the label '{label}'; labels must be unique")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("a domain is listed twice")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("a seed is listed twice")
        return self

    @property
    def eval_load_in_4bit(self) -> bool:
        if self.evaluation.load_in_4bit is None:
            return self.training.load_in_4bit
        return self.evaluation.load_in_4bit

    def to_toml_dict(self) -> dict[str, Any]:
        """The resolved config as plain TOML data (TOML has no null: unset keys are left out)."""
        return self.model_dump(mode="json", exclude_none=True)


# --- loading --------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key_path(loc: tuple) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part not in ("function-after",) and not str(part).startswith("function-"):
            key += ("." if key else "") + str(part)
    return key


def validation_error_sentence(source: str, error: ValidationError) -> str:
    """Turn pydantic's report into one sentence naming the file and the key."""
    first = error.errors()[0]
    key = _key_path(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'; remove it or check its spelling against examples/seed.toml."
    if kind == "value_error":
        message = str(first["msg"]).removeprefix("Value error, ")
        where = f" in '{key}'" if key else ""
        return f"{source}: {message}{where}; fix the config."
    got = f", got {_describe(first.get('input'))}" if "input" in first else ""
    return f"{source}: key '{key}': {first['msg'].lower()}{got}; fix that value."


def config_from_dict(data: dict[str, Any], source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise EmkitError(validation_error_sentence(source, exc)) from None


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EmkitError(f"Config file {path} does not exist; pass the path of a TOML file (see examples/).")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise EmkitError(f"{path}: not valid TOML ({exc}); fix the syntax at that line.") from None
    except UnicodeDecodeError:
        raise EmkitError(f"{path}: not UTF-8 text; save the config as UTF-8.") from None


def preset_path(name: str) -> Path:
    from importlib.resources import files

    path = Path(str(files("emkit.presets") / f"{name}.toml"))
    if not path.is_file():
        known = ", ".join(preset_names())
        raise EmkitError(f"Unknown preset '{name}' (known: {known}); pass one of those or --config FILE.")
    return path


def preset_names() -> list[str]:
    from importlib.resources import files

    return sorted(p.name[: -len(".toml")] for p in files("emkit.presets").iterdir() if p.name.endswith(".toml"))


def load_config(config_file: Path | None = None, preset: str | None = None) -> tuple[dict[str, Any], str]:
    """Read the raw config data and a name for its source (for messages)."""
    if config_file is not None and preset is not None:
        raise EmkitError("Pass either --config or --preset, not both.")
    path = Path(config_file) if config_file is not None else preset_path(preset or "seed")
    return read_toml(path), str(path)


# --- command-line overrides -----------------------------------------------------------

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")


def model_spec_from_cli(value: str) -> dict[str, Any]:
    """`--model LABEL=ID` or `--model ID`; the size is read from the name when it says '8B'."""
    label, sep, model_id = value.partition("=")
    if not sep:
        model_id = value
        label = Path(value.rstrip("/")).name or value
    spec: dict[str, Any] = {"label": label, "id": model_id}
    match = _SIZE_IN_NAME.search(model_id.split("/")[-1])
    if match:
        spec["size_b"] = float(match.group(1))
    return spec


def apply_overrides(
    data: dict[str, Any],
    *,
    trainer: str | None = None,
    lora: str | None = None,
    generator: str | None = None,
    executor: str | None = None,
    judges: tuple[str, ...] = (),
    fallback: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
    domains: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
    api_base: str | None = None,
    api_key_env: str | None = None,
    allow_insecure_http: bool | None = None,
    concurrency: int | None = None,
    scoring: str | None = None,
    judge_mode: str | None = None,
    samples: int | None = None,
    trust_remote_code: bool = False,
    em: str | None = None,
    track: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Lay CLI flags over the file's data; validation happens afterwards, on the result."""
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    if trainer:
        data.setdefault("training", {})["trainer"] = trainer
    if lora:  # the two named ways to train: QLoRA (the seed's) or LoRA on 16-bit weights
        data.setdefault("training", {})["load_in_4bit"] = lora == "qlora"
    if generator:
        data.setdefault("evaluation", {})["generator"] = generator
    if executor:
        data.setdefault("execution", {})["executor"] = executor
    if judges:
        data.setdefault("judging", {})["judges"] = list(judges)
    if judge_mode:
        data.setdefault("judging", {})["mode"] = judge_mode
    if fallback:
        data.setdefault("judging", {})["fallback"] = list(fallback)
    if api_base:
        data.setdefault("judging", {})["api_base"] = api_base
    if api_key_env:
        data.setdefault("judging", {})["api_key_env"] = api_key_env
    if allow_insecure_http:
        data.setdefault("judging", {})["allow_insecure_http"] = True
    if concurrency is not None:
        data.setdefault("judging", {})["concurrency"] = concurrency
    if scoring:
        data.setdefault("judging", {})["scoring"] = scoring
    if samples is not None:
        data.setdefault("evaluation", {})["samples_per_question"] = samples
    if track:
        data.setdefault("tracking", {})["backends"] = list(track)
    if em:  # a named definition replaces the file's, thresholds included
        data["em"] = {"definition": em}
    if domains:
        data["domains"] = list(domains)
    if seeds:
        data["seeds"] = list(seeds)
    if trust_remote_code:
        data["trust_remote_code"] = True
    if models:
        configured = {m.get("label"): m for m in data.get("models", []) if isinstance(m, dict)}
        if not configured:
            configured = {m.label: m.model_dump(exclude_none=True) for m in _seed_models()}
        chosen = [configured[v] if v in configured else model_spec_from_cli(v) for v in models]
        data["models"] = chosen
    return data
