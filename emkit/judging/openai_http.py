"""A lean client for OpenAI-compatible chat completions: the judge's fast transport.

litellm.acompletion costs about 14 ms of CPU per call (provider resolution, logging
objects, cost bookkeeping, the OpenAI SDK), which caps a judge at ~70 calls/s on one core
whatever the concurrency; this client costs under 1 ms (bench/bench_judge.py). litellm
still decides the provider, the base URL and the price; only the HTTP exchange is done
here, and only for providers that speak the OpenAI protocol.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass


def is_loopback(address) -> bool:
    """Whether a host (or a socket address) is this machine: plain http is allowed only there."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


class HTTPStatusError(Exception):
    """A non-2xx reply, shaped like the client libraries' errors so one classifier reads both."""

    def __init__(self, status_code: int, message: str, headers):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.response = type("Response", (), {"headers": headers})()


@dataclass
class Endpoint:
    base_url: str  # .../v1
    api_key: str | None  # None: no Authorization header (a local server that wants no key)
    organization: str | None = None


class OpenAIChatClient:
    """``async with OpenAIChatClient(endpoint, connections) as client: await client.complete(body)``."""

    def __init__(self, endpoint: Endpoint, connections: int):
        self.endpoint = endpoint
        self.connections = connections
        self.session = None
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if endpoint.api_key:
            self.headers["Authorization"] = f"Bearer {endpoint.api_key}"
        if endpoint.organization:
            self.headers["OpenAI-Organization"] = endpoint.organization

    async def __aenter__(self):
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections), trust_env=True,
            timeout=aiohttp.ClientTimeout(total=None),  # emkit's own asyncio timeout governs each call
        )
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def complete(self, body: dict) -> dict:
        return (await self.complete_with_headers(body))[0]

    async def complete_with_headers(self, body: dict) -> tuple[dict, dict]:
        """The completion and the reply's headers (which carry the provider's rate-limit state)."""
        async with self.session.post(self.url, data=json.dumps(body), headers=self.headers) as response:
            raw = await response.read()
            if response.status >= 400:
                try:
                    message = json.loads(raw)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = raw[:300].decode(errors="replace")
                raise HTTPStatusError(response.status, message, response.headers)
            return json.loads(raw), response.headers
