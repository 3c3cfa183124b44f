"""The Redis the cluster tests run against is real, reachable, and keeps what it was told."""

from __future__ import annotations

import socket

from tests import e2e
from tests.redisserver import Start, redis_servers

__all__ = ["redis_servers"]


def command(port: int, *words: str) -> bytes:
    """One RESP command over a fresh socket; the raw first reply."""
    request = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words
    )
    with socket.create_connection((e2e.HOST, port), e2e.TIMEOUT) as s:
        s.sendall(request)
        return s.recv(4096)


def test_redisKeepsAWriteAcrossARestart(redis_servers: Start) -> None:
    """
    A value written with C{appendfsync always} is there after SIGKILL and a restart on the same
    port: the fixture's server is the durable engine the cluster's sync guarantee relies on.
    """
    server = redis_servers()
    assert command(server.port, "SET", "k", "v") == b"+OK\r\n"
    server.stop(kill=True)
    server.start()
    assert command(server.port, "GET", "k") == b"$1\r\nv\r\n"
