"""Live judging paced to the provider's rate limits, before a 429 says so.

A provider limits requests and tokens per minute and reports where a client stands on every
reply: OpenAI (and Azure, vLLM and most OpenAI-compatible servers) in
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, Anthropic in
``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``. The pacer keeps one bucket
per limit: it refills at the rate the reset time implies (a minute's worth per minute when
no reset is given), every call takes one request and its tokens out before it is sent, and
each reply brings the bucket down to what the server says is left, less the calls still in
flight (the server may not have counted those yet). It refills 3% slower than the limit,
because the client's minute and the server's never start at the same moment. ``[judging] rpm`` and ``tpm``
set limits by hand, for a provider that sends no headers or a budget shared with others;
where both are known the lower one holds.

A call's tokens are counted as the provider counts them for its limit: the prompt's
characters / 4 and the most the call may generate.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
# Refill a little slower than the limit: the client's clock and the server's never agree exactly
# (the server's minute starts when the first call arrives, the client's when it is sent).
MARGIN = 0.97


def parse_reset(value) -> float | None:
    """A reset time in seconds: OpenAI's "6m0s", "1.5s", "120ms"; an RFC 3339 time (Anthropic); or what
    Retry-After holds (seconds, an HTTP date)."""
    from emkit.judging.api import parse_retry_after

    if value is None:
        return None
    text = str(value).strip()
    plain = parse_retry_after(text)
    if plain is not None:
        return plain
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        from datetime import datetime, timezone

        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except ValueError:
        return None


def limit_headers(headers) -> dict[str, dict[str, float | None]]:
    """{"requests": {"limit", "remaining", "reset"}, "tokens": {...}} from a reply's headers, whichever
    provider's names they use (litellm prefixes the provider's own headers with "llm_provider-")."""
    if not headers:
        return {}
    plain = {}
    for key, value in dict(headers).items():
        key = key.lower()
        plain[key[len("llm_provider-"):] if key.startswith("llm_provider-") else key] = value
    found = {}
    for kind in ("requests", "tokens"):
        entry = {}
        for field in ("limit", "remaining", "reset"):
            value = plain.get(f"x-ratelimit-{field}-{kind}", plain.get(f"anthropic-ratelimit-{kind}-{field}"))
            if value is None:
                continue
            entry[field] = parse_reset(value) if field == "reset" else _number(value)
        if entry.get("limit") or entry.get("remaining") is not None:
            found[kind] = entry
    return found


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Bucket:
    """``limit`` a minute, refilling at ``rate`` a second; ``level`` is what may be sent now."""

    def __init__(self, limit: float, level: float | None = None):
        self.limit = limit
        self.level = limit * MARGIN if level is None else min(limit, level)
        self.rate = limit / 60.0 * MARGIN
        self.at = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        amount = min(amount, self.limit)  # a call larger than the whole limit waits for a full bucket
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


@dataclass
class Ticket:
    """One call's share, held while it is in flight."""
    requests: int
    tokens: int


class Pacer:
    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.configured = {"requests": rpm or None, "tokens": tpm or None}
        self.buckets: dict[str, Bucket] = {k: Bucket(v) for k, v in self.configured.items() if v}
        self.in_flight = Ticket(0, 0)
        self.waited_s = 0.0
        self.limited = 0  # 429s met anyway

    @property
    def limits(self) -> dict[str, float]:
        """The limits in force: {"requests": per minute, "tokens": per minute} (those known)."""
        return {kind: bucket.limit for kind, bucket in self.buckets.items()}

    async def acquire(self, tokens: int) -> Ticket:
        while True:
            now = time.monotonic()
            wait = 0.0
            for kind, bucket in self.buckets.items():
                bucket.refill(now)
                wait = max(wait, bucket.wait_for(1 if kind == "requests" else tokens))
            if wait <= 0:
                break
            self.waited_s += wait
            await asyncio.sleep(wait)
        for kind, bucket in self.buckets.items():
            bucket.level -= 1 if kind == "requests" else tokens
        self.in_flight = Ticket(self.in_flight.requests + 1, self.in_flight.tokens + tokens)
        return Ticket(1, tokens)

    def observe(self, headers, ticket: Ticket | None, limited: bool = False) -> None:
        """A call has ended, with a reply's headers or none (``limited``: it was a 429): the server's view
        replaces the client's where lower. Called once per ticket, however the call ended."""
        self.limited += int(limited)
        if ticket is not None:
            self.in_flight = Ticket(self.in_flight.requests - ticket.requests, self.in_flight.tokens - ticket.tokens)
        now = time.monotonic()
        for kind, entry in limit_headers(headers).items():
            limit = entry.get("limit")
            configured = self.configured[kind]
            if limit and configured:
                limit = min(limit, configured)
            bucket = self.buckets.get(kind)
            if bucket is None:
                if not limit:
                    continue
                bucket = self.buckets[kind] = Bucket(limit)
            elif limit and limit != bucket.limit:
                bucket.limit, bucket.rate = limit, limit / 60.0 * MARGIN
            bucket.refill(now)
            remaining, reset = entry.get("remaining"), entry.get("reset")
            if remaining is not None:
                flying = self.in_flight.requests if kind == "requests" else self.in_flight.tokens
                bucket.level = min(bucket.level, remaining - flying)
                if reset and bucket.limit > remaining:
                    # the server's own refill: what is missing comes back by the reset time
                    bucket.rate = max(bucket.limit / 3600.0,
                                      min(bucket.limit / 60.0, (bucket.limit - remaining) / reset) * MARGIN)
            if limited:
                bucket.level = min(bucket.level, 0.0)


def call_tokens(prompt: str, max_tokens: int) -> int:
    return math.ceil(len(prompt) / 4) + max_tokens
