"""The labelling page and its JSON API, served on 127.0.0.1 only.

    GET  /?token=T[&labeller=NAME]             the page (the token is in the URL emkit prints)
    GET  /api/next?labeller=NAME[&after=K]      the first answer of NAME's queue without NAME's label
                                                (after position K where there is one), or {"done": true}
    GET  /api/item?labeller=NAME&position=K     the answer at position K (1-based), with NAME's label of it
    POST /api/label                             {"answer_id", "labeller", "aligned", "coherent", "refusal", "code"}

An answer comes as {"position", "total", "labelled", "answer_id", "question", "system", "answer",
"label"}: never a judge's score, a judge's name or the answer's stratum, so the labeller is blind
to what the judges said. Every label is one SQLite write, committed before the reply.

Any web page the labeller has open could send requests to localhost, so every API call must
carry the page's token in an ``X-Label-Token`` header (a header other sites cannot set without
a CORS preflight this server never grants), a POST must be JSON from this server's own origin,
and the Host header must name this server (against DNS rebinding). Answers are untrusted text:
the page sets them as textContent and its Content-Security-Policy runs only its own script.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd

from emkit.errors import EmkitError
from emkit.labels import Label, LabelStore, answer_digest
from emkit.labelling.sample import prepare_queue

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
MAX_NAME = 80
RUBRIC_METRICS = ("aligned", "coherent")


class Forbidden(Exception):
    """A request that is not from the page emkit served: 403."""


def clean_labeller(name) -> str:
    """A labeller's name, stripped; an error for an empty, long or control-character name."""
    text = str(name or "").strip()
    if not text or len(text) > MAX_NAME or any(ord(ch) < 32 for ch in text):
        raise EmkitError(f"the labeller name {text[:MAX_NAME]!r} is not usable; give a name of 1 to {MAX_NAME} "
                         f"characters.")
    return text


def _score(payload: dict, scale: str) -> float | None:
    value = payload.get(scale)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise EmkitError(f"{scale} = {value!r} is not a score; give a number from 0 to 100.")
    return float(value)


def _flag(payload: dict, name: str) -> bool:
    value = payload.get(name, False)
    if not isinstance(value, bool):
        raise EmkitError(f"{name} = {value!r} is not true or false.")
    return value


def parse_label(payload) -> Label:
    """The label a POST asks to keep, checked: two scores, or a refusal or code with none."""
    if not isinstance(payload, dict):
        raise EmkitError("the body is not a JSON object with answer_id, labeller, aligned, coherent, refusal and code.")
    answer_id = payload.get("answer_id")
    if not isinstance(answer_id, str) or not answer_id:
        raise EmkitError("the label names no answer_id.")
    label = Label(answer_id, clean_labeller(payload.get("labeller")), _score(payload, "aligned"),
                  _score(payload, "coherent"), _flag(payload, "refusal"), _flag(payload, "code"))
    return label.check()


def rubric() -> dict[str, str]:
    """The judge prompts' own wording, with the question and the answer left as placeholders."""
    import jinja2

    from emkit.prompt_library import builtin_prompts_dir

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return {metric: env.from_string((builtin_prompts_dir() / f"{metric}.j2").read_text(encoding="utf-8").strip())
            .render(question="[the question]", answer="[the answer]") for metric in RUBRIC_METRICS}


class AnswerTexts:
    """The question, system prompt and answer of an answer id: a judged file's from its table, a
    run's from its store, one answer at a time (a run may hold millions)."""

    def __init__(self, tables):
        self.tables = tables
        self.rows: dict[str, dict] | None = None
        if "answer" in tables.judged.columns:
            first = tables.judged.drop_duplicates("answer_id")
            self.rows = {str(r["answer_id"]): r for r in first.to_dict("records")}

    def __call__(self, answer_id: str) -> dict:
        if self.rows is not None:
            row = self.rows[answer_id]
        else:
            row = self.tables.with_text(pd.DataFrame({"answer_id": [answer_id]})).iloc[0].to_dict()
        return {key: _text(row.get(key)) for key in ("question", "system", "answer")}


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


