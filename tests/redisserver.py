"""
Real Redis servers for the cluster tests: Debian's C{redis-server} started as a child process on
an ephemeral port of 127.0.0.1, its data in the test's directory, and stopped by the test.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import e2e
from tests.mosquitto import freePort

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


class RedisServer:
    """
    One redis-server process.  C{port} and the data directory stay the same across L{stop} and
    L{start}, so a restarted server finds its append-only file again (a "Redis restarted" test).

    @ivar url: the C{redis://} address nodes are configured with.
    """

    def __init__(self, directory: Path, name: str = "redis", appendfsync: str = "always") -> None:
        """
        @param appendfsync: C{always} (every write on disk before Redis answers: the cluster's
            sync guarantee), C{everysec} or C{no}.
        """
        assert REDIS_SERVER, "redis-server missing: apt-get install redis-server (see .ci/run)"
        self.port = freePort()
        self.url = f"redis://{e2e.HOST}:{self.port}"
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "redis.log"
        self.config = self.directory / "redis.conf"
        self.config.write_text(
            f"bind {e2e.HOST}\n"
            f"port {self.port}\n"
            f"dir {self.directory}\n"
            f"logfile {self.log}\n"
            "save ''\n"
            "appendonly yes\n"
            f"appendfsync {appendfsync}\n"
            "daemonize no\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert self._process is None
        assert REDIS_SERVER
        self._process = subprocess.Popen(
            [REDIS_SERVER, str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + e2e.TIMEOUT
        while True:
            try:
                with socket.create_connection((e2e.HOST, self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start:\n{self.logText()}")
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it finishes its append-only file) or, with C{kill}, SIGKILL."""
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(e2e.TIMEOUT)

    def logText(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"


Start = Callable[..., RedisServer]


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Start]:
    """C{redis_servers(name="redis", appendfsync="always")} starts one; all stop at teardown."""
    started: list[RedisServer] = []

    def start(name: str = "redis", appendfsync: str = "always") -> RedisServer:
        server = RedisServer(tmp_path, name, appendfsync)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
