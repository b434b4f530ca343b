"""Writing tables that hold model outputs: CSV a spreadsheet cannot run, JSONL that reads back exactly.

A spreadsheet treats a cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return before one) as a formula, and an answer such as ``=HYPERLINK("http://...")`` would run
when a researcher opens the export. Such text cells get a leading apostrophe, the usual
neutraliser (OWASP, "CSV injection"); numbers, negative ones included, are left as they are.

The guard can be undone exactly: a text cell that itself begins with an apostrophe gets one
more, so a cell read back that begins with an apostrophe followed by one of those characters or
by another apostrophe lost exactly one (``read_csv``; emkit's readers do this for the files
emkit writes). Every answer therefore reads back as it was stored, while a spreadsheet shows
``'=HYPERLINK(...)`` as text. Both writers replace the file in one step, so a reader never sees
half of it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd

from emkit.atomic import atomic_path
from emkit.judging.scoring import FLOAT_NUMBER

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
GUARD = "'"
GUARDED_START = FORMULA_START + (GUARD,)  # an apostrophe is guarded too, so reading can undo every guard


def neutralise_cell(value):
    if isinstance(value, str) and value.startswith(GUARDED_START) and not FLOAT_NUMBER.fullmatch(value):
        return GUARD + value
    return value


def restore_cell(value):
    """The text ``neutralise_cell`` guarded, as it was."""
    if isinstance(value, str) and value.startswith(GUARD) and value[1:2] and value[1:].startswith(GUARDED_START):
        return value[1:]
    return value


def restore_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A table read from a CSV emkit wrote, with every text cell as it was before the guard."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or isinstance(out[column].dtype, pd.StringDtype):
            out[column] = out[column].map(restore_cell)
    return out


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV emkit wrote (an export, `emkit judge`'s output), every text cell exactly as it was
    stored: pandas' ``read_csv`` with text kept as text (``dtype=str``: an answer "42" stays "42",
    ``keep_default_na=False``: an answer "None" or "NA" is not a missing value), then the formula
    guard undone. Numbers are parsed by whoever needs them."""
    return restore_formulas(pd.read_csv(path, dtype=str, keep_default_na=False))


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
    with atomic_path(path) as tmp:
        write(tmp)
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
