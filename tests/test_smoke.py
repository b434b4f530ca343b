"""The offline default, end to end through the `emkit` command: run it, then run it again."""

import re
import sqlite3
import tomllib

import pytest

from helpers import run_emkit

pytestmark = pytest.mark.slow


def snapshot(store):
    conn = sqlite3.connect(store)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("checkpoints", "answers", "judgments")
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    first = run_emkit("run", "--preset", "tiny", "--out", out,
                      env={"EMKIT_JUDGE_CACHE": str(out.parent / "judge-cache.sqlite")})
    return out, first


def test_the_smoke_run_does_every_stage(smoke_run):
    out, result = smoke_run
    done = re.search(r"done: 10 new checkpoints, 460 new answers, 920 new judgments \((\d+) judge calls\)",
                     result.stderr)
    assert done, result.stderr[-2000:]
    assert "numbers mean nothing" in result.stderr
    assert "generation flags are not valid" not in result.stderr  # Llama 3's sampling defaults are overridden, quietly
    data = snapshot(out / "emkit.sqlite")
    conn = sqlite3.connect(out / "emkit.sqlite")
    distinct_requests = conn.execute("SELECT COUNT(DISTINCT request_key) FROM judgments").fetchone()[0]
    conn.close()
    assert int(done.group(1)) == distinct_requests  # answers that came out alike were judged once
    assert len(data["checkpoints"]) == 10 and len(data["answers"]) == 460 and len(data["judgments"]) == 920
    adapters = sorted(p.name for p in (out / "adapters" / "tiny-medical-seed0").iterdir())
    assert adapters == ["step-000002", "step-000004", "step-000008", "step-000012", "step-000016"]
    for name in ("em_rates_summary.csv", "step_summary.csv", "fg_judged.csv"):
        assert (out / "exports" / name).is_file()
    assert (out / "figures" / "em_trajectories.png").is_file()
    report = (out / "report.html").read_text()
    assert "EM rate per checkpoint" in report and "Tiny model" in report


def test_the_resolved_config_is_saved(smoke_run):
    out, _ = smoke_run
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["name"] == "tiny" and saved["models"][0]["id"] == "builtin:tiny-llama"
    assert saved["training"]["learning_rate"] == 1e-2 and saved["judging"]["judges"] == ["local:builtin:tiny-judge"]


def test_running_again_trains_generates_and_judges_nothing(smoke_run):
    out, _ = smoke_run
    before = snapshot(out / "emkit.sqlite")
    again = run_emkit("run", "--preset", "tiny", "--out", out)
    assert "done: 0 new checkpoints, 0 new answers, 0 new judgments (0 judge calls)" in again.stderr
    for stage_line in ("train tiny", "generate tiny", "judgments to make"):
        assert stage_line not in again.stderr
    assert snapshot(out / "emkit.sqlite") == before


def test_a_changed_training_setting_is_refused_for_an_existing_run(smoke_run, tmp_path):
    out, _ = smoke_run
    config = tmp_path / "changed.toml"
    from emkit.config import preset_path

    config.write_text(preset_path("tiny").read_text().replace("learning_rate = 1e-2", "learning_rate = 5e-3"))
    result = run_emkit("run", "--config", config, "--out", out, check=False)
    assert result.returncode == 2
    assert "training.learning_rate = 0.01" in result.stderr and "new --out directory" in result.stderr


def dense_update(folder):
    """The adapter's dW = scale * B @ A of every module, flattened, formed the way a notebook does."""
    import json

    import torch
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    parts = []
    for key in sorted(k for k in tensors if ".lora_A." in k):
        a, b = tensors[key].double(), tensors[key.replace(".lora_A.", ".lora_B.")].double()
        parts.append((scale * b @ a).flatten())
    return torch.cat(parts)


def test_the_runs_final_updates_are_compared_in_the_report(smoke_run):
    """The two domains' final adapters, as the real trainer saved them: the exported cosine is the
    cosine of their dense updates, and the report reads it as two runs of one seed."""
    import pandas as pd

    out, _ = smoke_run
    pairs = pd.read_csv(out / "exports" / "adapter_similarity.csv")
    assert len(pairs) == 1
    pair = pairs.iloc[0]
    assert pair["relation"] == "other domain, same seed" and pair["step_a"] == pair["step_b"] == 16
    left, right = (dense_update(out / "adapters" / pair[key] / "step-000016") for key in ("run_key_a", "run_key_b"))
    expected = float(left @ right / (left.norm() * right.norm()))
    assert pair["cosine"] == pytest.approx(expected, abs=1e-9)
    report = (out / "report.html").read_text()
    assert "Do runs learn the same update?" in report and "other domain, same seed" in report


def test_the_tiny_presets_results_are_what_they_were_before_the_code_moved(smoke_run):
    """Refactorings (issue 27) move code, not results: the store, the report (times and paths aside) and
    the exports equal the fingerprint recorded before; on another machine, their structure does."""
    import json

    from fingerprint import REFERENCE, compare

    out, _ = smoke_run
    differences = compare(out, json.loads(REFERENCE.read_text()))
    assert not differences, "\n".join(differences)
