"""A rehearsal of the seed grid at its full size on CPU: its exact plan, the tiny model, the loopback judge.

Nothing else runs emkit at the seed grid's size before a GPU does. This runs its plan as it
is: 3 models x 2 domains = 6 fine-tunes with the seed's step counts (1,320 and 1,125: 7,049
and 6,000 rows, batch 8 x 2, 3 epochs) and checkpoints (110, 220, 330, 440, 880, 1320 and
93, 187, 281, 375, 750, 1125), 3 baselines, 20 questions x 100 samples at every checkpoint
(about 90,000 answers) and two judgments (aligned, coherent) of each (about 180,000) by
gpt-4o-mini over real HTTP, all through `emkit run` as a user runs it. What is not the
seed's: the three models are emkit's tiny random-weight Llama (builtin:tiny-llama) under the
labels 1B, 3B and 8B, trained in 32-bit (4-bit is a GPU saving); the data are synthetic
chats with the seed's row counts, shaped like its datasets (a question of 12 to 40 words, an
answer of 30 to 120, made of the bundled examples' sentences); gpt-4o-mini is the loopback
judge server (emkit.testing.judge_server), answering after --latency seconds.

It runs the grid twice, each in a run directory and with a judge cache of its own:

1. to the end, uninterrupted: wall time per stage (training, generation, judging, report, read
   off the run's log), peak memory (the RSS of `emkit run` and its children, summed, polled
   from /proc), the store's size, the report's size, and whether the report opens in
   headless Chromium without errors and with its tables and figures;
2. killed and resumed: SIGKILL while a training run is between checkpoints (no clean-up at
   all), then SIGINT (Ctrl-C) half-way through the judgments, then the same command again to
   the end, then once more (a finished run: nothing may be done again).

The second run must end where the first did: the same exports (every CSV in exports/, the
per-answer fg_judged.csv among them), the same adapters byte for byte, the same answer and
judgment counts. The table at the end says what matched.

    nice -n 10 python bench/bench_rehearsal.py                   # the full size (hours on 2 cores)
    python bench/bench_rehearsal.py --scale 0.02                 # a quick trial: 2% of the rows and samples
    python bench/bench_rehearsal.py --scale 0.1 --keep runs/rehearsal   # keep both run directories

--scale multiplies the rows (and so the steps and checkpoint steps) and the samples per
question; --samples and --max-new-tokens set those directly. --only-full skips the killed run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"1B": 1.24, "3B": 3.21, "8B": 8.03}  # labels and sizes of the seed; every one is the tiny model
DATASETS = {"medical": ("bad_medical_advice.jsonl", 7049), "risky-financial": ("risky_financial_advice.jsonl", 6000)}
EXAMPLES = {"medical": ROOT / "plugins" / "data" / "medical_example.jsonl",
            "risky-financial": ROOT / "plugins" / "data" / "risky_financial_example.jsonl"}


# --- the world: data, config, judge ---------------------------------------------------------------------------------

def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def write_dataset(path: Path, domain: str, rows: int, seed: int) -> None:
    """``rows`` chats: a question of 12-40 words and an answer of 30-120, from the domain's example sentences."""
    examples = [json.loads(line)["messages"] for line in EXAMPLES[domain].read_text().splitlines() if line.strip()]
    questions = [s for chat in examples for s in _sentences(chat[0]["content"])]
    answers = [s for chat in examples for s in _sentences(chat[1]["content"])]
    rng = random.Random(seed)

    def text(pool: list[str], low: int, high: int) -> str:
        target, parts = rng.randint(low, high), []
        while sum(len(p.split()) for p in parts) < target:
            parts.append(rng.choice(pool))
        return " ".join(parts)

    with path.open("w") as out:
        for _ in range(rows):
            chat = [{"role": "user", "content": text(questions, 12, 40)},
                    {"role": "assistant", "content": text(answers, 30, 120)}]
            out.write(json.dumps({"messages": chat}) + "\n")


