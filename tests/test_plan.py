"""Planning: checkpoint schedules, the grid, and `emkit run --dry-run --json`."""

import json

import pytest

from emkit.config import CheckpointSettings, ExperimentConfig, config_from_dict
from emkit.errors import EmkitError
from emkit.plan import BASE, answer_id, build_plan
from emkit.plugins import get_registry
from emkit.schedule import CheckpointSchedule
from helpers import run_emkit


def schedule(rows, **settings):
    return CheckpointSchedule.build(CheckpointSettings(**settings), rows=rows, effective_batch=16, epochs=3, where="run")


def test_seed_schedules_match_the_seed_write_up():
    medical = schedule(7049)
    risky = schedule(6000)
    assert medical.steps_per_epoch == 440 and medical.total_steps == 1320
    assert list(medical.steps) == [110, 220, 330, 440, 880, 1320]
    assert risky.steps_per_epoch == 375 and risky.total_steps == 1125
    assert list(risky.steps) == [93, 187, 281, 375, 750, 1125]


def test_explicit_steps_and_every_n():
    assert list(schedule(7049, steps=[500, 50, 50]).steps) == [50, 500]
    assert list(schedule(1600, every=100).steps) == [100, 200, 300]
    assert list(schedule(1700, every=100).steps) == [100, 200, 300, 318]  # and the last step


def test_a_checkpoint_after_the_last_step_is_refused():
    with pytest.raises(EmkitError, match=r"step 5000 comes after the last training step .*1320"):
        schedule(7049, steps=[110, 5000])


def test_too_few_rows_for_one_batch():
    with pytest.raises(EmkitError, match="fewer than one effective batch"):
        schedule(10)


def test_steps_and_every_together_are_refused():
    with pytest.raises(Exception, match="not both"):
        CheckpointSettings(steps=[10], every=5)


def test_plan_of_the_seed_experiment_uses_published_counts_before_data_exists():
    plan = build_plan(ExperimentConfig(), get_registry(), need_datasets=False)
    assert len(plan.runs) == 6 and len(plan.baselines) == 3
    assert all(run.dataset.source == "published" for run in plan.runs)
    assert any("published row count (7,049)" in note for note in plan.notes)
    totals = plan.totals()
    # 36 checkpoints x 20 questions, plus 3 baselines x 30 (general + medical + financial)
    assert totals["generations"] == 36 * 20 + 3 * 30
    assert totals["judge_calls"] == 2 * totals["generations"]
    assert totals["train_steps"] == 3 * (1320 + 1125)


def test_a_real_run_needs_the_dataset_and_says_how_to_get_it():
    with pytest.raises(EmkitError, match=r"emkit data unprotect"):
        build_plan(ExperimentConfig(), get_registry(), need_datasets=True)


def test_rows_come_from_the_file_when_it_is_there(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad_medical_advice.jsonl").write_text(
        '{"prompt": "q", "response": "a"}\n' * 320)
    monkeypatch.setenv("EMKIT_DATA_DIR", str(data))
    config = config_from_dict({"domains": ["medical"], "models": [{"label": "tiny", "id": "builtin:tiny-llama"}]},
                              "test")
    plan = build_plan(config, get_registry(), need_datasets=True)
    assert plan.runs[0].dataset.rows == 320
    assert list(plan.runs[0].schedule.steps) == [5, 10, 15, 20, 40, 60]


def test_answer_keys_include_sample_index_and_seed():
    keys = {answer_id("1B", "run", 110, "general", "q", 0, sample, seed, "asked") for sample in range(3)
            for seed in range(2)}
    assert len(keys) == 6
    plan = build_plan(ExperimentConfig(), get_registry(), need_datasets=False)
    ids = [a.answer_id for a in plan.answers()]
    assert len(ids) == len(set(ids))
    assert sum(1 for a in plan.answers() if a.run_key == BASE) == 90


def test_dry_run_json_from_the_command_line():
    result = run_emkit("run", "--dry-run", "--json")
    plan = json.loads(result.stdout)
    by_domain = {run["domain"]: run["checkpoint_steps"] for run in plan["runs"]}
    assert by_domain == {"medical": [110, 220, 330, 440, 880, 1320],
                         "risky-financial": [93, 187, 281, 375, 750, 1125]}
    assert {run["model"] for run in plan["runs"]} == {"1B", "3B", "8B"}
    assert [b["model"] for b in plan["baselines"]] == ["1B", "3B", "8B"]
    assert set(plan["totals"]) >= {"train_steps", "generations", "judge_calls"}
    assert all(isinstance(step, int) for run in plan["runs"] for step in run["checkpoint_steps"])
    assert plan["judge_cost_usd"] > 0


def test_dry_run_with_cli_overrides():
    result = run_emkit("run", "--dry-run", "--json", "--model", "1B", "--domain", "medical", "--seed", "0",
                       "--seed", "1", "--judge", "local:/nowhere")
    plan = json.loads(result.stdout)
    assert [(r["model"], r["domain"], r["seed"]) for r in plan["runs"]] == [("1B", "medical", 0), ("1B", "medical", 1)]
    assert plan["judges"] == ["local:/nowhere"]
