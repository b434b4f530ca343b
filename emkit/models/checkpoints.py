"""One base model with a run's checkpoints attached in turn: the adapter of each, or none (step 0)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


class CheckpointModel:
    """The base model loaded once; ``at(adapter_path)`` yields the model at that checkpoint. Only one
    adapter is kept at a time (the previous one is deleted), and ``at(None)`` is the untouched base
    model, with any attached adapter switched off."""

    def __init__(self, model):
        self.model = model
        self.peft_model = None
        self._count = 0

    @contextmanager
    def at(self, adapter_path: Path | None):
        if adapter_path is None:
            if self.peft_model is None:
                yield self.model
            else:
                with self.peft_model.disable_adapter():
                    yield self.peft_model
            return
        self._count += 1
        name = f"checkpoint{self._count}"  # runs of different domains share step numbers
        if self.peft_model is None:
            from peft import PeftModel

            self.peft_model = PeftModel.from_pretrained(self.model, str(adapter_path), adapter_name=name,
                                                        is_trainable=False)
        else:
            previous = self.peft_model.active_adapter
            self.peft_model.load_adapter(str(adapter_path), adapter_name=name, is_trainable=False)
            self.peft_model.set_adapter(name)
            self.peft_model.delete_adapter(previous)
        self.peft_model.eval()
        yield self.peft_model
