"""A run's results as a fingerprint: what must stay the same when code moves but does not change
(issue 27). The tiny preset's run is fingerprinted once, before a refactoring, into
tests/reference/tiny-preset-fingerprint.json; tests/test_smoke.py compares each new run with it.

Exact parts (adapter weights, answer texts, scores, the report without its times and paths, the
exported CSVs) hold on the machine they were recorded on: another CPU (its vector instructions),
thread count or torch version can round a matmul otherwise and take another token. There the
structure is compared (which answers, checkpoints and judgments exist, the report's sections
and table headers), which no rounding moves.

    python tests/fingerprint.py RUN_DIR > tests/reference/tiny-preset-fingerprint.json
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execution_helpers import store_content  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "reference" / "tiny-preset-fingerprint.json"


def machine() -> dict:
    import torch
    import transformers

    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M)
        flags = " ".join(sorted(f for f in (found[1].split() if found else []) if re.match(r"(avx|amx|fma)", f)))
    return {"arch": platform.machine(), "cpu_flags": flags, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _no_cache_path(text: str) -> str:
    """The built-in models' folder depends on HOME (or EMKIT_CACHE): not part of the result."""
    return re.sub(r"[^\s\"'<>]*/emkit/models/", "CACHE/", text)


def _runs(rows: list) -> list:
    """Training runs without where and when the base model was built: its folder, and its
    fingerprint (file sizes and times, so a rebuilt cache has another); the weights the adapters
    were trained on are compared through the adapters themselves."""
    normalised = []
    for run_key, dataset_sha256, base_weights, finished in rows:
        weights = json.loads(_no_cache_path(base_weights))
        weights["fingerprint"] = "FOLDER-TIMES"
        normalised.append((run_key, dataset_sha256, weights, finished))
    return normalised


def normalised_report(out: Path) -> str:
    html = (out / "report.html").read_text(encoding="utf-8")
    # Figures first: they are compared as files, and a path pattern over a 1 MB base64 run
    # without spaces backtracks for minutes.
    html = _no_cache_path(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png", html))
    html = html.replace(str(out.resolve()), "RUN").replace(str(out), "RUN").replace(f"emkit report: {out.name}", "emkit report: RUN")
    html = re.sub(r"<th>Run time</th>\s*<td>.*?</td>", "<th>Run time</th><td>-</td>", html, flags=re.S)
    html = re.sub(r"<th>Made</th>\s*<td>.*?</td>", "<th>Made</th><td>-</td>", html, flags=re.S)
    return html


def fingerprint(out: Path) -> dict:
    out = Path(out)
    content = store_content(out)
    report = normalised_report(out)
    exports = {p.name: p.read_bytes().decode("utf-8") for p in sorted((out / "exports").glob("*.csv"))}
    return {
        "machine": machine(),
        "exact": {
            "checkpoints": _digest(content["checkpoints"]),
            "answers": _digest(content["answers"]),
            "judgments": _digest([j[:3] + (None if j[3] is None else round(j[3], 4),) + j[4:]
                                  for j in content["judgments"]]),
            "runs": _digest(_runs(content["runs"])),
            "report": _digest(report),
            "exports": {name: _digest(text) for name, text in exports.items()},
        },
        "structure": {
            "checkpoints": [list(c[:2]) for c in content["checkpoints"]],
            "answers": _digest([a[:3] for a in content["answers"]]),
            "answer_count": len(content["answers"]),
            "judgments": _digest([j[:3] for j in content["judgments"]]),
            "judgment_count": len(content["judgments"]),
            "report_headings": re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", report),
            "report_table_headers": _digest(re.findall(r"<th[^>]*>(.*?)</th>", report)),
            "exports": {name: text.splitlines()[0] if text else "" for name, text in exports.items()},
            "figures": sorted(p.name for p in (out / "figures").glob("*.png")),
        },
    }


def compare(out: Path, reference: dict) -> list[str]:
    """What differs from the reference: the exact parts on its machine, the structure anywhere."""
    got = fingerprint(out)
    parts = ["structure"] + (["exact"] if got["machine"] == reference["machine"] else [])
    differences = []
    for part in parts:
        for key, value in reference[part].items():
            if got[part].get(key) != value:
                differences.append(f"{part}.{key}: {got[part].get(key)!r} != recorded {value!r}")
    return differences


if __name__ == "__main__":
    print(json.dumps(fingerprint(Path(sys.argv[1])), indent=1, sort_keys=True))
