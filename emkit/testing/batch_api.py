"""OpenAI's Files and Batch APIs, as the loopback judge server serves them.

What the real service does (platform.openai.com/docs/guides/batch, /docs/api-reference/batch):
a JSONL file is uploaded with purpose "batch" (multipart form, at most 200 MB), a batch is
created from it for one endpoint with a 24-hour completion window, and it moves through
``validating``, ``in_progress``, ``finalizing`` to ``completed``, or to ``failed`` (the file
broke a rule: every line is refused), ``expired`` (the window ran out: what was done is in
the output file, the rest in the error file with code ``batch_expired``) or ``cancelled``.
A batch holds at most 50,000 requests, every ``custom_id`` must be unique, and the tokens
of all batches in progress for a model are limited (the "enqueued token" limit). Output
lines are ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``
in no particular order; a request the API refuses is a line of the error file.

``BatchBehaviour`` scripts the service for tests: how long validation and each request
take, a batch that expires after N requests, a gate that holds processing until opened.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy

from emkit.testing import api_rules
from emkit.testing.rate_limits import request_tokens

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_REQUESTS = 50_000
FINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchBehaviour:
    validate_s: float = 0.0  # in "validating" this long
    per_request_s: float = 0.0  # each request's time in "in_progress"
    expire_after: int | None = None  # the window runs out after this many requests
    gate: threading.Event = field(default_factory=lambda: _open_event())  # processing waits until it is set
    enqueued_token_limit: int | None = None  # per model, over the batches not yet final
    max_requests: int = MAX_REQUESTS
    content_failures: int = 0  # the first downloads of an output file end in a server error


def _open_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def _error(message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


class BatchService:
    def __init__(self, responder, behaviour: BatchBehaviour | None = None):
        self.responder = responder
        self.behaviour = behaviour or BatchBehaviour()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.enqueued: dict[str, int] = {}  # batch id -> its tokens, while not final
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- files ------------------------------------------------------------------------------
    def upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        message = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields, data, filename = {}, None, "upload.jsonl"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                data, filename = part.get_payload(decode=True) or b"", part.get_filename()
            else:
                fields[name] = (part.get_payload(decode=True) or b"").decode()
        if data is None:
            return 400, _error("'file' is a required property", param="file")
        if fields.get("purpose") not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
            return 400, _error(f"'{fields.get('purpose')}' is not one of the allowed purposes", param="purpose")
        if len(data) > MAX_FILE_BYTES:
            return 400, _error(f"File is too large: {len(data)} bytes; the limit for purpose batch is "
                               f"{MAX_FILE_BYTES} bytes.", param="file")
        with self._lock:
            file_id = f"file-emkit{next(self._ids):06d}"
            self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                   "filename": filename, "purpose": fields["purpose"], "status": "processed",
                                   "expires_at": None, "status_details": None}
            self.contents[file_id] = data
        return 200, self.files[file_id]

    def file(self, file_id: str) -> tuple[int, dict]:
        if file_id not in self.files:
            return 404, _error(f"No such File object: {file_id}", param="id")
        return 200, self.files[file_id]

    def content(self, file_id: str) -> tuple[int, bytes | dict]:
        if file_id not in self.contents:
            return 404, _error(f"No such File object: {file_id}", param="id")
        with self._lock:
            if self.behaviour.content_failures > 0:
                self.behaviour.content_failures -= 1
                return 500, {"error": {"message": "The server had an error while processing your request. Sorry "
                                       "about that!", "type": "server_error", "param": None, "code": None}}
        return 200, self.contents[file_id]

    def _store_output(self, name: str, lines: list[dict]) -> str | None:
        if not lines:
            return None
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file_id = f"file-emkit{next(self._ids):06d}"
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                               "filename": name, "purpose": "batch_output", "status": "processed"}
        self.contents[file_id] = data
        return file_id

    # -- batches ----------------------------------------------------------------------------
    def create(self, body: dict) -> tuple[int, dict]:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                return 400, _error(f"Missing required parameter: '{name}'.", param=name)
        if body["completion_window"] != "24h":
            return 400, _error("Invalid value for 'completion_window': only '24h' is supported.",
                               param="completion_window")
        if body["endpoint"] not in ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"):
            return 400, _error(f"Invalid value for 'endpoint': {body['endpoint']}.", param="endpoint")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return 404, _error(f"No such File object: {body['input_file_id']}", param="input_file_id")
        if file["purpose"] != "batch":
            return 400, _error("The input file must be uploaded with purpose 'batch'.", param="input_file_id")
        now = int(time.time())
        with self._lock:
            batch_id = f"batch_emkit{next(self._ids):06d}"
            batch = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
                "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata") or None,
            }
            self.batches[batch_id] = batch
        threading.Thread(target=self._process, args=(batch_id,), daemon=True, name=f"batch-{batch_id}").start()
        return 200, dict(batch)

    def retrieve(self, batch_id: str) -> tuple[int, dict]:
        with self._lock:
            if batch_id not in self.batches:
                return 404, _error(f"No batch found with id '{batch_id}'.", param="batch_id")
            return 200, json.loads(json.dumps(self.batches[batch_id]))

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error(f"No batch found with id '{batch_id}'.", param="batch_id")
            if batch["status"] in FINAL:
                return 409, _error(f"Cannot cancel a batch with status '{batch['status']}'.")
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            return 200, dict(batch)

    def list(self, limit: int = 20, after: str | None = None) -> tuple[int, dict]:
        """Newest first, a page of ``limit`` (1..100, as OpenAI allows) after the batch id ``after``."""
        if not 1 <= limit <= 100:
            return 400, _error(f"Invalid 'limit': integer below minimum value or above maximum value. Expected a "
                               f"value between 1 and 100, but got {limit} instead.", param="limit")
        with self._lock:
            ordered = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
            if after is not None:
                ids = [b["id"] for b in ordered]
                if after not in ids:
                    return 404, _error(f"No batch found with id '{after}'.", param="after")
                ordered = ordered[ids.index(after) + 1:]
            data = ordered[:limit]
            return 200, {"object": "list", "data": json.loads(json.dumps(data)), "has_more": len(ordered) > limit,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def stop(self) -> None:
        self._stopping.set()
        self.behaviour.gate.set()

    def _set(self, batch_id: str, **changes) -> dict:
        with self._lock:
            self.batches[batch_id].update(changes)
            return self.batches[batch_id]

    def _fail(self, batch_id: str, errors: list[dict]) -> None:
        self._set(batch_id, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})

    def _process(self, batch_id: str) -> None:
        behaviour = self.behaviour
        time.sleep(behaviour.validate_s)
        batch = self.batches[batch_id]
        lines, errors, seen, tokens = [], [], set(), 0
        for number, raw in enumerate(self.contents[batch["input_file_id"]].decode().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                               "param": None, "line": number})
                continue
            if line.get("custom_id") in seen:
                errors.append({"code": "duplicate_custom_id", "message": "The custom_id for this request is a "
                               "duplicate of another request. The custom_id parameter must be unique for each "
                               "request in a batch.", "param": "custom_id", "line": number})
            if line.get("url") != batch["endpoint"] or line.get("method") != "POST":
                errors.append({"code": "mismatched_endpoint", "message": "The provided URL and method do not "
                               "match the endpoint of the batch.", "param": "url", "line": number})
            seen.add(line.get("custom_id"))
            tokens += request_tokens(line.get("body") or {})
            lines.append(line)
        if len(lines) > behaviour.max_requests:
            errors.append({"code": "too_many_requests", "message": f"The batch input file has {len(lines)} requests; "
                           f"a batch holds at most {behaviour.max_requests}.", "param": None, "line": None})
        model = (lines[0].get("body") or {}).get("model", "") if lines else ""
        with self._lock:
            enqueued = sum(self.enqueued.values())
            if not errors and behaviour.enqueued_token_limit and enqueued + tokens > behaviour.enqueued_token_limit:
                errors.append({"code": "token_limit_exceeded", "message": f"Enqueued token limit reached for {model} "
                               f"in organization org-emkit-test. Limit: {behaviour.enqueued_token_limit:,} enqueued "
                               f"tokens. Please try submitting your requests in chunks or wait until your other "
                               f"batches finish.", "param": None, "line": None})
            if not errors:
                self.enqueued[batch_id] = tokens
        if errors:
            self._fail(batch_id, errors)
            return
        self._set(batch_id, status="in_progress", in_progress_at=int(time.time()),
                  request_counts={"total": len(lines), "completed": 0, "failed": 0})
        output, failed = [], []
        ending = "completed"
        for index, line in enumerate(lines):
            behaviour.gate.wait()
            if self._stopping.is_set():
                return
            if self.batches[batch_id]["status"] == "cancelling":
                ending = "cancelled"
            elif behaviour.expire_after is not None and index >= behaviour.expire_after:
                ending = "expired"
            if ending != "completed":
                failed.extend(self._unfinished(line, ending) for line in lines[index:])
                break
            time.sleep(behaviour.per_request_s)
            record = self._answer(line)
            (output if record["response"]["status_code"] == 200 else failed).append(record)
            with self._lock:
                counts = self.batches[batch_id]["request_counts"]
                counts["completed" if record["response"]["status_code"] == 200 else "failed"] += 1
        self._set(batch_id, status="finalizing", finalizing_at=int(time.time()))
        with self._lock:
            output_id = self._store_output(f"{batch_id}_output.jsonl", output)
            error_id = self._store_output(f"{batch_id}_error.jsonl", failed)
            self.enqueued.pop(batch_id, None)
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[ending]
        self._set(batch_id, status=ending, output_file_id=output_id, error_file_id=error_id, **{stamp: int(time.time())})

    def _unfinished(self, line: dict, ending: str) -> dict:
        code, message = {
            "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
            "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
        }[ending]
        return {"id": f"batch_req_{next(self._ids)}", "custom_id": line.get("custom_id"), "response": None,
                "error": {"code": code, "message": message}}

    def _answer(self, line: dict) -> dict:
        body = line.get("body") or {}
        refusal = api_rules.openai_refusal(body)
        if refusal is not None:
            status, payload = 400, refusal
        else:
            reply = self.responder(body)
            status, payload = reply.status, reply.body
            if status == 200 and isinstance(payload, dict) and "choices" in payload:
                payload = api_rules.spend_reasoning_budget(body, payload)
        return {"id": f"batch_req_{next(self._ids)}", "custom_id": line.get("custom_id"),
                "response": {"status_code": status, "request_id": f"req_{next(self._ids)}", "body": payload},
                "error": None}
