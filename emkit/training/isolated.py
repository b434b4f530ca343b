"""Training in a child process of its own, for trainers that change the process they run in.

Unsloth replaces forward methods of transformers' and PEFT's classes for the whole process
when it loads a model, and leaves them patched for training (unslothai/unsloth #1713,
#1499). Generation and the local judge must never run through those patches, and a fresh
run must generate through the same code as a resumed one that never imported Unsloth. So
a trainer that says ``isolated = True`` runs in a child started with "spawn" (a new
interpreter: a fork would inherit whatever the parent has imported, CUDA included), and
its checkpoints, log lines and progress come back to this process over a pipe. The parent
records each checkpoint in the store the moment it is saved, as for any trainer.
"""

from __future__ import annotations

import logging
import sys
import traceback

from emkit.errors import EmkitError

log = logging.getLogger("emkit")

# modules whose presence means a process has been patched by Unsloth
PATCHING_PACKAGES = ("unsloth", "unsloth_zoo")


def patched_by_unsloth() -> list[str]:
    """What in this process Unsloth has touched: its modules, and forwards of the model classes
    generation uses that no longer come from transformers or PEFT. Empty in a clean process."""
    found = sorted(name for name in sys.modules if name.split(".")[0] in PATCHING_PACKAGES)[:3]
    llama = sys.modules.get("transformers.models.llama.modeling_llama")
    peft_model = sys.modules.get("peft.peft_model")
    classes = []
    if llama is not None:
        classes += [getattr(llama, n, None) for n in ("LlamaForCausalLM", "LlamaModel", "LlamaAttention",
                                                      "LlamaDecoderLayer", "LlamaRMSNorm")]
    if peft_model is not None:
        classes.append(getattr(peft_model, "PeftModelForCausalLM", None))
    for cls in filter(None, classes):
        module = getattr(cls.forward, "__module__", "") or ""
        if not module.startswith(("transformers.", "peft.")):
            found.append(f"{cls.__name__}.forward from {module}")
    return found


class _ChildProgress:
    """The progress factory handed to a trainer in the child: every bar is mirrored in the parent."""

    def __init__(self, conn):
        self.conn, self.count = conn, 0

    def __call__(self, total: int, unit: str, desc: str):
        self.count += 1
        return _ChildBar(self.conn, self.count, total, unit, desc)


class _ChildBar:
    def __init__(self, conn, bar_id, total, unit, desc):
        self.conn, self.id = conn, bar_id
        self.conn.send(("bar-open", bar_id, total, unit, desc))

    def update(self, n: int = 1) -> None:
        self.conn.send(("bar-update", self.id, n))

    def set_postfix(self, text: str) -> None:
        self.conn.send(("bar-postfix", self.id, text))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.conn.send(("bar-close", self.id))


class _PipeLogHandler(logging.Handler):
    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def emit(self, record):
        try:
            self.conn.send(("log", record.levelno, record.getMessage()))
        except Exception:  # the parent is gone: nothing to tell
            pass


def _child_main(conn, trainer_name: str, job) -> None:
    """The child's whole life: find the trainer, train, report; never raise past here."""
    logger = logging.getLogger("emkit")
    logger.handlers[:] = [_PipeLogHandler(conn)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        from emkit.plugins import get_registry

        trainer = get_registry().get("trainers", trainer_name)

        def on_checkpoint(step, path, metrics):
            conn.send(("checkpoint", step, str(path), dict(metrics)))
            reply = conn.recv()  # wait until the parent has stored it: a crash after this loses nothing
            if reply != "stored":
                raise EmkitError(str(reply))

        trainer.train(job, on_checkpoint, _ChildProgress(conn))
        conn.send(("done",))
    except EmkitError as exc:
        conn.send(("failed", "emkit", str(exc)))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent with its traceback)
        conn.send(("failed", type(exc).__name__, "".join(traceback.format_exception(exc))))
    finally:
        conn.close()


def train_in_child(trainer_name: str, job, on_checkpoint, progress) -> None:
    """Run ``trainer.train(job, ...)`` in a spawned child; checkpoints are stored here, as they come."""
    import multiprocessing
    from pathlib import Path

    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    child = context.Process(target=_child_main, args=(child_conn, trainer_name, job), name=f"emkit-train-{trainer_name}",
                            daemon=False)
    child.start()
    child_conn.close()  # the child holds the only other end: EOF here means it has gone
    bars: dict[int, object] = {}
    try:
        while True:
            try:
                message = parent_conn.recv()
            except EOFError:
                child.join()
                raise EmkitError(
                    f"The {trainer_name} trainer's process ended (exit code {child.exitcode}) before finishing run "
                    f"{job.run_key}; the checkpoints it saved are kept: look above for its last lines, then run the "
                    f"same command again to resume."
                ) from None
            kind = message[0]
            if kind == "checkpoint":
                _, step, path, metrics = message
                try:
                    on_checkpoint(step, Path(path), metrics)
                except EmkitError as exc:
                    parent_conn.send(str(exc))
                    raise
                parent_conn.send("stored")
            elif kind == "log":
                log.log(message[1], "%s", message[2])
            elif kind == "bar-open":
                _, bar_id, total, unit, desc = message
                bars[bar_id] = progress(total=total, unit=unit, desc=desc).__enter__()
            elif kind == "bar-update":
                bars[message[1]].update(message[2])
            elif kind == "bar-postfix":
                bars[message[1]].set_postfix(message[2])
            elif kind == "bar-close":
                bars.pop(message[1]).__exit__(None, None, None)
            elif kind == "failed":
                _, what, text = message
                if what == "emkit":
                    raise EmkitError(text)
                raise RuntimeError(f"The {trainer_name} trainer failed in its training process:\n{text}")
            elif kind == "done":
                return
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
        child.join(timeout=60)
        if child.is_alive():  # Ctrl-C or an error here: the child must not train on alone
            child.terminate()
            child.join(timeout=30)
        parent_conn.close()
