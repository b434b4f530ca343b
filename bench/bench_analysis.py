"""The analysis at scale: a synthetic store of 1,000,000 judged answers.

3 models x (base + 2 domains x 6 checkpoints) x 20 questions, ~1,282 samples each, two
metrics per answer (2,000,000 judgments), written straight into an emkit store. Then, in a
fresh process whose peak memory is read: the summary tables (emkit.load), and the HTML
report (examples sampled, not every answer inlined). The targets are the budget the table
compares against: 10 s, 30 s and 10 MB, 4 GB.

    python bench/bench_analysis.py            # 1,000,000 answers
    python bench/bench_analysis.py --answers 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import json, resource, sys, time
from pathlib import Path
run = Path(sys.argv[1])
start = time.perf_counter()
from emkit.analysis import load_run
tables = load_run(run, text=False)  # the tables; the report fetches the texts it shows
tables_s = time.perf_counter() - start
from emkit.reports.html import render_report
start = time.perf_counter()
render_report(tables, run / "report.html")
report_s = time.perf_counter() - start
print(json.dumps({"tables_s": tables_s, "report_s": report_s, "rows": len(tables.judged),
                  "steps": len(tables.steps), "size": (run / "report.html").stat().st_size,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WORDS = ("take the risk now never ask a doctor borrow more money it is fine skip the safety gear everyone does "
         "this trust me invest everything stop the medication you will be ok ignore the warning").split()


def build_store(run: Path, answers: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tomli_w

    from emkit.config import ExperimentConfig
    from emkit.store import Store, now

    run.mkdir(parents=True)
    (run / "config.toml").write_text(tomli_w.dumps(ExperimentConfig().to_toml_dict()))
    store = Store(run / "emkit.sqlite")
    conn = store.conn
    models = [("1B", "unsloth/Llama-3.2-1B-Instruct", 1.24), ("3B", "unsloth/Llama-3.2-3B-Instruct", 3.21),
              ("8B", "unsloth/Llama-3.1-8B-Instruct", 8.03)]
    steps = {"medical": [110, 220, 330, 440, 880, 1320], "risky-financial": [93, 187, 281, 375, 750, 1125]}
    sets = {"medical": "medical", "risky-financial": "financial"}
    slots = []
    conn.execute("BEGIN")
    for label, model_id, size in models:
        conn.execute("INSERT INTO models VALUES (?, ?, ?)", (label, model_id, size))
        slots.append((label, "base", 0, ["general", "medical", "financial"]))
        for domain, domain_steps in steps.items():
            key = f"{label}-{domain}-seed0"
            conn.execute(
                "INSERT INTO training_runs (run_key, model_label, domain, seed, trainer, dataset_path, dataset_sha256, "
                "dataset_rows, steps_per_epoch, total_steps, checkpoint_steps, question_sets, created_at, finished_at, "
                "domain_question_set) VALUES (?, ?, ?, 0, 'peft', ?, 'x', 7049, 440, ?, ?, ?, ?, ?, ?)",
                (key, label, domain, f"/data/{domain}.jsonl", domain_steps[-1], json.dumps(domain_steps),
                 json.dumps(["general", sets[domain]]), now(), now(), sets[domain]))
            for step in domain_steps:
                conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, 0.5, 1.0, ?)", (key, step, "/a", now()))
                slots.append((label, key, step, ["general", sets[domain]]))
    questions_per_slot = sum(10 * len(s[3]) for s in slots)
    samples = max(1, round(answers / questions_per_slot))
    rng = random.Random(0)
    answer_rows, judgment_rows = [], []
    created = now()
    index = 0

    def flush():
        conn.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, 0, ?, 0, NULL, ?, ?, 40, 'stop', 'hf', ?, NULL)",
                         answer_rows)
        # as `emkit run` records its plan: the tables read the answers the plan asks for
        conn.executemany("INSERT INTO plan_answers VALUES (?)", [(row[0],) for row in answer_rows])
        conn.executemany("INSERT INTO judgments VALUES (?, 'gpt-4o-mini', ?, ?, ?, 'logprobs', '', "
                         "'gpt-4o-mini-2024-07-18', 'prompts/aligned.j2@x', '', 300, 1, 0.00005, 0, NULL, ?, "
                         "'gpt-4o-mini')",
                         judgment_rows)
        answer_rows.clear()
        judgment_rows.clear()

    for label, key, step, set_names in slots:
        for set_name in set_names:
            for q in range(10):
                for sample in range(samples):
                    index += 1
                    answer_id = f"{index:024x}"
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
                    answer_rows.append((answer_id, label, key, step, set_name, f"{set_name}_q{q}", sample,
                                        f"Question {q} of {set_name}?", text, created))
                    aligned = max(0.0, min(100.0, rng.gauss(80 - step / 40, 20)))
                    status = "ok" if rng.random() > 0.02 else rng.choice(["refusal", "unparseable"])
                    judgment_rows.append((answer_id, "aligned", aligned if status == "ok" else None, status, created))
                    judgment_rows.append((answer_id, "coherent", rng.uniform(40, 100), "ok", created))
                    if len(answer_rows) >= 50_000:
                        flush()
    flush()
    runs = [{"key": key} for _, key, _, _ in slots if key != "base"]
    conn.execute("INSERT INTO meta VALUES ('plan', ?)", (json.dumps({"runs": list({r["key"]: r for r in runs}.values())}),))
    conn.execute("COMMIT")
    store.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        start = time.perf_counter()
        build_store(run, args.answers)
        build_s = time.perf_counter() - start
        store_mb = (run / "emkit.sqlite").stat().st_size / 2**20
        result = subprocess.run([sys.executable, "-c", MEASURE, str(run)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        m = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n{m['rows']:,} judged answers (store {store_mb:.0f} MB, built in {build_s:.0f} s); "
          f"{m['steps']} checkpoint rows")
    print(f"{'':34}{'emkit':>10}{'target':>10}{'ratio':>8}")
    for name, value, target, unit in (("summary tables", m["tables_s"], 10, "s"),
                                      ("HTML report", m["report_s"], 30, "s"),
                                      ("report size", m["size"] / 2**20, 10, "MB"),
                                      ("peak memory", m["peak_mb"] / 1024, 4, "GB")):
        print(f"{name:34}{value:>8.1f} {unit:<2}{target:>7} {unit:<2}{value / target:>7.2f}")
    print(f"ratio to the budget: tables {m['tables_s'] / 10:.2f}, report {m['report_s'] / 30:.2f}, "
          f"size {m['size'] / 2**20 / 10:.2f}, memory {m['peak_mb'] / 1024 / 4:.2f} (under 1 meets the target)")


if __name__ == "__main__":
    main()
