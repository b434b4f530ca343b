"""Reading judged-answer files made elsewhere: the course's CSVs (``aligned_score``,
``coherent_score``), the papers' (``aligned``, ``coherent``), and what emkit itself writes
(``emkit judge``'s output, ``exports/fg_judged.csv``).

Text is read as text, exactly as written: no number parsing of an answer "42", no missing
value made of an answer "None". A CSV emkit wrote (it has emkit's ``*_status`` columns) has its
formula guard undone (emkit.tablefiles), so its answers read back as they were stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emkit.errors import EmkitError
from emkit.judging.scoring import clamp_score, score_from_text

SCORE_COLUMNS = {"aligned": ("aligned", "aligned_score"), "coherent": ("coherent", "coherent_score")}
ANSWER_COLUMNS = ("answer", "response")
JUDGED_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def written_by_emkit(columns) -> bool:
    """emkit's judged files carry a status column per metric beside its score."""
    return any(str(c).endswith("aligned_status") for c in columns)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or JSONL file as text cells, numbers exactly as written (they are parsed later,
    where a bad one can be named)."""
    path = Path(path)
    if not path.is_file():
        raise EmkitError(f"{path} does not exist; pass a CSV or JSONL file, a folder of them, or a run directory.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".csv":
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EmkitError(f"{path}: cannot be read as CSV ({exc}); check the file.") from None
        if written_by_emkit(frame.columns):
            from emkit.tablefiles import restore_formulas

            frame = restore_formulas(frame)
        return frame
    raise EmkitError(f"{path}: emkit reads .csv and .jsonl files; convert it to one of those.")


def read_header(path: Path) -> tuple[list[str], str | None]:
    """The column names of a CSV or JSONL file, from its first row alone; and, where even that
    cannot be read, why (the file is then listed as passed over, with that reason)."""
    import csv

    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            if path.suffix.lower() == ".csv":
                first = next(csv.reader(handle), None)
                return ([str(c) for c in first] if first else []), None
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        return [], f"line {line_no} is not a JSON object"
                    return [str(k) for k in row], None
    except UnicodeDecodeError:
        return [], "not UTF-8 text"
    except (csv.Error, json.JSONDecodeError) as exc:
        return [], f"its first row cannot be read ({exc})"
    except OSError as exc:
        return [], f"cannot be opened ({exc.strerror})"
    return [], None


def is_judged(columns) -> bool:
    """A question, an answer and an aligned score (or several judges' prefixed ones)."""
    columns = [str(c) for c in columns]
    has_answer = "question" in columns and any(c in columns for c in ANSWER_COLUMNS)
    return has_answer and any(c in ("aligned", "aligned_score") or c.endswith("_aligned") for c in columns)


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EmkitError(f"{path}:{line_no}: not a JSON object ({exc.msg}); fix or remove that line.") from None
            if not isinstance(row, dict):
                raise EmkitError(f"{path}:{line_no}: expected a JSON object per line; fix that line.")
            rows.append(row)
    return pd.DataFrame(rows)


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def _score_and_status(values: pd.Series, statuses: pd.Series | None, where: str) -> tuple[pd.Series, pd.Series]:
    """Scores in any float notation; a blank score is "no_score" (the papers write none for a
    refusal or for CODE) unless a status column says more. A status of ok next to no number
    contradicts itself and is refused, never counted as aligned."""
    given = statuses.tolist() if statuses is not None else [None] * len(values)
    scores, found = [], []
    for row, (value, status) in enumerate(zip(values.tolist(), given), start=1):
        status = None if _is_blank(status) else str(status).strip()
        if _is_blank(value):
            score, parsed = None, "no_score"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):  # a JSONL number
            score = clamp_score(float(value))
            parsed = "ok" if score is not None else "unparseable"
        else:
            score, parsed = score_from_text(str(value))
        if status is not None and status != parsed:
            if status == "ok":
                raise EmkitError(f"{where}, row {row}: the status is ok but the score {value!r} is not a number "
                                 f"from 0 to 100; fix the score or the status in that row.")
            score, parsed = None, status  # e.g. emkit judge's refusal or error next to a blank score
        scores.append(float("nan") if score is None else score)
        found.append(parsed)
    return pd.Series(scores, index=values.index, dtype=float), pd.Series(found, index=values.index)