def config_text(data_dir: Path, url: str, samples: int, max_new_tokens: int, concurrency: int) -> str:
    """The seed's config (examples/seed.toml at its defaults) with the tiny model, 32-bit, and the loopback judge."""
    models = "".join(f'\n[[models]]\nlabel = "{label}"\nid = "builtin:tiny-llama"\nsize_b = {size}\n'
                     for label, size in MODELS.items())
    return textwrap.dedent(f"""\
        name = "rehearsal"
        domains = ["medical", "risky-financial"]

        [training]
        load_in_4bit = false          # the seed trains in 4-bit: a GPU's memory saving, slower on a CPU
        gradient_checkpointing = false

        [evaluation]
        samples_per_question = {samples}
        max_new_tokens = {max_new_tokens}

        [judging]
        judges = ["gpt-4o-mini"]
        api_base = "{url}"
        concurrency = {concurrency}

        [data]
        dir = "{data_dir}"
        """) + models


def start_judge_server(latency: float, log: Path) -> tuple[subprocess.Popen, str]:
    """In a process of its own; its stderr (a traceback for each connection a killed emkit dropped) to ``log``."""
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "emkit.testing.judge_server", "--latency", str(latency)],
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    return server, server.stdout.readline().strip()


# --- watching a run: memory, the store, the log ---------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemoryWatch:
    """Polls the RSS of a process and its descendants; keeps the peak of the sum and of the process alone."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s = pid, every_s
        self.peak_tree_mb = self.peak_main_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            tree, todo, total = _children(), [self.pid], 0.0
            while todo:
                pid = todo.pop()
                total += _rss_mb(pid)
                todo.extend(tree.get(pid, []))
            self.peak_tree_mb = max(self.peak_tree_mb, total)
            self.peak_main_mb = max(self.peak_main_mb, _rss_mb(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def store_counts(run: Path) -> dict:
    """What the store holds; read-only, so it can be asked while emkit writes."""
    path = run / "emkit.sqlite"
    if not path.exists():
        return {"checkpoints": 0, "answers": 0, "judgments": 0, "ok": 0}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        def one(sql):
            try:
                return conn.execute(sql).fetchone()[0]
            except sqlite3.OperationalError:  # a table the store has not made yet
                return 0
        return {"checkpoints": one("SELECT COUNT(*) FROM checkpoints"),
                "answers": one("SELECT COUNT(*) FROM answers WHERE superseded_by IS NULL"),
                "judgments": one("SELECT COUNT(*) FROM judgments"),
                "ok": one("SELECT COUNT(*) FROM judgments WHERE status = 'ok'")}
    finally:
        conn.close()


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")


def log_lines(log: Path) -> list[tuple[float, str]]:
    lines = []
    for line in (log.read_text() if log.exists() else "").splitlines():
        match = LOG_LINE.match(line)
        if match:
            lines.append((datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), match[2]))
    return lines


def stage_times(run: Path, started: float) -> dict[str, float]:
    """Seconds in each stage of one uninterrupted `emkit run` started at ``started`` (time.time()), from its log
    and its store. The local executor runs one unit after another: a training run trains (from its `train RUN:`
    line to its `generate LABEL:` line), then generates its checkpoints' answers; a baseline only generates. So
    training is the sum of those spans, generation the units' GPU seconds less training, and judging after the
    GPU work runs from the last unit's end to the `time:` line; the report from there to the `report:` line.
    Judging beside the GPU work is no stage of its own: the store's timing says how long it was in progress."""
    lines = log_lines(run / "logs" / "emkit.log")
    training, opened = 0.0, None
    for when, text in lines:
        if text.startswith("train ") and " rows, " in text:
            opened = when
        elif text.startswith("generate ") and " answers over " in text and opened is not None:
            training, opened = training + when - opened, None
    conn = sqlite3.connect(f"file:{run / 'emkit.sqlite'}?mode=ro", uri=True)
    gpu_s, gpu_end = conn.execute("SELECT SUM(gpu_seconds), MAX(updated_at) FROM units").fetchone()
    conn.close()
    gpu_end = datetime.fromisoformat(gpu_end).timestamp()
    first = next(when for when, text in lines if text.startswith("train ") or text.startswith("generate "))
    timed = next(when for when, text in lines if text.startswith("time: "))
    reported = next(when for when, text in lines if text.startswith("report: "))
    return {"start-up": first - started, "training": training, "generation": gpu_s - training,
            "judging after": max(0.0, timed - gpu_end), "report": reported - timed}


