"""OpenAI's per-minute rate limits, as the loopback judge server enforces them.

OpenAI limits requests and tokens per minute and reports both on every reply
(platform.openai.com/docs/guides/rate-limits): ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (the time until the
limit is whole again, written "1s", "6m0s", "120ms") and the same three for tokens. A
request counts its prompt's estimated tokens plus its ``max_tokens`` against the token
limit; one over either limit is refused with a 429 that says which limit and when to try
again, and counts against the request limit all the same ("unsuccessful requests contribute
to your per-minute limit, so continuously resending a request won't work"). Both limits
refill continuously, as a bucket holding a minute's worth.
"""

from __future__ import annotations

import math
import threading
import time


def request_tokens(body: dict) -> int:
    """What a chat completion request counts against the token limit: the prompt's characters / 4
    (OpenAI's own rule of thumb for its estimate) plus the most it may generate."""
    chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
    most = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    return math.ceil(chars / 4) + int(most)


def duration_text(seconds: float) -> str:
    """OpenAI's way of writing a reset time: 120ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class _Bucket:
    def __init__(self, per_minute: int):
        self.limit = per_minute
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.at = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.limit - self.level) / self.rate


class RateLimits:
    """``RateLimits(rpm=500, tpm=200_000)``; ``admit(body)`` -> (429 error body or None, headers)."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, send_headers: bool = True):
        self.send_headers = send_headers  # False: a provider that enforces limits but does not report them
        self.requests = _Bucket(rpm) if rpm else None
        self.tokens = _Bucket(tpm) if tpm else None
        self.refused = 0
        self.admitted = 0
        self._lock = threading.Lock()

    def admit(self, body: dict) -> tuple[dict | None, dict[str, str]]:
        cost = request_tokens(body)
        model = str(body.get("model") or "the model")
        with self._lock:
            now = time.monotonic()
            error = None
            for bucket, amount, name, unit in ((self.requests, 1, "requests", "RPM"), (self.tokens, cost, "tokens", "TPM")):
                if bucket is None:
                    continue
                bucket.refill(now)
                if bucket.level < amount and error is None:
                    wait = bucket.wait_for(amount)
                    error = {"error": {
                        "message": f"Rate limit reached for {model} in organization org-emkit-test on {name} per "
                                   f"min ({unit}): Limit {bucket.limit}, Used {bucket.limit - int(bucket.level)}, "
                                   f"Requested {amount}. Please try again in {duration_text(wait)}. Visit "
                                   f"https://platform.openai.com/account/rate-limits to learn more.",
                        "type": name, "param": None, "code": "rate_limit_exceeded"}}
            if error is None:
                for bucket, amount in ((self.requests, 1), (self.tokens, cost)):
                    if bucket is not None:
                        bucket.level -= amount
                self.admitted += 1
            else:
                self.refused += 1
                if self.requests is not None:  # a refused request is counted too
                    self.requests.level = max(self.requests.level - 1, -self.requests.limit)
            return error, self._headers()

    def _headers(self) -> dict[str, str]:
        headers = {}
        if not self.send_headers:
            return headers
        for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = duration_text(bucket.reset_s())
        return headers
