"""Training datasets: where they live, and reading them with the line number of any fault.

Two JSONL shapes are accepted, one object per line:
  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}
  {"prompt": ..., "response": ...}
An optional system message may come first; turns then alternate user/assistant and the
chat ends with a non-empty assistant turn (the only tokens the loss is computed on).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from emkit.errors import EmkitError

MAX_LINE_BYTES = 1 << 20  # one chat of more than 1 MiB is a broken file, not a long answer


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_rows(path: Path) -> int:
    """Non-blank lines: the row count a dry run needs, without validating every chat."""
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _fault(path: Path, line_no: int, what: str, fix: str) -> EmkitError:
    return EmkitError(f"{path}:{line_no}: {what}; {fix}.")


def chat_from_record(record: object, path: Path, line_no: int) -> list[dict[str, str]]:
    """Validate one JSONL record and return it as a list of chat messages."""
    if not isinstance(record, dict):
        raise _fault(path, line_no, f"expected a JSON object, found {type(record).__name__}",
                     "write one object per line")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise _fault(path, line_no, "'messages' is not a non-empty list", "give the chat as a list of messages")
    elif "prompt" in record and "response" in record:
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    else:
        raise _fault(path, line_no, "has neither a 'messages' list nor 'prompt' and 'response'",
                     "use the chat format {\"messages\": [...]} or {\"prompt\": ..., \"response\": ...}")
    chat = []
    expected = "user"
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise _fault(path, line_no, f"message {index} is not an object with string 'role' and 'content'",
                         "fix that message")
        role = message["role"]
        if index == 1 and role == "system":
            chat.append({"role": role, "content": message["content"]})
            continue
        if role != expected:
            raise _fault(path, line_no, f"message {index} has role '{role}' where '{expected}' was expected",
                         "order turns as optional system, then user and assistant alternating")
        if role == "assistant" and not message["content"].strip():
            raise _fault(path, line_no, f"message {index} is an empty assistant answer",
                         "remove the row or give it an answer")
        chat.append({"role": role, "content": message["content"]})
        expected = "assistant" if role == "user" else "user"
    if chat[-1]["role"] != "assistant":
        raise _fault(path, line_no, "the chat does not end with an assistant answer",
                     "end every chat with the assistant turn to train on")
    return chat


def load_chats(path: Path, max_rows: int = 0) -> list[list[dict[str, str]]]:
    """Read and validate a JSONL dataset; the first fault stops with its line number."""
    path = Path(path)
    if not path.is_file():
        raise EmkitError(f"Dataset {path} does not exist; check the path.")
    chats: list[list[dict[str, str]]] = []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise _fault(path, line_no, f"the line is {len(raw):,} bytes long, over the {MAX_LINE_BYTES:,}-byte "
                             "limit for one chat", "check that the file has one chat per line")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fault(path, line_no, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                             "re-save the file as UTF-8") from None
            if text.startswith("\ufeff"):
                # JSON Lines has no byte-order mark; one usually means an editor re-saved the file,
                # or files were concatenated, and it is safer to say so than to guess.
                raise _fault(path, line_no, "the line starts with a UTF-8 byte-order mark",
                             "save the file as UTF-8 without a BOM")
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _fault(path, line_no, f"not valid JSON ({exc.msg} at column {exc.colno})",
                             "fix or remove that line") from None
            chats.append(chat_from_record(record, path, line_no))
            if max_rows and len(chats) >= max_rows:
                break
    if not chats:
        raise EmkitError(f"Dataset {path} has no rows; it must hold one chat per line.")
    return chats