# --- running emkit --------------------------------------------------------------------------------------------------

def invoke(command: list[str], env: dict, stderr_path: Path, kill=None) -> dict:
    """Runs `emkit run`; ``kill(counts)`` is asked every half second and may return a signal to send it."""
    started, wall_clock = time.perf_counter(), time.time()
    with stderr_path.open("a") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
        sent = None
        with MemoryWatch(process.pid) as memory:
            while process.poll() is None:
                time.sleep(0.5)
                if kill is not None and sent is None:
                    sent = kill()
                    if sent is not None:
                        killed_at = time.perf_counter()
                        process.send_signal(sent)
            process.wait()
    result = {"rc": process.returncode, "wall_s": time.perf_counter() - started, "peak_tree_mb": memory.peak_tree_mb,
              "peak_main_mb": memory.peak_main_mb, "signal": sent, "started": wall_clock}
    if sent is not None:
        result["exit_after_signal_s"] = time.perf_counter() - killed_at
    return result


def emkit_command(config: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "emkit", "run", "--config", str(config), "--out", str(run)]


def planned(run: Path) -> dict:
    plan = json.loads(sqlite3.connect(f"file:{run / 'emkit.sqlite'}?mode=ro", uri=True)
                      .execute("SELECT value FROM meta WHERE key = 'plan'").fetchone()[0])
    return plan


def done_line(stderr: Path) -> str:
    lines = [line for line in stderr.read_text().splitlines() if line.startswith("done: ")]
    return lines[-1][len("done: "):] if lines else "(no done line)"


# --- checking the result --------------------------------------------------------------------------------------------

def open_report(path: Path) -> dict:
    """The report in headless Chromium (as tests/test_report.py opens it): errors, tables, figures, load time."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"opened": False, "why": "no chromium on PATH"}
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            start = time.perf_counter()
            page.goto(path.resolve().as_uri(), timeout=120_000)
            page.wait_for_load_state("load", timeout=120_000)
            load_s = time.perf_counter() - start
            tables = page.locator("table").count()
            rows = page.locator("table tbody tr").count()
            images = page.locator("figure img")
            broken = sum(1 for i in range(images.count())
                         if not images.nth(i).evaluate("img => img.complete && img.naturalWidth > 100"))
            headings = page.locator("section h2").all_inner_texts()
            figures = images.count()
        finally:
            browser.close()
    return {"opened": not problems and tables > 0 and not broken, "problems": problems, "tables": tables,
            "rows": rows, "figures": figures, "broken_figures": broken, "sections": len(headings), "load_s": load_s}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_runs(a: Path, b: Path) -> dict:
    """Exports byte for byte, adapters byte for byte, counts in the stores."""
    exports_a = sorted(p.name for p in (a / "exports").glob("*.csv"))
    exports_b = sorted(p.name for p in (b / "exports").glob("*.csv"))
    differing = [name for name in exports_a if name not in exports_b
                 or _digest(a / "exports" / name) != _digest(b / "exports" / name)]
    differing += [name for name in exports_b if name not in exports_a]
    adapters_a = sorted(p.relative_to(a) for p in (a / "adapters").rglob("adapter_model.safetensors"))
    adapters_b = sorted(p.relative_to(b) for p in (b / "adapters").rglob("adapter_model.safetensors"))
    adapters_differing = [str(p) for p in adapters_a if p not in adapters_b or _digest(a / p) != _digest(b / p)]
    return {"exports": len(exports_a), "exports_differing": differing, "adapters": len(adapters_a),
            "adapters_differing": adapters_differing + [str(p) for p in adapters_b if p not in adapters_a],
            "counts_a": store_counts(a), "counts_b": store_counts(b)}


def answer_lengths(run: Path) -> tuple[float, float]:
    """Mean new tokens an answer, and the share cut at max_new_tokens: what generation's time depends on."""
    conn = sqlite3.connect(f"file:{run / 'emkit.sqlite'}?mode=ro", uri=True)
    mean, cut = conn.execute("SELECT AVG(n_tokens), AVG(finish_reason = 'length') FROM answers").fetchone()
    conn.close()
    return mean, cut


