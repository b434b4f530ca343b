"""The tests' own promise: nothing in the suite may reach beyond this machine."""

import socket

import pytest

from emkit.testing.network import NetworkGuard, is_loopback

pytest_plugins = ["pytester"]


def test_loopback_addresses_are_allowed():
    assert is_loopback(("127.0.0.1", 80)) and is_loopback(("::1", 80, 0, 0)) and is_loopback(("localhost", 1))
    assert not is_loopback(("93.184.216.34", 443)) and not is_loopback(("10.0.0.1", 80))


def test_a_connection_leaving_the_machine_is_refused_and_recorded():
    with NetworkGuard() as guard:
        sock = socket.socket()
        with pytest.raises(ConnectionRefusedError, match="network guard"):
            sock.connect(("203.0.113.7", 443))
        sock.close()
    assert guard.attempts == ["('203.0.113.7', 443)"]


def test_a_test_that_reaches_out_fails_even_when_it_swallows_the_error(pytester):
    pytester.makeconftest(
        "import pytest\n@pytest.fixture(autouse=True)\ndef _offline(no_network):\n    yield\n")
    pytester.makepyfile(
        "import socket\n"
        "def test_quietly_online():\n"
        "    sock = socket.socket()\n"
        "    try:\n        sock.connect(('203.0.113.7', 443))\n    except OSError:\n        pass\n"
        "def test_loopback_is_fine():\n"
        "    server = socket.create_server(('127.0.0.1', 0))\n"
        "    socket.create_connection(server.getsockname()).close()\n    server.close()\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*tried to reach the network*203.0.113.7*"])
