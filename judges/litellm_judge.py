"""The `litellm` judge backend: any model litellm can call (gpt-4o-mini by default).

``--judge gpt-4o-mini`` (or ``litellm:gpt-4o-mini``) calls OpenAI with $OPENAI_API_KEY;
``--api-base URL`` sends the same calls to an OpenAI-compatible server instead (vLLM, a
proxy, the tests' loopback server). Scoring is by logprobs where the provider returns
them (one token, temperature 0, top 20 alternatives) and by parsing the reply otherwise.

The request's parameters are litellm's mapping for the model, not a list kept here: a
reasoning model (o3, gpt-5-mini) gets ``max_completion_tokens`` with room for its reasoning
and no temperature or logprobs, which it would refuse. A provider's key goes only to that
provider's own endpoint: a custom ``--api-base`` gets the key in the variable that
``[judging] api_key_env`` names, or none, and plain http to another machine is refused
unless ``--allow-insecure-http``.

litellm resolves every model to its provider, endpoint and price. Providers that speak
the OpenAI protocol (OpenAI itself, vLLM, any --api-base) are then called through emkit's
lean HTTP client, which costs a sixth of the CPU of litellm.acompletion per call
(bench/bench_judge.py); every other provider is called through litellm.acompletion, and
``[judging] transport = "litellm"`` sends everything that way.

Live calls are paced to the provider's rate limits as its headers report them, or as
``[judging] rpm`` and ``tpm`` set them (emkit.judging.pacing). ``[judging] mode = "batch"``
sends the same requests through the provider's batch API with litellm's batch client
(``acreate_file``, ``acreate_batch``, ``aretrieve_batch``, ``afile_content``) at the batch
price (emkit.judging.batch).
"""

from __future__ import annotations

import functools
import math
import os
from urllib.parse import urlparse

from emkit.errors import EmkitError
from emkit.hookspecs import hookimpl
from emkit.interfaces import JudgeOptions, JudgeRequest, JudgeResult
from emkit.judging.api import Failure, RetryPolicy, current_ticket, parse_retry_after, run_async, run_calls_async
from emkit.judging.openai_http import Endpoint, HTTPStatusError, OpenAIChatClient, is_loopback
from emkit.judging.pacing import Pacer, call_tokens
from emkit.judging.scoring import describe_distribution, score_from_text, score_from_top_logprobs
from emkit.secrets import redact

TOP_LOGPROBS = 20
TEXT_MAX_TOKENS = 8  # room for "REFUSAL" and a number with punctuation
REASONING_MAX_TOKENS = 4096  # a reasoning model's hidden reasoning counts against its token limit
OPENAI_PROTOCOL = {"openai", "custom_openai", "hosted_vllm"}  # litellm providers emkit can call directly
OPENAI_ENDPOINT = "https://api.openai.com/v1"


def is_openai_endpoint(base: str) -> bool:
    url = urlparse(base)
    return url.scheme == "https" and url.hostname == "api.openai.com"


