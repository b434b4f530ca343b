"""What a job runs, wherever it runs (a local-gpus worker process, a Slurm job): one unit.

The job rebuilds the plan from the run's config, seeds a scratch store on local disk with
the rows it was sent plus its own shard (what an earlier attempt of this unit already made),
then trains and generates what is still missing: a requeued or restarted job resumes from
the unit's last saved training state and never makes an answer twice.

    python -m emkit.execution.job SPEC.json RESULT.json      (a local-gpus worker)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from emkit.atomic import write_text_atomic

log = logging.getLogger("emkit")


@dataclass
class UnitSpec:
    run_dir: str
    config: dict  # the run's resolved config (ExperimentConfig.to_toml_dict)
    unit_key: str
    seed_records: list  # emkit.execution.shards.export_rows, at submission

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "UnitSpec":
        return cls(**json.loads(text))


def run_unit(spec: UnitSpec) -> dict:
    """Make what the unit is missing; every row goes to its shard as it is made."""
    from emkit.config import config_from_dict
    from emkit.execution.shards import ShardStore, ShardWriter, UnitLock, merge, read_records, shard_path
    from emkit.execution.units import do_unit, plan_units
    from emkit.logs import setup_console
    from emkit.plan import build_plan
    from emkit.plugins import get_registry
    from emkit.progress import progress
    from emkit.rundir import RunDirectory

    setup_console()
    started = time.time()
    run_path = Path(spec.run_dir)
    config = config_from_dict(spec.config, str(run_path / "config.toml"))
    registry = get_registry()
    plan = build_plan(config, registry, need_datasets=True)
    unit = next((u for u in plan_units(plan) if u.key == spec.unit_key), None)
    if unit is None:
        raise RuntimeError(f"unit {spec.unit_key} is not in the plan of {run_path / 'config.toml'}")
    shard = shard_path(run_path, unit.key)
    log.info("unit %s starts on GPU %s (shard %s)", unit.key, os.environ.get("CUDA_VISIBLE_DEVICES", "-"), shard)
    # one attempt at a time: a job requeued (or submitted again) while an earlier one still runs waits for it,
    # then reads what it made from the shard
    with UnitLock(shard), tempfile.TemporaryDirectory(prefix=f"emkit-{unit.key}-") as scratch_dir:
        store = ShardStore(Path(scratch_dir) / "unit.sqlite")
        try:
            merge(store, spec.seed_records)
            merge(store, read_records(shard)[0])  # an earlier attempt's work
            store.shard = ShardWriter(shard)
            checkpoints = answers = 0
            run_dir = RunDirectory(run_path)  # its layout only: the store is the scratch one, no lock
            run_dir.store = store
            checkpoints, answers = do_unit(run_dir, plan, unit, registry, progress)
        finally:  # also when submitit requeues the job at its time limit (SystemExit): its GPU time counts
            store.event("unit_time", start=started, end=time.time())
            if store.shard is not None:
                store.shard.close()
            store.close()
    log.info("unit %s done: %d checkpoints, %d answers made", unit.key, checkpoints, answers)
    return {"unit": unit.key, "checkpoints": checkpoints, "answers": answers, "seconds": time.time() - started}


def _peak_gpu_bytes() -> int | None:
    """The most GPU memory torch held for this unit: what an executor sharing a GPU plans the next by."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_reserved())


def main(argv: list[str]) -> int:
    spec_file, result_file = map(Path, argv)
    spec = UnitSpec.from_json(spec_file.read_text(encoding="utf-8"))
    try:
        result = {"ok": True, **run_unit(spec), "peak_gpu_bytes": _peak_gpu_bytes()}
    except BaseException as exc:  # the coordinator shows this to the user
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        traceback.print_exc()
    write_text_atomic(result_file, json.dumps(result))  # the coordinator reads it whole or not at all
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
