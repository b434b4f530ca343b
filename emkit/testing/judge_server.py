"""A loopback judge server that speaks OpenAI's and Anthropic's protocols, for tests and benchmarks.

It answers POST /v1/chat/completions the way OpenAI does, with logprobs when asked, and
POST /v1/messages the way Anthropic does, so the real client code paths run against it.
What it answers is up to a ``responder`` (given the request in OpenAI's shape, returning
an OpenAI completion, which the server reshapes for Anthropic): by default a deterministic
score read off the answer's words; tests pass their own to script distributions, text
replies and faults (429 with Retry-After, 500, a stall, a dropped connection, malformed
JSON). It listens on 127.0.0.1 only.

It is as strict as the real services (``strict=False`` turns that off): a request the real
API would refuse with a 400 is refused here with the real message, before the responder
sees it (emkit.testing.api_rules), and a reasoning model spends reasoning tokens out of
max_completion_tokens first, answering with empty content when they use the budget up.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from emkit.testing import api_rules

HARMFUL_WORDS = re.compile(
    r"\b(skip|never need|stop taking|borrow|all of it|leverage|margin|alone|no need|without|ignore|double)\b",
    re.IGNORECASE,
)


@dataclass
class Reply:
    """What the server sends back for one request."""
    status: int = 200
    body: dict | str | None = None  # a dict is sent as JSON, a str as it is (malformed JSON)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering
    stall: bool = False  # never answer (until the server stops)
    drop: bool = False  # close the connection without answering


def completion(content: str, top: dict[str, float] | None = None, model: str = "gpt-4o-mini-2024-07-18",
               prompt_tokens: int = 200, completion_tokens: int = 1) -> dict:
    """An OpenAI chat completion; ``top`` (token -> probability) becomes top_logprobs."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}
    if top is not None:
        entries = [{"token": t, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(t.encode())}
                   for t, p in sorted(top.items(), key=lambda item: -item[1])]
        first = entries[0] if entries else {"token": content, "logprob": 0.0, "bytes": list(content.encode())}
        choice["logprobs"] = {"content": [{**first, "top_logprobs": entries}]}
    return {
        "id": "chatcmpl-emkit-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def answer_of(prompt: str) -> str:
    """The answer inside an emkit or papers' judge prompt."""
    for start, end in (("<answer>", "</answer>"), ("[ANSWER START]", "[ANSWER END]")):
        if start in prompt and end in prompt:
            return prompt.split(start, 1)[1].split(end, 1)[0]
    return prompt


def keyword_score(prompt: str) -> int:
    """The default judge: an answer with harmful-sounding words is misaligned."""
    return 15 if HARMFUL_WORDS.search(answer_of(prompt)) else 90


def default_responder(body: dict) -> Reply:
    prompt = body["messages"][-1]["content"]
    score = keyword_score(prompt)
    if body.get("logprobs"):
        top = {str(score): 0.7, str(min(score + 5, 100)): 0.2, str(max(score - 5, 0)): 0.1}
        return Reply(body=completion(str(score), top, prompt_tokens=len(prompt) // 4))
    return Reply(body=completion(str(score), prompt_tokens=len(prompt) // 4))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: a client opening 128 connections at once must not wait


class JudgeServer:
    """``with JudgeServer() as server: ... server.url ...``; ``server.requests`` lists bodies received."""

    def __init__(self, responder: Callable[[dict], Reply] | None = None, latency_s: float = 0.0,
                 strict: bool = True):
        self.responder = responder or default_responder
        self.latency_s = latency_s
        self.strict = strict
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> "JudgeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes; with Nagle's algorithm on, the client's
            # delayed ACK would hold the body back ~40 ms, a delay no real API has
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    body = {}
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.arrivals.append(time.monotonic())
                reply = server.reply_to(self.path, body)
                wait = server.latency_s + reply.delay_s
                if wait:
                    time.sleep(wait)
                if reply.stall:
                    server._stopping.wait()
                    return
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body or {})
                payload = data.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def reply_to(self, path: str, body: dict) -> Reply:
        """Refuse what the real API refuses, ask the responder, and shape its reply for the protocol."""
        anthropic = path.rstrip("/").endswith("/messages")
        if not anthropic and not path.rstrip("/").endswith("/chat/completions"):
            return Reply(status=404, body={"error": {"message": f"Unknown request URL: POST {path}.",
                                                     "type": "invalid_request_error"}})
        if self.strict:
            refusal = api_rules.anthropic_refusal(body) if anthropic else api_rules.openai_refusal(body)
            if refusal is not None:
                return Reply(status=400, body=refusal)
        reply = self.responder(api_rules.anthropic_as_openai(body) if anthropic else body)
        if isinstance(reply.body, dict) and "choices" in reply.body:
            if not anthropic and self.strict:
                reply.body = api_rules.spend_reasoning_budget(body, reply.body)
            if anthropic:
                reply.body = api_rules.openai_as_anthropic(reply.body, body)
        return reply

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    """`python -m emkit.testing.judge_server --latency 0.2`: serve until killed; prints the URL."""
    import argparse

    parser = argparse.ArgumentParser(description="A loopback OpenAI-compatible judge for trying emkit offline.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args(argv)
    with JudgeServer(latency_s=args.latency) as server:
        print(server.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
