"""Which base weights a run's adapters were trained on, so that they are evaluated on exactly those.

A LoRA adapter is a small correction to particular weights. Unsloth, asked for 4-bit, swaps
in its own pre-quantised repository (``unsloth/...-bnb-4bit``, some "dynamic" ones keeping
layers in 16-bit); PEFT QLoRA quantises the bf16 weights with emkit's NF4 config. An adapter
trained on one and evaluated on the other measures the mismatch as well as the fine-tune.
So the trainer reports what it actually loaded (the repository, its commit, its
quantisation), the store keeps it per run, generation loads exactly that, and a mismatch
(runs of one model on different bases, a local folder changed since training) is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from emkit.errors import EmkitError
from emkit.models.sources import model_fingerprint

# the parts of a bitsandbytes quantization_config that decide the weights (not the compute dtype,
# which follows the GPU)
QUANTIZATION_KEYS = ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                     "bnb_4bit_use_double_quant", "llm_int8_skip_modules")


@dataclass(frozen=True)
class BaseWeights:
    source: str  # the local folder or hub id the weights came from
    quantization: dict | None  # None: 16/32-bit weights as stored; else how they were quantised
    prequantized: bool = False  # the repository is stored quantised (its own quantization_config)
    revision: str | None = None  # the hub commit, when the source is a hub id
    fingerprint: str | None = None  # files of a local folder, when the source is one

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BaseWeights":
        return cls(**json.loads(text))

    def describe(self) -> str:
        where = self.source + (f"@{self.revision[:10]}" if self.revision else "")
        if self.quantization is None:
            return f"{where} (16-bit)"
        kind = self.quantization.get("bnb_4bit_quant_type") or self.quantization.get("quant_method") or "quantised"
        skipped = self.quantization.get("llm_int8_skip_modules") or []
        extra = f", {len(skipped)} modules kept in 16-bit" if len(skipped) > 1 else ""
        how = "pre-quantised repository" if self.prequantized else "quantised on load"
        return f"{where} (4-bit {kind}, {how}{extra})"

    def same_weights(self, other: "BaseWeights") -> bool:
        return (self.source, self.quantization, self.prequantized, self.revision) == (
            other.source, other.quantization, other.prequantized, other.revision)


def _quantization_of(config) -> dict | None:
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    data = quantization.to_dict() if hasattr(quantization, "to_dict") else dict(quantization)
    # as JSON has it (quant_method is an Enum): what is recorded compares equal to what is loaded
    return json.loads(json.dumps({key: data[key] for key in QUANTIZATION_KEYS if data.get(key) is not None},
                                 default=lambda value: getattr(value, "value", str(value))))


def _source_config(source: str) -> tuple[dict, str | None]:
    """The source's config.json and, for a hub id, the commit it was read at."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
        return (json.loads(path.read_text()) if path.is_file() else {}), None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except Exception:
        cached = None
    if not isinstance(cached, str):
        return {}, None
    return json.loads(Path(cached).read_text()), Path(cached).parent.name  # .../snapshots/<commit>/config.json


def loaded_base(model, requested: str) -> BaseWeights:
    """The base weights a trainer actually loaded, read off the loaded model."""
    config = model.config
    source = str(getattr(config, "_name_or_path", "") or requested)
    source_config, revision = _source_config(source)
    folder = Path(source).is_dir()
    return BaseWeights(
        source=source,
        quantization=_quantization_of(config),
        prequantized="quantization_config" in source_config,
        revision=revision,
        fingerprint=model_fingerprint(source) if folder else None,
    )


def configured_base(source: str, load_in_4bit: bool) -> BaseWeights:
    """The base emkit's own loader gives for a model id: what runs stored before bases were
    recorded were evaluated on, and what a baseline without training runs uses."""
    quantization = None
    if load_in_4bit:
        quantization = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                        "bnb_4bit_use_double_quant": True}
    return BaseWeights(source=source, quantization=quantization)


def base_for_model(store, model_label: str, default: BaseWeights, want_4bit: bool | None) -> BaseWeights:
    """The one base every run of this model was trained on; refused when there is no single one,
    when a local folder changed since, or when the config asks to evaluate on other weights."""
    rows = store.conn.execute(
        "SELECT run_key, base_weights FROM training_runs WHERE model_label = ? AND base_weights IS NOT NULL "
        "ORDER BY run_key", (model_label,)).fetchall()
    bases = [(row["run_key"], BaseWeights.from_json(row["base_weights"])) for row in rows]
    if not bases:
        return default
    first_run, base = bases[0]
    for run_key, other in bases[1:]:
        if not other.same_weights(base):
            raise EmkitError(
                f"Runs {first_run} and {run_key} of model '{model_label}' were trained on different base weights "
                f"({base.describe()}; {other.describe()}), and their answers would not be comparable; pass a new "
                f"--out directory and train them again."
            )
    if base.fingerprint and Path(base.source).is_dir() and model_fingerprint(base.source) != base.fingerprint:
        raise EmkitError(
            f"The weights in {base.source} have changed since run {first_run} was trained on them, so its adapters "
            f"no longer fit them; put the original files back, or pass a new --out directory."
        )
    if want_4bit is not None and want_4bit != (base.quantization is not None):
        raise EmkitError(
            f"evaluation.load_in_4bit = {str(want_4bit).lower()}, but the adapters of '{model_label}' were trained on "
            f"{base.describe()}; adapters are evaluated on the weights they were trained on, so remove "
            f"evaluation.load_in_4bit from the config."
        )
    return base


def record_base(store, run_key: str, base: BaseWeights) -> None:
    """Keep the base of a run; a resumed run must report the base it started on."""
    row = store.conn.execute("SELECT base_weights FROM training_runs WHERE run_key = ?", (run_key,)).fetchone()
    if row is not None and row["base_weights"]:
        known = BaseWeights.from_json(row["base_weights"])
        if not known.same_weights(base):
            raise EmkitError(
                f"Run {run_key} started training on {known.describe()} and now loaded {base.describe()} (a changed "
                f"model folder, hub revision or trainer version?); its checkpoints would mix both, so pass a new "
                f"--out directory."
            )
        return
    store.set_base_weights(run_key, base.to_json())
