"""Which answers a labeller labels, and in what order.

A uniform sample of a run's answers holds few misaligned ones (EM rates are often a few percent),
too few to say how well the judges find them. So the sample is stratified: a stratum is a model,
a checkpoint and a bin of the primary judge's aligned score ([0,30), [30,70), [70,100], or no
score: refusal, code, unparseable), and answers are dealt round-robin over the strata, one from
each in turn, so every stratum gets an equal share and a small one is taken whole. Each answer's
stratum is kept in its labeller's queue (``label_queue.stratum``), so a comparison with the judges
can weight the strata back to the run's own mix.

An answer is one unit however many judges scored it (labels are of answers), and a baseline
answer that the tables repeat once per domain is one unit too.

Draws repeat: the order within each stratum and of the strata comes from the seed and the
labeller's name, so the same command draws the same sample, a larger ``--n`` later extends the
queue with the answers the larger draw adds, and two labellers get different samples unless one
is given the other's queue (``--same-as``).
"""

from __future__ import annotations

import random

import pandas as pd

from emkit.analysis.human import BIN_ORDER, score_bin
from emkit.errors import EmkitError
from emkit.labels import LabelStore

DEFAULT_N = 200


def answer_strata(judged: pd.DataFrame, primary_judge: str) -> pd.DataFrame:
    """One row per answer: answer_id, model, step, bin and stratum, sorted (so that a draw does not
    depend on the order the rows were read in). The primary judge's score places an answer; an
    answer it did not score is placed by another judge's."""
    rows = judged[["answer_id", "model", "step", "judge", "aligned"]].astype(
        {"answer_id": str, "model": str, "judge": str})
    rows = rows.assign(other_judge=rows["judge"] != primary_judge)
    units = rows.sort_values(["other_judge", "answer_id"], kind="stable").drop_duplicates("answer_id")
    units = units.assign(step=units["step"].astype(int), bin=units["aligned"].map(score_bin))
    units["stratum"] = ("model=" + units["model"] + " step=" + units["step"].astype(str) + " aligned="
                        + units["bin"])
    units = units.assign(bin_order=units["bin"].map(BIN_ORDER))
    units = units.sort_values(["model", "step", "bin_order", "answer_id"], kind="stable")
    return units[["answer_id", "model", "step", "bin", "stratum"]].reset_index(drop=True)


def ranking(strata: pd.DataFrame, seed: int, labeller: str) -> list[tuple[str, str]]:
    """Every answer as (answer_id, stratum) in the order the sample takes them: the strata in a
    shuffled order, dealt one answer each per round, each stratum's answers shuffled. A sample of
    n is the first n, so a larger n keeps the smaller one's answers."""
    pools = []
    for stratum, group in strata.groupby("stratum", sort=False):
        ids = sorted(group["answer_id"])
        random.Random(f"{seed}/{labeller}/{stratum}").shuffle(ids)
        pools.append((stratum, ids))
    random.Random(f"{seed}/{labeller}/strata").shuffle(pools)
    order = []
    for depth in range(max((len(ids) for _, ids in pools), default=0)):
        order += [(ids[depth], stratum) for stratum, ids in pools if depth < len(ids)]
    return order


def draw(store: LabelStore, strata: pd.DataFrame, labeller: str, n: int, seed: int) -> int:
    """Extend the labeller's queue to ``n`` answers (fewer where the source has fewer); returns how
    many were added. The new answers are shown in a shuffled order, so the strata do not show in
    the sequence a labeller sees."""
    queue = store.queue(labeller)
    wanted = n - len(queue)
    if wanted <= 0:
        return 0
    have = {answer_id for answer_id, _ in queue}
    new = [item for item in ranking(strata, seed, labeller) if item[0] not in have][:wanted]
    random.Random(f"{seed}/{labeller}/order/{len(queue)}").shuffle(new)
    return store.extend_queue(labeller, new)


def queue_of(store: LabelStore, labeller: str) -> list[tuple[str, str]]:
    """A labeller's queue, or an error naming the labellers who have one."""
    queue = store.queue(labeller)
    if not queue:
        named = [name for name in store.labellers() if store.queue(name)]
        raise EmkitError(f"no labeller {labeller!r} has a sample of {store.source}"
                         + (f" (labellers there: {', '.join(named)})" if named else " (nobody has labelled it yet)")
                         + "; name one of them in --same-as.")
    return queue


def copy_queue(store: LabelStore, labeller: str, same_as: str) -> int:
    """Give ``labeller`` the answers of ``same_as``'s queue in the same order (appended after any
    queue of their own); returns how many were added."""
    return store.extend_queue(labeller, queue_of(store, same_as))


def prepare_queue(store: LabelStore, strata: pd.DataFrame, labeller: str, *, n: int | None = None,
                  same_as: str | None = None, seed: int = 0) -> int:
    """The labeller's queue made or extended as asked: ``same_as``'s queue, else ``n`` answers
    (DEFAULT_N for a labeller who has none yet; a queue is never shortened). Returns how many
    answers were added."""
    if same_as:
        return copy_queue(store, labeller, same_as)
    if n is None:
        n = 0 if store.queue(labeller) else DEFAULT_N
    return draw(store, strata, labeller, n, seed)
