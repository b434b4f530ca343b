"""Writing tables that hold model outputs: CSV a spreadsheet cannot run, JSONL that reads back exactly.

A spreadsheet treats a cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return before one) as a formula, and an answer such as ``=HYPERLINK("http://...")`` would run
when a researcher opens the export. Such text cells get a leading apostrophe, the usual
neutraliser (OWASP, "CSV injection"); numbers, negative ones included, are left as they are.
Both writers replace the file in one step, so a reader never sees half of it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pandas as pd

from emkit.judging.scoring import FLOAT_NUMBER

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_START) and not FLOAT_NUMBER.fullmatch(value):
        return "'" + value
    return value


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot start a spreadsheet formula."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or isinstance(out[column].dtype, pd.StringDtype):
            out[column] = out[column].map(neutralise_cell)
        elif isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(object).map(neutralise_cell)
    return out


def _replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Floats are written at full precision (Python's shortest repr), so they read back bit for bit.
    Every text cell is quoted: the csv module quotes only cells with a comma, a quote or a newline,
    and a model's lone carriage return would otherwise end the row for most readers."""
    return _replace(path, lambda tmp: neutralise_formulas(frame).to_csv(tmp, index=False,
                                                                         quoting=csv.QUOTE_NONNUMERIC))


def _json_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def write_jsonl(frame: pd.DataFrame, path: Path) -> Path:
    """One JSON object per row; floats by Python's repr (pandas' to_json keeps 10 digits)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in frame.to_dict("records"):
                handle.write(json.dumps({str(k): _json_value(v) for k, v in record.items()}, ensure_ascii=False))
                handle.write("\n")
    return _replace(path, write)
