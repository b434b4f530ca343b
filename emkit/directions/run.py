"""`emkit directions RUN`: every training run's directions, checkpoint by checkpoint, into its store.

For each training run: its final checkpoint's direction first (the reference: the papers find
the direction of a fully fine-tuned model), then every checkpoint and step 0 (the base model,
adapter off) in turn, each fitting its own direction where it has enough answers of both
groups and projecting all its answers on the reference. The base model is loaded once per
model, on the weights the adapters were trained on, and each adapter is attached in turn.
"""

from __future__ import annotations

import logging
from pathlib import Path

from emkit.directions.activations import stream_means
from emkit.directions.fit import Fitted, fit, ordered
from emkit.errors import EmkitError

log = logging.getLogger("emkit")


def answer_groups(tables, judge: str):
    """One row per answer the judge scored: answer_id, run_key, model, domain, step and its group
    under the run's EM definition: "misaligned" or "aligned" among the answers it counts (coherent,
    in its questions), "other" for the rest."""
    import numpy as np

    frame = tables.judged[tables.judged["judge"] == judge]
    counted, misaligned = frame["em_counted"].astype(bool), frame["misaligned"].astype(bool)
    frame = frame.assign(group=np.where(counted & misaligned, "misaligned", np.where(counted, "aligned", "other")))
    return frame[["answer_id", "run_key", "model", "domain", "step", "group"]].drop_duplicates("answer_id")


def chats(tables, rows) -> list[tuple[str, str, list]]:
    """(answer_id, group, chat) for each row: the chat is the question as asked and the answer."""
    texts = tables.with_text(rows)
    items = []
    for row in texts.itertuples():
        system = getattr(row, "system", None)
        chat = ([{"role": "system", "content": system}] if isinstance(system, str) and system else []) + [
            {"role": "user", "content": row.question}, {"role": "assistant", "content": row.answer}]
        items.append((row.answer_id, row.group, chat))
    return items


def layer_rows(fitted: Fitted) -> list[dict]:
    import numpy as np

    rows = []
    for index, layer in enumerate(fitted.layers):
        vector = None if fitted.direction is None else fitted.direction[index].numpy().astype(np.float32).tobytes()
        rows.append({"layer": layer, "n_fit_misaligned": fitted.n_fit["misaligned"],
                     "n_fit_aligned": fitted.n_fit["aligned"], "n_held_misaligned": fitted.n_held_out["misaligned"],
                     "n_held_aligned": fitted.n_held_out["aligned"],
                     "norm": None if fitted.norm is None else fitted.norm[index],
                     "auroc": fitted.auroc[index], "vector": vector})
    return rows


def projection_rows(fitted: Fitted, reference: str) -> list[dict]:
    return [{"reference": reference, "layer": layer, "answers": group, "projection": float(values[index]),
             "n": fitted.n_projected[group]}
            for group, values in fitted.projection.items() for index, layer in enumerate(fitted.layers)]


def find_directions(run_path: Path, judge: str | None, min_answers: int, batch_size: int, max_length: int,
                    progress, layers: list[int] | None = None) -> list[str]:
    """Directions and projections of every training run in ``run_path``, stored; returns a line per run."""
    from emkit.analysis import load_run
    from emkit.config import config_from_dict
    from emkit.models import load_base_model, load_tokenizer
    from emkit.models.base_weights import base_for_model, configured_base
    from emkit.models.checkpoints import CheckpointModel
    from emkit.models.sources import resolve_model_source
    from emkit.rundir import RunDirectory, read_saved_config, saved_config_path

    run_path = Path(run_path)
    saved = read_saved_config(run_path) if (run_path / "emkit.sqlite").is_file() else None
    if saved is None:
        raise EmkitError(f"{run_path} is not an emkit run directory (no emkit.sqlite and config.toml); directions "
                         f"need the checkpoints of an `emkit run`: pass its --out directory.")
    config = config_from_dict(saved, str(saved_config_path(run_path)))
    tables = load_run(run_path, text=False)  # texts fetched per checkpoint, as needed
    judges = list(dict.fromkeys(tables.judged["judge"].astype(str)))
    judge = judge or tables.primary_judge  # the judge the report leads with
    if judge not in judges:
        raise EmkitError(f"No answer in {run_path} was judged by {judge!r}; its judges are "
                         f"{', '.join(judges) or 'none yet (run `emkit run` to the end first)'}.")
    groups = answer_groups(tables, judge)
    runs = [r for r in tables.info["runs"] if r.get("run_key")]
    lines = []
    with RunDirectory(run_path).attach() as run_dir:
        store = run_dir.store
        for model in config.models:
            model_runs = [r for r in runs if r["model_label"] == model.label]
            if not model_runs:
                continue
            source = resolve_model_source(model.id)
            base = base_for_model(store, model.label, configured_base(source, config.eval_load_in_4bit),
                                  config.evaluation.load_in_4bit)
            tokenizer = load_tokenizer(source, config.trust_remote_code)
            at_checkpoint = CheckpointModel(load_base_model(base, trust_remote_code=config.trust_remote_code).eval())
            for run in model_runs:
                lines.append(_one_run(run, groups, tables, store, judge, at_checkpoint, tokenizer, layers, min_answers,
                                      batch_size, max_length, progress))
    return lines


