"""A step's rows laid out as micro-batches: packed (the default) or padded.

Packed: the step's chats are placed, longest first, into rows of at most ``max_length``
tokens (first-fit decreasing: short chats share a row), and ``batch_size`` rows make a
micro-batch, so a micro-batch has the shape of a padded one but is nearly all real tokens.
Position ids restart at 0 with every chat and no attention mask is passed, which
transformers reads as packed sequences: SDPA and eager attention get a block-diagonal causal
mask, flash attention its variable-length kernel, so no chat attends to another. A row
shorter than the micro-batch's longest ends in padding that is a sequence of its own.

Padded: ``batch_size`` chats of similar length per micro-batch, right-padded to the longest
(emkit before packing, and what a model whose attention ignores position ids needs:
``training.packing = false``).

Either way the step's chats are the same and every target is predicted from its own chat
only (EncodedChat.targets are shifted per chat), so the summed loss is the same up to float
rounding: tests/test_training.py checks that on SmolLM2.
"""

from __future__ import annotations

from dataclasses import dataclass

from emkit.training.tokenize import IGNORE, EncodedChat


@dataclass
class MicroBatch:
    input_ids: object  # LongTensor [rows, width]
    targets: object  # LongTensor [rows, width]: the token each position predicts, or IGNORE
    labels: object  # LongTensor [rows, width]: the targets before the shift (a model's own loss shifts them)
    attention_mask: object | None  # padded only
    position_ids: object | None  # packed only
    tokens: int  # real tokens (no padding)
    chat_lengths: list | None = None  # packed only: each chat's length, row after row
    row_tokens: list | None = None  # packed only: each row's real tokens (the rest is padding)

    def model_inputs(self) -> dict:
        # no cache: transformers reads position ids as packed sequences only where there is none
        inputs = {"input_ids": self.input_ids, "use_cache": False}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs

    def one_row(self):
        """A packed micro-batch as a single row without its padding: (input_ids, position_ids, labels), each
        [1, tokens], for attention that takes packed sequences as lengths over one row (Unsloth's)."""
        import torch

        width = self.input_ids.shape[1]
        real = torch.arange(width, device=self.input_ids.device)[None, :] < torch.tensor(
            self.row_tokens, device=self.input_ids.device)[:, None]
        return self.input_ids[real][None], self.position_ids[real][None], self.labels[real][None]


def pack_rows(examples: list[EncodedChat], row_length: int) -> list[list[EncodedChat]]:
    """First-fit decreasing: each chat, longest first, joins the first row it fits in.
    Deterministic for the same chats in the same order (ties keep their order)."""
    rows: list[list[EncodedChat]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        size = len(example.input_ids)
        for index, free in enumerate(room):
            if size <= free:
                rows[index].append(example)
                room[index] -= size
                break
        else:
            rows.append([example])
            room.append(row_length - size)
    return rows


def packed(rows: list[list[EncodedChat]], pad_id: int, device: str) -> MicroBatch:
    import torch

    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, targets, labels, positions, lengths = [], [], [], [], []
    for row in rows:
        row_ids, row_targets, row_labels, row_positions = [], [], [], []
        for example in row:
            row_ids += example.input_ids
            row_targets += example.targets
            row_labels += example.labels
            row_positions += range(len(example.input_ids))
            lengths.append(len(example.input_ids))
        tail = width - len(row_ids)
        ids.append(row_ids + [pad_id] * tail)
        targets.append(row_targets + [IGNORE] * tail)
        labels.append(row_labels + [IGNORE] * tail)
        positions.append(row_positions + list(range(tail)))  # the padding: a sequence of its own

    def tensor(rows_):
        return torch.tensor(rows_, dtype=torch.long, device=device)

    return MicroBatch(tensor(ids), tensor(targets), tensor(labels), attention_mask=None,
                      position_ids=tensor(positions), tokens=sum(len(e.input_ids) for row in rows for e in row),
                      chat_lengths=lengths, row_tokens=[sum(len(e.input_ids) for e in row) for row in rows])


def padded(examples: list[EncodedChat], pad_id: int, device: str) -> MicroBatch:
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        targets[row, :n] = torch.tensor(example.targets)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return MicroBatch(input_ids.to(device), targets.to(device), labels.to(device), mask.to(device), None,
                      sum(len(e.input_ids) for e in examples))


def micro_batches(examples: list[EncodedChat], settings, pad_id: int, device: str) -> list[MicroBatch]:
    """The step's chats as the micro-batches its forward and backward passes run on."""
    if settings.packing:
        rows = sorted(pack_rows(examples, settings.max_length), key=lambda row: sum(len(e.input_ids) for e in row))
        return [packed(rows[first:first + settings.batch_size], pad_id, device)
                for first in range(0, len(rows), settings.batch_size)]
    # similar lengths share a micro-batch, so less of it is padding
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    return [padded(ordered[first:first + settings.batch_size], pad_id, device)
            for first in range(0, len(ordered), settings.batch_size)]