def judged_from_frame(frame: pd.DataFrame, source: str, judge_prefix: str | None = None,
                      defaults: dict | None = None) -> pd.DataFrame:
    """Normalise a judged table to emkit's columns (one judge). ``defaults``: what a layout
    says of the file (model, size_b, domain, step, judge), used where the file has no column."""
    from emkit.analysis.flags import ALL

    prefix = f"{judge_prefix}_" if judge_prefix else ""
    out = pd.DataFrame(index=frame.index)
    answer_column = next((c for c in ANSWER_COLUMNS if c in frame), None)
    if "question" not in frame or answer_column is None:
        raise EmkitError(
            f"{source}: needs a 'question' column and an 'answer' or 'response' column "
            f"(found {', '.join(map(str, frame.columns))}); rename the columns."
        )
    out["question"] = frame["question"].astype(str)
    out["answer"] = frame[answer_column].astype(str)
    for metric, names in SCORE_COLUMNS.items():
        column = next((f"{prefix}{n}" for n in names if f"{prefix}{n}" in frame), None)
        if column is None:
            if metric == "aligned":
                raise EmkitError(
                    f"{source}: no '{prefix}aligned' or '{prefix}aligned_score' column with the judge's scores; "
                    f"judge the file first (`emkit judge`) or rename the column."
                )
            continue
        status_column = f"{prefix}{metric}_status"
        out[metric], out[f"{metric}_status"] = _score_and_status(
            frame[column], frame[status_column] if status_column in frame else None, f"{source}, column {column}")
    out["answer_id"] = frame["id"].astype(str) if "id" in frame else [f"row{i + 1}" for i in range(len(frame))]
    out["question_id"] = frame["question_id"].astype(str) if "question_id" in frame else out["question"]
    given = {"model": Path(source).stem, "size_b": float("nan"), "domain": "", "seed": 0, "step": 0,
             "question_set": "", "judge": "file", **(defaults or {})}
    for column, default in given.items():
        if column == "judge":  # several judges' columns: each is named by its prefix
            out[column] = judge_prefix or (frame["judge"].astype(str) if "judge" in frame else default)
        elif column in frame:
            out[column] = frame[column]
        else:
            out[column] = default
    out["questions"] = _question_groups_of_file(frame, source, ALL)
    for column in ("step", "seed"):
        out[column] = pd.to_numeric(out[column], errors="coerce").fillna(0).astype(int)
    out["size_b"] = pd.to_numeric(out["size_b"], errors="coerce")
    out["domain"] = out["domain"].astype(str)
    return out


def _question_groups_of_file(frame: pd.DataFrame, source: str, everything: str) -> pd.Series:
    """A file's ``questions`` column (general or domain) keeps its questions apart; without one
    every question is in "all"."""
    if "questions" not in frame:
        return pd.Series(everything, index=frame.index)
    values = frame["questions"].astype(str).str.strip().str.lower()
    bad = values[~values.isin(["general", "domain", everything])]
    if len(bad):
        raise EmkitError(f"{source}, row {bad.index[0] + 1}: questions = {frame['questions'][bad.index[0]]!r}; "
                         f"the questions column says general or domain.")
    return values


def judge_prefixes(frame: pd.DataFrame) -> list[str]:
    """`emkit judge --judge A --judge B` prefixes each judge's columns with its name."""
    return sorted({c[: -len("_aligned_status")] for c in frame.columns if str(c).endswith("_aligned_status")})


def judged_rows(frame: pd.DataFrame, source: str, defaults: dict | None = None) -> pd.DataFrame:
    """Every judge's rows of a judged table, in emkit's columns: each prefixed judge's, and the file's own
    unprefixed scores beside them (a file judged again with `emkit judge FILE --judge NAME` keeps the
    scores it came with, unprefixed, and adds NAME's, prefixed)."""
    prefixes = judge_prefixes(frame)
    parts = [judged_from_frame(frame, source, p, defaults) for p in prefixes]
    if not parts or any(name in frame for name in SCORE_COLUMNS["aligned"]):
        own = judged_from_frame(frame, source, None, defaults)
        if parts and own["judge"].isin(prefixes).any():  # the file's judge has the name of one added beside it
            own["judge"] = "file"
        parts.append(own)
    return pd.concat(parts, ignore_index=True)