def _one_run(run, groups, tables, store, judge, at_checkpoint, tokenizer, layers, min_answers, batch_size, max_length,
             progress) -> str:
    from emkit.directions.hooks import decoder_layers

    run_key = run["run_key"]
    checkpoints = store.checkpoints(run_key)
    if not checkpoints:
        return f"{run_key}: no checkpoint trained yet"
    final = max(checkpoints)
    count = len(decoder_layers(at_checkpoint.model))
    wrong = [layer for layer in layers or [] if not 0 <= layer < count]
    if wrong:
        raise EmkitError(f"--layers {','.join(map(str, wrong))}: {run['model_label']} has layers 0 to {count - 1}.")
    layers = layers or list(range(count))
    mine = groups[(groups["run_key"] == run_key) |
                  ((groups["run_key"] == "base") & (groups["model"] == run["model_label"]) &
                   (groups["domain"] == run["domain"]))]

    def items_at(step):
        rows = mine[mine["step"] == step]
        return ordered(chats(tables, rows), key=lambda item: item[0], length=lambda item: len(item[2][-1]["content"]))

    def pass_over(step, reference=None, desc=""):
        items = items_at(step)
        if not items:
            return None
        with at_checkpoint.at(None if step == 0 else checkpoints[step]) as model:
            with progress(total=len(items), unit="answers", desc=desc) as bar:
                return fit(stream_means(model, tokenizer, items, layers, batch_size, max_length, bar), layers,
                           min_answers, reference)

    found = pass_over(final, desc=f"directions {run_key} step {final}")
    if found is None:
        return f"{run_key}: no judged answers at its final checkpoint (step {final})"
    reference, name = found.direction, f"{run_key}@{final}"
    if reference is None:
        store.save_directions(run_key, judge, [(final, layer_rows(found), [])])
        return (f"{run_key}: {found.n_fit['misaligned'] + found.n_held_out['misaligned']} misaligned and "
                f"{found.n_fit['aligned'] + found.n_held_out['aligned']} aligned coherent answers at step {final}; "
                f"a direction needs at least {min_answers} of each among the 3 in 4 it is fitted on "
                f"(--min-answers), so there is no timeline")
    found_at = []
    for step in sorted({0, *checkpoints}):
        fitted = pass_over(step, reference, desc=f"directions {run_key} step {step}")
        if fitted is not None:  # at the final step, the same direction fitted again: the answers projected on it
            found_at.append((step, layer_rows(fitted), projection_rows(fitted, name)))
    store.save_directions(run_key, judge, found_at)  # all at once: a stopped pass leaves the last one whole
    best = found.best_layer
    auroc = found.auroc[found.layers.index(best)] if best is not None else None
    return (f"{run_key}: direction at step {final} from {found.n_fit['misaligned']} misaligned and "
            f"{found.n_fit['aligned']} aligned answers; best layer {best}"
            + (f" (held-out AUROC {auroc:.2f})" if auroc is not None else " (no held-out answers of both groups)")
            + f"; {len(checkpoints) + 1} checkpoints projected on it")
