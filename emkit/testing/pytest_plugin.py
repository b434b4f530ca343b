"""pytest fixtures for emkit and its plugin authors (installed as the pytest11 entry point `emkit`).

    def test_my_domain(emkit_tiny_model, judge_server): ...

``emkit_tiny_model`` / ``emkit_tiny_judge``: paths of the built-in tiny models (built once
into emkit's cache). ``judge_server``: a running loopback OpenAI-compatible judge;
``judge_server_factory(responder=..., latency_s=...)`` makes more. ``no_network``: fails
the test if anything connects beyond this machine. Nothing heavy is imported until a
fixture is used.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def emkit_tiny_model():
    from emkit.models.builtins import builtin_model_path

    return builtin_model_path("tiny-llama")


@pytest.fixture(scope="session")
def emkit_tiny_judge():
    from emkit.models.builtins import builtin_model_path

    return builtin_model_path("tiny-judge")


@pytest.fixture
def judge_server_factory():
    from emkit.testing.judge_server import JudgeServer

    servers = []

    def make(responder=None, latency_s: float = 0.0, **options):
        """``options``: JudgeServer's others, e.g. rate_limits=RateLimits(rpm=500), batch=BatchBehaviour(...)."""
        server = JudgeServer(responder=responder, latency_s=latency_s, **options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def judge_server(judge_server_factory):
    return judge_server_factory()


@pytest.fixture
def no_network():
    from emkit.testing.network import NetworkGuard

    with NetworkGuard() as guard:
        yield guard
    if guard.attempts:
        pytest.fail(f"the test tried to reach the network: {', '.join(guard.attempts[:3])}")
