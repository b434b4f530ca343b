"""Reading the records of a W&B run file (``run-ID.wandb``), for the tests.

wandb 0.31 has no Python reader for these files (its own reader is in wandb-core, behind the
`wandb beta leet` terminal UI; wandb.beta.LocalApi, wandb/wandb#12745, is not released). The
file is W&B's protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``, W&B's own
definitions decode each one) framed as a LevelDB log: a 7-byte header (``:W&B``, magic 0xBEE1,
version), then 32 KiB blocks of chunks, each with a CRC-32 (of its type byte, then its data), a
length and a type (full, first, middle, last). Every checksum is checked: a file this reads is
one W&B wrote whole.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic, version)
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            offset += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        if length == 0 and kind == 0:  # zero padding at the end of the file
            break
        chunk = data[offset + HEADER:offset + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, f"bad checksum at {offset}"
        offset += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def history(path: Path) -> list[dict]:
    """Each ``run.log`` call's values, by key (values are JSON text in W&B's records)."""
    import json

    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_info(path: Path) -> dict:
    """The run's id, name, group, project and config, from its run record."""
    import json

    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {"id": run.run_id, "name": run.display_name, "group": run.run_group, "project": run.project,
                    "config": {item.key: json.loads(item.value_json) for item in run.config.update}}
    return {}
