"""A guard that refuses connections leaving the machine, for tests that must run offline."""

from __future__ import annotations

import socket

from emkit.judging.openai_http import is_loopback  # noqa: F401  (tests import it from here too)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkGuard:
    """While active, a TCP/UDP connection to a non-loopback address raises and is recorded."""

    def __init__(self):
        self.attempts: list[str] = []

    def _check(self, sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
            self.attempts.append(repr(address))
            raise ConnectionRefusedError(f"emkit test network guard: connection to {address!r} refused (offline test)")

    def __enter__(self):
        guard = self

        def connect(sock, address):
            guard._check(sock, address)
            return _real_connect(sock, address)

        def connect_ex(sock, address):
            guard._check(sock, address)
            return _real_connect_ex(sock, address)

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        return self

    def __exit__(self, *exc):
        socket.socket.connect = _real_connect
        socket.socket.connect_ex = _real_connect_ex