def check_api_base(api_base: str, allow_insecure_http: bool) -> None:
    """Judge prompts carry the answers (and a key may go with them): plain http only on this machine."""
    url = urlparse(api_base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EmkitError(f"--api-base {api_base} is not an http(s) URL; write it as https://HOST/v1.")
    if url.scheme == "http" and not is_loopback(url.hostname) and not allow_insecure_http:
        raise EmkitError(
            f"--api-base {api_base} is plain http to another machine, so the judge prompts would cross the network "
            f"unencrypted; use https, or pass --allow-insecure-http (allow_insecure_http = true) if that network "
            f"is yours."
        )


def import_litellm():
    """litellm, quiet and offline: its price list is read from the package, not the internet."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import logging

    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


def provider_model(model: str, api_base: str | None) -> str:
    """litellm needs a provider prefix for models it does not know; an api_base is OpenAI-compatible."""
    if not api_base:
        return model
    litellm = import_litellm()
    try:
        litellm.get_llm_provider(model)
        return model
    except Exception:
        return f"openai/{model}"


_NO_CONNECTION = {"ConnectError", "ConnectionRefusedError", "ConnectTimeout", "gaierror", "ClientConnectorError",
                  "ClientConnectorDNSError"}
_DROPPED = {"RemoteProtocolError", "ReadError", "ConnectionResetError", "ServerDisconnectedError", "ReadTimeout",
            "ClientPayloadError", "ClientOSError"}


def connection_failure(exc: BaseException) -> str | None:
    """litellm reports connection trouble as a 500 "Connection error"; the cause chain tells
    "no server there" (the judge is unreachable) from "the server hung up" (retry)."""
    chain, seen = [], 0
    while exc is not None and seen < 12:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    names = {type(e).__name__ for e in chain}
    if names & _NO_CONNECTION:
        return "refused"
    if names & _DROPPED:
        return "dropped"
    if any(type(e).__name__ == "APIConnectionError" or "Connection error" in str(e) for e in chain):
        return "refused"
    return None


def classify(exc: BaseException) -> Failure:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    message = redact(f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300]
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers", None) or {}
    retry_after = parse_retry_after(headers.get("retry-after")) if hasattr(headers, "get") else None
    if name in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return Failure(retry=False, unavailable=True, message=f"the credentials were refused ({message})")
    if name == "NotFoundError" or status == 404:
        return Failure(retry=False, unavailable=True, message=f"the model was not found ({message})")
    connection = connection_failure(exc)
    if connection == "refused":
        return Failure(retry=True, unavailable=True, message=f"cannot connect ({message})")
    if connection == "dropped":
        return Failure(retry=True, unavailable=False, message=f"the server dropped the connection ({message})")
    if status == 429 or name == "RateLimitError":
        return Failure(retry=True, unavailable=False, message=message, retry_after=retry_after)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409):
        return Failure(retry=False, unavailable=False, message=message)
    return Failure(retry=True, unavailable=False, message=message, retry_after=retry_after)


def result_from_completion(data: dict, mode: str, default_model: str) -> JudgeResult:
    """A chat completion (OpenAI's JSON shape) as a judgment, by logprobs when it has them."""
    choice = (data.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content") or ""
    usage = data.get("usage") or {}
    result = JudgeResult(
        score=None, status="unparseable", scoring="text", raw=content,
        judge_model=data.get("model") or default_model,
        input_tokens=usage.get("prompt_tokens") or 0, output_tokens=usage.get("completion_tokens") or 0,
    )
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    if mode == "logprobs" and tokens:
        first = tokens[0]
        top = {entry["token"]: entry["logprob"] for entry in (first.get("top_logprobs") or [])}
        if not top:
            top = {first["token"]: first["logprob"]}
        result.score, result.status, _ = score_from_top_logprobs(top)
        result.scoring = "logprobs"
        result.raw = describe_distribution({t: math.exp(lp) for t, lp in top.items()})
    else:
        result.score, result.status = score_from_text(content)
        if not content and choice.get("finish_reason") == "length":
            # a reasoning model that thought until its token limit; nothing to score
            result.error = f"no reply within the limit of {result.output_tokens} completion tokens"
    return result


class LiteLLMJudge:
    # What the runner reads of a judge (emkit.interfaces.JudgeNeeds): an API, so the GPU work never
    # waits for it and nothing is loaded here; providers with a batch API take [judging] mode = "batch".
    uses_gpu = False
    supports_batch = True
    models = ()
    reasoning_max_tokens = REASONING_MAX_TOKENS  # the most a reasoning model may think a call (billed as output)

    def __init__(self, model: str, options: JudgeOptions, name: str | None = None):
        self.model = model
        self.options = options
        self.api_base = options.api_base or None
        self.name = name or model
        self.identity = f"litellm:{model}@{self.api_base or 'provider-default'}"
        if options.reasoning_effort:  # a different effort is a different judge
            self.identity += f"+reasoning_effort={options.reasoning_effort}"
        self._litellm_model = None
        self._route: tuple | None = None
        self._params: dict[str, dict] = {}
        self.pacer = Pacer(options.rpm, options.tpm)  # kept across passes: what it learnt of the limits holds
        if self.api_base:
            check_api_base(self.api_base, options.allow_insecure_http)

    @property
    def litellm_model(self) -> str:
        if self._litellm_model is None:
            self._litellm_model = provider_model(self.model, self.api_base)
        return self._litellm_model

    @functools.cached_property
    def _provider(self) -> tuple[str, str | None]:
        litellm = import_litellm()
        try:
            wire_model, provider, _, _ = litellm.get_llm_provider(self.litellm_model, api_base=self.api_base)
        except Exception:
            return self.model, None
        return wire_model, provider

    def provider(self) -> tuple[str, str | None]:
        """(the model name on the wire, litellm's provider for it), resolved once: asked on every call."""
        return self._provider

    def api_key(self, provider: str | None) -> str | None:
        """The key this judge sends. OPENAI_API_KEY goes to OpenAI's own endpoint only; a custom
        --api-base gets the key in the variable judging.api_key_env names, or no key at all. Other
        providers at their own endpoints find their keys through litellm (None here)."""
        if self.options.api_key_env:
            return os.environ.get(self.options.api_key_env) or None
        own_endpoint = self.api_base is None or is_openai_endpoint(self.api_base)
        if own_endpoint and provider == "openai":
            return os.environ.get("OPENAI_API_KEY") or None
        return None

    def route(self) -> tuple[Endpoint | None, str, tuple[float, float]]:
        """(the endpoint to call directly, or None for litellm.acompletion; the model name on the
        wire; the price per input and output token), resolved once through litellm."""
        if self._route is None:
            wire_model, provider = self.provider()
            endpoint = None
            if provider in OPENAI_PROTOCOL and self.options.transport != "litellm":
                # never OPENAI_BASE_URL from the environment: the key would follow it anywhere
                base = self.api_base or OPENAI_ENDPOINT
                organization = os.environ.get("OPENAI_ORGANIZATION") if is_openai_endpoint(base) else None
                endpoint = Endpoint(base, self.api_key(provider), organization)
            self._route = (endpoint, wire_model, self.price_per_token())
        return self._route

    def scoring_mode(self) -> str:
        if self.options.scoring != "auto":
            return self.options.scoring
        return "logprobs" if self.offers_logprobs() else "text"

    def offers_logprobs(self) -> bool:
        litellm = import_litellm()
        try:
            params = litellm.get_supported_openai_params(model=self.litellm_model) or []
        except Exception:
            params = []
        return "logprobs" in params and "logprobs" in self.request_params("logprobs")

    @property
    def supports_logprobs(self) -> bool:
        """Whether this model takes the logprobs parameter at all (litellm's mapping keeps it)."""
        return "logprobs" in self.request_params("logprobs")

    def count_tokens(self, text: str) -> int:
        """litellm's tokenizer for this model; four characters a token when it has none."""
        try:
            return int(import_litellm().token_counter(model=self.litellm_model, text=text))
        except Exception:
            return max(1, len(text) // 4)

    @functools.cached_property
    def _reasons(self) -> bool:
        litellm = import_litellm()
        try:
            return bool(litellm.supports_reasoning(model=self.litellm_model))
        except Exception:
            return False

    def reasons(self) -> bool:
        """Whether the model thinks before it answers (litellm's model table says so), looked up once."""
        return self._reasons

    def wanted_params(self, mode: str) -> dict:
        """What emkit asks of every judge call, in OpenAI's terms, before litellm maps it."""
        reasoning = self.reasons()
        wanted = {"temperature": 0, "max_tokens": (REASONING_MAX_TOKENS if reasoning else
                                                   1 if mode == "logprobs" else TEXT_MAX_TOKENS)}
        if reasoning and self.options.reasoning_effort:
            wanted["reasoning_effort"] = self.options.reasoning_effort
        if mode == "logprobs":
            wanted.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return wanted

    def request_params(self, mode: str) -> dict:
        """The wanted parameters as this model takes them, by litellm's own mapping for it:
        max_tokens becomes max_completion_tokens, and what the model refuses is dropped."""
        if mode not in self._params:
            from litellm.utils import get_optional_params

            wire_model, provider = self.provider()
            try:
                mapped = get_optional_params(model=wire_model, custom_llm_provider=provider or "openai",
                                             drop_params=True, **self.wanted_params(mode))
            except Exception:
                mapped = dict(self.wanted_params(mode))
            mapped.pop("stream", None)
            mapped.update(mapped.pop("extra_body", None) or {})  # the SDK merges it into the JSON body
            self._params[mode] = mapped
        return self._params[mode]

    def unavailable_reason(self) -> str | None:
        if self.options.api_key_env and not os.environ.get(self.options.api_key_env):
            return f"{self.options.api_key_env} (named by judging.api_key_env) is not set"
        if self.api_base:
            return None  # a server of the user's own: reachability is checked by the first call
        litellm = import_litellm()
        try:
            env = litellm.validate_environment(model=self.litellm_model)
        except Exception:
            return None
        missing = env.get("missing_keys") or []
        if missing:
            return f"{', '.join(missing)} is not set"
        return None

    def price_per_token(self, batch: bool = False) -> tuple[float, float]:
        """(input, output) dollars per token from litellm's offline price table; 0 when unknown.
        ``batch``: the batch API's price where the table has one (OpenAI: half), else the live price."""
        litellm = import_litellm()
        entry = litellm.model_cost.get(self.litellm_model) or litellm.model_cost.get(self.model.split("/")[-1]) or {}
        live = float(entry.get("input_cost_per_token") or 0.0), float(entry.get("output_cost_per_token") or 0.0)
        if not batch:
            return live
        return (float(entry.get("input_cost_per_token_batches") or live[0]),
                float(entry.get("output_cost_per_token_batches") or live[1]))

    @property
    def observed_limits(self) -> dict[str, float]:
        """The rate limits in force for live calls (read from the headers, or set by hand)."""
        return self.pacer.limits

    def call_tokens(self, request: JudgeRequest, mode: str) -> int:
        """What a call counts against the token limit: its prompt and the most it may generate."""
        params = self.request_params(mode)
        return call_tokens(request.prompt, int(params.get("max_completion_tokens") or params.get("max_tokens") or 16))

    async def _call_direct(self, client: OpenAIChatClient, request: JudgeRequest, mode: str) -> JudgeResult:
        _, wire_model, (input_price, output_price) = self.route()
        ticket, headers, limited = current_ticket.get(), None, False
        try:
            data, headers = await client.complete_with_headers(self.request_body(request, mode))
        except HTTPStatusError as exc:
            headers, limited = exc.response.headers, exc.status_code == 429
            raise
        finally:  # also when the call timed out: its ticket is no longer in flight
            self.pacer.observe(headers, ticket, limited)
        result = result_from_completion(data, mode, self.model)
        result.cost_usd = result.input_tokens * input_price + result.output_tokens * output_price
        return result

    def request_body(self, request: JudgeRequest, mode: str) -> dict:
        """The chat completion request in OpenAI's shape, as a live call and a batch file line send it."""
        _, wire_model, _ = self.route()
        return {"model": wire_model, "messages": [{"role": "user", "content": request.prompt}],
                **self.request_params(mode)}

    async def _call_litellm(self, request: JudgeRequest, mode: str) -> JudgeResult:
        litellm = import_litellm()
        kwargs = dict(
            model=self.litellm_model,
            messages=[{"role": "user", "content": request.prompt}],
            num_retries=0,  # emkit retries, with backoff that honours Retry-After
            max_retries=0,
            timeout=self.options.timeout_s,
            drop_params=True,  # litellm maps the parameters for the model and drops what it refuses
            **self.wanted_params(mode),
        )
        _, provider = self.provider()
        key = self.api_key(provider)
        if self.api_base:
            kwargs["api_base"] = self.api_base
            kwargs["api_key"] = key or "not-needed"  # never the provider's own key from the environment
        elif provider == "openai":
            kwargs["api_base"] = OPENAI_ENDPOINT  # not OPENAI_BASE_URL: the key goes to OpenAI only
        if key and not self.api_base:
            kwargs["api_key"] = key
        ticket, headers, limited = current_ticket.get(), None, False
        try:
            response = await litellm.acompletion(**kwargs)
            headers = (getattr(response, "_hidden_params", None) or {}).get("additional_headers")
        except Exception as exc:
            headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None),
                                                                                "headers", None)
            limited = getattr(exc, "status_code", None) == 429
            raise
        finally:
            self.pacer.observe(headers, ticket, limited)
        result = result_from_completion(response.model_dump(), mode, self.model)
        # litellm prices every response as it arrives
        result.cost_usd = float((getattr(response, "_hidden_params", None) or {}).get("response_cost") or 0.0)
        return result

    def score(self, requests, on_result, progress) -> None:
        mode = self.scoring_mode()
        if mode == "logprobs" and not self.supports_logprobs:
            raise EmkitError(f"judging.scoring = \"logprobs\", but {self.model} does not return logprobs; use "
                             f"scoring = \"auto\" or \"text\".")
        work = self._batch if self.options.mode == "batch" else self._live
        with progress(total=len(requests), unit="judgments", desc=f"judge {self.name}") as bar:
            run_async(lambda receive, progress_bar: work(requests, receive, progress_bar, mode), on_result, bar)

    async def _live(self, requests, on_result, bar, mode: str) -> None:
        endpoint, _, _ = self.route()
        policy = RetryPolicy(timeout_s=self.options.timeout_s, max_retries=self.options.max_retries,
                             backoff_base_s=self.options.retry_backoff_s)
        if endpoint is not None:
            client = OpenAIChatClient(endpoint, connections=self.options.concurrency)
            call, context = (lambda r: self._call_direct(client, r, mode)), client
        else:
            call, context = (lambda r: self._call_litellm(r, mode)), None
        await run_calls_async(requests, call, classify, on_result, concurrency=self.options.concurrency,
                              policy=policy, scoring=mode, judge_name=self.name, bar=bar, context=context,
                              pace=lambda r: self.pacer.acquire(self.call_tokens(r, mode)))

    async def _batch(self, requests, on_result, bar, mode: str) -> None:
        from emkit.judging.batch import BatchLedger, BatchLimits, BatchRun
        from emkit.judging.cache import default_cache_path

        input_price, output_price = self.price_per_token(batch=True)

        def parse(body: dict) -> JudgeResult:
            result = result_from_completion(body, mode, self.model)
            result.cost_usd = result.input_tokens * input_price + result.output_tokens * output_price
            return result

        def classify_line(status: int, body: dict) -> Failure:
            message = ((body or {}).get("error") or {}).get("message") or str(body)[:200]
            return classify(HTTPStatusError(status, message, {}))

        options = self.options
        ledger = BatchLedger(options.ledger or default_cache_path())
        try:
            runner = BatchRun(
                identity=self.identity, judge_name=self.name, api=LiteLLMBatchAPI(self), scoring=mode,
                body=lambda r: self.request_body(r, mode), parse=parse, classify=classify_line,
                tokens=lambda r: self.call_tokens(r, mode), ledger=ledger,
                limits=BatchLimits(max_requests=options.batch_max_requests,
                                   max_bytes=int(options.batch_max_mb * 1000 * 1000),
                                   enqueued_tokens=options.batch_enqueued_tokens, poll_s=options.batch_poll_s,
                                   resend=options.batch_resend, max_rounds=max(1, options.max_retries)),
                live=lambda again: self._live(again, on_result, bar, mode),
            )
            await runner.run(requests, on_result, bar)
        finally:
            ledger.close()


class LiteLLMBatchAPI:
    """The provider's Files and Batch APIs through litellm (emkit.judging.batch.BatchAPI). A key goes
    where a live call's would: OpenAI's to OpenAI only, a custom base's from judging.api_key_env."""

    def __init__(self, judge: LiteLLMJudge):
        _, provider = judge.provider()
        self.kwargs = {"custom_llm_provider": provider or "openai"}
        key = judge.api_key(provider)
        if judge.api_base:
            self.kwargs.update(api_base=judge.api_base, api_key=key or "not-needed")
        elif provider == "openai":
            self.kwargs.update(api_base=OPENAI_ENDPOINT)
            if key:
                self.kwargs["api_key"] = key

    @staticmethod
    def _plain(obj) -> dict:
        return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)

    async def upload(self, name: str, data: bytes) -> str:
        litellm = import_litellm()
        return (await litellm.acreate_file(file=(name, data), purpose="batch", **self.kwargs)).id

    async def create(self, file_id: str, metadata: dict) -> dict:
        litellm = import_litellm()
        batch = await litellm.acreate_batch(completion_window="24h", endpoint="/v1/chat/completions",
                                            input_file_id=file_id, metadata=metadata, **self.kwargs)
        return self._plain(batch)

    async def retrieve(self, batch_id: str) -> dict:
        litellm = import_litellm()
        return self._plain(await litellm.aretrieve_batch(batch_id=batch_id, **self.kwargs))

    async def content(self, file_id: str) -> bytes:
        litellm = import_litellm()
        return (await litellm.afile_content(file_id=file_id, **self.kwargs)).content

    async def find(self, file_id: str) -> dict | None:
        """The batch made from this file, looking through every page of the list (newest first): an
        organisation with many batches has the one sought far past the first page."""
        litellm = import_litellm()
        after = None
        while True:
            listed = self._plain(await litellm.alist_batches(limit=100, after=after, **self.kwargs))
            page = [self._plain(batch) for batch in listed.get("data") or []]
            for batch in page:
                if batch.get("input_file_id") == file_id:
                    return batch
            if not listed.get("has_more") or not page:
                return None
            after = listed.get("last_id") or page[-1].get("id")


class LiteLLMBackend:
    name = "litellm"
    description = "any model litellm can call (OpenAI, Anthropic, an OpenAI-compatible --api-base, ...)"

    def create(self, argument: str, options: JudgeOptions) -> LiteLLMJudge:
        return LiteLLMJudge(argument, options)


@hookimpl
def register_judges(register):
    register(LiteLLMBackend())