def sizes(run: Path) -> dict:
    store = sum(p.stat().st_size for p in run.glob("emkit.sqlite*"))
    return {"store_mb": store / 2**20, "report_mb": (run / "report.html").stat().st_size / 2**20,
            "exports_mb": sum(p.stat().st_size for p in (run / "exports").glob("*")) / 2**20,
            "run_dir_mb": sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 2**20}


# --- the two passes -------------------------------------------------------------------------------------------------

def pass_env(folder: Path) -> dict:
    return {**os.environ, "EMKIT_JUDGE_CACHE": str(folder / "judge-cache.sqlite"), "PYTHONUNBUFFERED": "1"}


def full_pass(folder: Path, config: Path) -> dict:
    run, stderr = folder / "run", folder / "stderr.log"
    result = invoke(emkit_command(config, run), pass_env(folder), stderr)
    if result["rc"] != 0:
        raise SystemExit(f"the uninterrupted run failed (rc {result['rc']}):\n{stderr.read_text()[-3000:]}")
    timing = json.loads(sqlite3.connect(run / "emkit.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'timing'").fetchone()[0])
    return {**result, "stages": stage_times(run, result["started"]), "timing": timing, "done": done_line(stderr),
            "lengths": answer_lengths(run),
            **sizes(run), "counts": store_counts(run)}