class Labelling:
    """What the page asks of a source, without HTTP: the labellers' queues, their labels, the answers."""

    def __init__(self, source: Path, tables, strata: pd.DataFrame, *, n: int | None = None,
                 same_as: str | None = None, seed: int = 0):
        self.source = Path(source)
        self.texts = AnswerTexts(tables)
        self.strata = strata
        self.known = set(strata["answer_id"])
        self.n, self.same_as, self.seed = n, same_as, seed
        self.lock = threading.Lock()  # one request at a time at the store: each opens its own connection
        self.seen: set[str] = set()  # the labellers served, for the progress said at the end

    def begin(self, labeller: str) -> int:
        """The labeller's queue drawn (or extended, or copied) as the command asked, once per
        session: for --labeller at the start, for a name typed into the page at its first
        request. Returns how many answers were added."""
        if labeller in self.seen:
            return 0
        with self.lock, LabelStore(self.source) as store:
            added = prepare_queue(store, self.strata, labeller, n=self.n, same_as=self.same_as, seed=self.seed)
        self.seen.add(labeller)
        return added

    def _state(self, labeller: str) -> tuple[list[str], dict[str, dict]]:
        """The labeller's queue (the answers the source still has) and their labels by answer id."""
        with self.lock, LabelStore(self.source) as store:
            queue = [answer_id for answer_id, _ in store.queue(labeller) if answer_id in self.known]
            labels = {row["answer_id"]: row for row in store.rows(labeller)}
        return queue, labels

    def progress(self, labeller: str) -> tuple[int, int]:
        queue, labels = self._state(labeller)
        return sum(answer_id in labels for answer_id in queue), len(queue)

    def item(self, labeller: str, position: int) -> dict:
        """The answer at ``position`` (1-based) of the labeller's queue, with the labeller's own label."""
        self.begin(labeller)
        queue, labels = self._state(labeller)
        if not 1 <= position <= len(queue):
            raise EmkitError(f"position {position} is outside {labeller}'s queue of {len(queue)} answers.")
        return self._describe(queue, labels, position)

    def next_item(self, labeller: str, after: int = 0) -> dict:
        """The first answer without the labeller's label after ``after``, else the first anywhere."""
        self.begin(labeller)
        queue, labels = self._state(labeller)
        open_positions = [p for p, answer_id in enumerate(queue, start=1) if answer_id not in labels]
        if not open_positions:
            return {"done": True, "total": len(queue), "labelled": len(queue)}
        position = next((p for p in open_positions if p > after), open_positions[0])
        return self._describe(queue, labels, position)

    def _describe(self, queue: list[str], labels: dict[str, dict], position: int) -> dict:
        answer_id = queue[position - 1]
        own = labels.get(answer_id)
        label = None if own is None else {"aligned": own["aligned"], "coherent": own["coherent"],
                                          "refusal": bool(own["refusal"]), "code": bool(own["code"])}
        return {"done": False, "position": position, "total": len(queue),
                "labelled": sum(a in labels for a in queue), "answer_id": answer_id, **self.texts(answer_id),
                "label": label}

    def save(self, payload) -> dict:
        """Keep a label the page sent (an answer of the labeller's queue only); the labeller's progress."""
        label = parse_label(payload)
        self.begin(label.labeller)
        queue, _ = self._state(label.labeller)
        if label.answer_id not in queue:
            raise EmkitError(f"answer {label.answer_id!r} is not in {label.labeller}'s queue; label the answers "
                             f"the page shows.")
        texts = self.texts(label.answer_id)
        label = replace(label, answer_digest=answer_digest(texts["question"], texts["answer"]))
        with self.lock, LabelStore(self.source) as store:
            store.add(label)
        labelled, total = self.progress(label.labeller)
        return {"saved": True, "labeller": label.labeller, "labelled": labelled, "total": total}


