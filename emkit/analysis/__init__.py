"""Analysis: EM rates with intervals, per step, question and seed, and judge agreement.

``emkit.load(path, ...)`` returns the same tables the report and the exports are made of. A
source is a run directory, a file of judged answers made elsewhere (the course's CSV with
``aligned_score``, ``coherent_score``; the papers' with ``aligned``, ``coherent``; what ``emkit
judge`` writes), or a folder of them. This module is the public API; the work is done in rooms:

- loading: ``store_reader`` (a run's store, read-only), ``joins`` (its Arrow tables joined into
  one row per answer and judge), ``runs`` (a run directory: ``load_run``); ``files`` (judged
  files), ``layouts`` (what a results tree's folders mean), ``sources`` (finding and combining
  many sources: ``load_source``, ``load_sources``, ``discover``);
- ``flags``: the EM definition (emkit.em) applied to every answer, the flags every count sums;
- ``tables``: the tables (``RunTables``, ``build_tables``): counts per question rolled up to
  checkpoints, question sets, runs and seeds pooled;
- statistics: ``stats`` (the closed-form ones: Wilson's interval, Newcombe's difference of two
  independent rates, Cohen's kappa, Spearman), ``bootstrap`` (the cluster bootstrap's intervals,
  the paired difference of two rates on the same questions, the changes between checkpoints),
  ``changepoints`` (where EM jumps, with permutation tests), ``agreement`` (judge against judge);
- ``course`` (the course's own columns), ``adapters`` (the LoRA weights' trajectory) and
  ``compare`` (two runs side by side).
"""

from __future__ import annotations

from emkit.analysis.files import read_table
from emkit.analysis.runs import library_versions, load_run
from emkit.analysis.sources import discover, load_judged_file, load_source, load_sources
from emkit.analysis.tables import RunTables
from emkit.em import NAMED_DEFINITIONS, EMDefinition, em_definition

__all__ = ["EMDefinition", "NAMED_DEFINITIONS", "RunTables", "discover", "em_definition", "library_versions",
           "load_judged_file", "load_run", "load_source", "load_sources", "read_table"]