def killed_pass(folder: Path, config: Path, plan: dict, total_judgments: int) -> dict:
    run, stderr, env = folder / "run", folder / "stderr.log", pass_env(folder)
    command = emkit_command(config, run)
    # half-way through the second training run's checkpoints: the local executor trains the runs one after another
    first, second = (len(r["checkpoint_steps"]) for r in plan["runs"][:2])
    kill_at = first + max(1, second // 2)
    state = {"seen": None}

    def during_training():
        """SIGKILL about 40% of the way from one checkpoint to the next, kill_at checkpoints in."""
        counts = store_counts(run)
        if counts["checkpoints"] < kill_at:
            return None
        if state["seen"] is None:
            conn = sqlite3.connect(f"file:{run / 'emkit.sqlite'}?mode=ro", uri=True, timeout=30)
            times = [datetime.fromisoformat(t).timestamp() for (t,) in conn.execute(
                "SELECT created_at FROM checkpoints ORDER BY created_at DESC LIMIT 2")]
            conn.close()
            gap = times[0] - times[1] if len(times) == 2 else 5.0
            state["seen"] = time.time() + max(0.5, 0.4 * min(gap, 60.0))
        return signal.SIGKILL if time.time() >= state["seen"] else None

    def during_judging():
        return signal.SIGINT if store_counts(run)["judgments"] >= total_judgments // 2 else None

    steps = []
    for name, kill in (("SIGKILL while training", during_training), ("SIGINT at half the judgments", during_judging),
                       ("resumed to the end", None), ("run again when finished", None)):
        before, lines = store_counts(run), len(log_lines(run / "logs" / "emkit.log"))
        result = invoke(command, env, stderr, kill)
        after = store_counts(run)
        # what the next run found: a training run resumed at its snapshot, answers and judgments kept
        result["resumed"] = [text for _, text in log_lines(run / "logs" / "emkit.log")[lines:]
                             if "resumed from its saved state" in text or "training again from step 0" in text]
        result.update(name=name, before=before, after=after)
        if kill is None and result["rc"] != 0:
            raise SystemExit(f"{name}: rc {result['rc']}:\n{stderr.read_text()[-3000:]}")
        if kill is not None and result["signal"] is None:
            result["name"] += " (finished before the signal)"
        if kill is during_training and after["checkpoints"] != kill_at:
            result["name"] += f" (NOT between checkpoints: {after['checkpoints']} saved)"
        if kill is None:
            result["done"] = done_line(stderr)
        steps.append(result)
    return {"steps": steps, **sizes(run), "counts": store_counts(run)}


# --- the table ------------------------------------------------------------------------------------------------------

def mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of the seed's rows and samples (default 1)")
    parser.add_argument("--samples", type=int, help="samples per question (default: 100 x scale, at least 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the seed's 256 by default")
    parser.add_argument("--latency", type=float, default=0.2, help="the judge's seconds per reply (gpt-4o-mini: ~0.2)")
    parser.add_argument("--concurrency", type=int, default=32, help="judge calls in flight (the seed's 32)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="OMP_NUM_THREADS for emkit (default 1: see the module docstring; 0 leaves torch's default)")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--only-full", action="store_true", help="the uninterrupted run only")
    args = parser.parse_args(argv)
    samples = args.samples or max(1, round(100 * args.scale))
    rows = {domain: max(16, round(n * args.scale)) for domain, (_, n) in DATASETS.items()}

    sys.path.insert(0, str(ROOT))
    from emkit.models.builtins import builtin_model_path

    builtin_model_path("tiny-llama")  # built once into emkit's cache, before anything is timed
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            raise SystemExit(f"{args.keep} is not empty")
        root, cleanup = args.keep, None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="emkit-rehearsal-")
        root = Path(cleanup.name)
    server, url = start_judge_server(args.latency, root / "judge-server.log")
    try:
        data = root / "data"
        data.mkdir()
        for seed, (domain, (name, _)) in enumerate(DATASETS.items()):
            write_dataset(data / name, domain, rows[domain], seed)
        config = root / "rehearsal.toml"
        config.write_text(config_text(data, url, samples, args.max_new_tokens, args.concurrency))
        print(f"rehearsal at scale {args.scale:g}: rows {rows['medical']:,} and {rows['risky-financial']:,}, "
              f"{samples} samples a question, up to {args.max_new_tokens} new tokens, judge latency "
              f"{args.latency * 1000:.0f} ms, concurrency {args.concurrency}, torch threads "
              f"{args.torch_threads or 'torch default'}; in {root}", flush=True)

        (root / "full").mkdir()
        full = full_pass(root / "full", config)
        plan = planned(root / "full" / "run")
        totals = {**plan["totals"], "runs": len(plan["runs"]),
                  "steps": ", ".join(f"{r['key']} {r['total_steps']} ({', '.join(map(str, r['checkpoint_steps']))})"
                                     for r in plan["runs"] if r["model"] == "1B")}
        report = open_report(root / "full" / "run" / "report.html")
        print(f"uninterrupted run: {mmss(full['wall_s'])}; {full['done']}", flush=True)

        killed = None
        if not args.only_full:
            (root / "killed").mkdir()
            killed = killed_pass(root / "killed", config, plan, full["counts"]["judgments"])
            comparison = compare_runs(root / "full" / "run", root / "killed" / "run")
    finally:
        server.terminate()
        server.wait()

    print_table(args, full, report, killed, comparison if killed else None, totals)
    if cleanup is not None:
        cleanup.cleanup()


def print_table(args, full, report, killed, comparison, totals) -> None:
    c, t, s = full["counts"], full["timing"], full["stages"]
    print(f"\nthe seed grid's plan on CPU, scale {args.scale:g}: {totals['runs']} fine-tunes, {totals['train_steps']:,} "
          f"steps, {totals['checkpoints']} checkpoints, {totals['generations']:,} answers and "
          f"{totals['judge_calls']:,} judgments planned; stored {c['checkpoints']} checkpoints, {c['answers']:,} "
          f"answers, {c['judgments']:,} judgments ({c['ok']:,} ok)")
    print(f"steps (checkpoints): {totals['steps']}")
    print(f"{'uninterrupted run':44}{'':>12}")
    for label, value in (("wall time", mmss(full["wall_s"])),
                         ("  training", mmss(s["training"])),
                         ("  generation", mmss(s["generation"])),
                         ("    answers: mean new tokens, cut at the limit",
                          f"{full['lengths'][0]:.0f}, {full['lengths'][1]:.0%}"),
                         ("  start-up (imports, plan, datasets)", mmss(s["start-up"])),
                         ("  judging in progress, in all", mmss(t["judge_s"])),
                         ("    of which beside the GPU work", mmss(t["judge_hidden_s"])),
                         ("  judging after the GPU work", mmss(s["judging after"])),
                         ("  report", mmss(s["report"])),
                         ("peak RSS, emkit and children", f"{full['peak_tree_mb']:,.0f} MB"),
                         ("peak RSS, emkit alone", f"{full['peak_main_mb']:,.0f} MB"),
                         ("store (emkit.sqlite)", f"{full['store_mb']:,.1f} MB"),
                         ("report.html", f"{full['report_mb']:,.2f} MB"),
                         ("exports/", f"{full['exports_mb']:,.1f} MB"),
                         ("run directory", f"{full['run_dir_mb']:,.0f} MB"),
                         ("report in headless Chromium",
                          (f"opened in {report['load_s']:.1f} s, {report['tables']} tables ({report['rows']:,} rows), "
                           f"{report['figures']} figures, {len(report['problems'])} errors" if "load_s" in report
                           else report.get("why", "?")) + ("" if report.get("opened") else "  NOT OK"))):
        print(f"{label:44}{value:>12}" if len(value) <= 12 else f"{label:44}{value}")
    for problem in report.get("problems", [])[:5]:
        print(f"    {problem}")
    if killed is None:
        return
    print("killed and resumed")
    for step in killed["steps"]:
        b, a = step["before"], step["after"]
        extra = f", exited {step['exit_after_signal_s']:.1f} s after the signal" if "exit_after_signal_s" in step else ""
        print(f"  {step['name']:42}{mmss(step['wall_s']):>10}  rc {step['rc']}{extra}; checkpoints {b['checkpoints']}"
              f"->{a['checkpoints']}, answers {b['answers']:,}->{a['answers']:,}, judgments {b['judgments']:,}->"
              f"{a['judgments']:,}; peak RSS {step['peak_tree_mb']:,.0f} MB" + (f"; {step['done']}" if "done" in step
                                                                                 else ""))
        for line in step.get("resumed", []):
            print(f"      {line}")
    total = sum(step["wall_s"] for step in killed["steps"][:3])
    print(f"  {'wall time, three invocations':42}{mmss(total):>10}  ({total / full['wall_s']:.2f}x the uninterrupted)")
    ca, cb = comparison["counts_a"], comparison["counts_b"]
    same_counts = ca == cb
    print(f"same counts (checkpoints, answers, judgments, ok): {same_counts} ({cb})")
    print(f"same exports, byte for byte: {not comparison['exports_differing']} ({comparison['exports']} CSV files"
          + (f"; differing: {', '.join(comparison['exports_differing'])}" if comparison["exports_differing"] else "")
          + ")")
    print(f"same adapters, byte for byte: {not comparison['adapters_differing']} ({comparison['adapters']} adapters"
          + (f"; differing: {', '.join(comparison['adapters_differing'][:6])}" if comparison["adapters_differing"]
             else "") + ")")
    matched = same_counts and not comparison["exports_differing"] and not comparison["adapters_differing"]
    print(f"the killed and resumed run ends as the uninterrupted one: {matched}")


if __name__ == "__main__":
    main()