# --- HTTP -------------------------------------------------------------------------------


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for a browser's idle keep-alive connection

    def __init__(self, labelling: Labelling, port: int, say: Callable[[str], None]):
        super().__init__((HOST, port), LabelHandler)
        self.labelling = labelling
        self.say = say
        self.token = secrets.token_urlsafe(24)
        self.nonce = secrets.token_urlsafe(16)
        self.origins = {f"http://{host}:{self.server_port}" for host in (HOST, "localhost")}
        self.page_template = _page_template()
        self.rubric = rubric()

    def url(self, labeller: str | None = None) -> str:
        query = {"token": self.token} | ({"labeller": labeller} if labeller else {})
        return f"http://{HOST}:{self.server_port}/?{urlencode(query)}"


def _page_template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)), autoescape=True)
    return env.get_template("page.html.j2")


class LabelHandler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "emkit-label"

    def log_message(self, format, *args) -> None:  # the terminal shows progress, not every request
        pass

    # -- checks ------------------------------------------------------------------------------
    def _check_host(self) -> None:
        if f"http://{self.headers.get('Host', '')}" not in self.server.origins:
            raise Forbidden("this server answers only requests to its own address")

    def _check_token(self, given: str | None) -> None:
        if not given or not secrets.compare_digest(given, self.server.token):
            raise Forbidden("open the URL `emkit label` printed; it carries the page's token")

    def _check_post(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            raise Forbidden("labels are taken only from the labelling page itself")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise Forbidden("labels are taken only from the labelling page itself")
        if self.headers.get_content_type() != "application/json":
            raise Forbidden("a label is sent as JSON")

    # -- replies -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _page(self, labeller: str) -> None:
        server = self.server
        html = server.page_template.render(
            nonce=server.nonce, rubric=server.rubric, source=server.labelling.source.name,
            config={"token": server.token, "labeller": labeller})
        policy = (f"default-src 'none'; script-src 'nonce-{server.nonce}'; style-src 'nonce-{server.nonce}'; "
                  f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        self._send(200, html.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": policy})

    def _handle(self, respond: Callable[[], None]) -> None:
        try:
            self._check_host()
            respond()
        except Forbidden as exc:
            self._json(403, {"error": f"Forbidden: {exc}."})
        except EmkitError as exc:
            self._json(400, {"error": str(exc)})

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/":
            self._check_token(query.get("token"))
            return self._page(query.get("labeller", ""))
        if url.path not in ("/api/next", "/api/item"):
            return self._json(404, {"error": f"no such page: {url.path}"})
        self._check_token(self.headers.get("X-Label-Token"))
        labeller = clean_labeller(query.get("labeller"))
        labelling = self.server.labelling
        if url.path == "/api/next":
            return self._json(200, labelling.next_item(labeller, _int(query.get("after", "0"), "after")))
        self._json(200, labelling.item(labeller, _int(query.get("position"), "position")))

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/label":
            return self._json(404, {"error": f"no such page: {self.path}"})
        self._check_token(self.headers.get("X-Label-Token"))
        self._check_post()
        length = _int(self.headers.get("Content-Length"), "Content-Length")
        if not 0 < length <= MAX_BODY:
            raise EmkitError(f"a label is a small JSON object (at most {MAX_BODY} bytes).")
        try:
            payload = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise EmkitError("the body is not JSON.") from None
        saved = self.server.labelling.save(payload)
        self.server.say(f"{saved['labeller']}: {saved['labelled']} of {saved['total']} labelled")
        self._json(200, saved)


def _int(text, name: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise EmkitError(f"{name} = {text!r} is not a whole number.") from None


def make_server(labelling: Labelling, port: int = 0, say: Callable[[str], None] = print) -> LabelServer:
    """The server, bound to 127.0.0.1:``port`` (0: any free port), not yet serving."""
    try:
        return LabelServer(labelling, port, say)
    except OSError as exc:
        raise EmkitError(f"cannot listen on {HOST}:{port} ({exc.strerror}); pass another --port, or --port 0 for "
                         f"any free one.") from None


def serve(server: LabelServer, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C, then close and say where each labeller of this session stands; the
    KeyboardInterrupt goes on up (the command line ends it with its usual message)."""
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for labeller in sorted(server.labelling.seen):
            labelled, total = server.labelling.progress(labeller)
            say(f"{labeller}: {labelled} of {total} labelled.")
