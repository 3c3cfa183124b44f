"""
Real mosquitto brokers for the bridge tests: Debian's C{mosquitto} started as a child process
on an ephemeral port of 127.0.0.1 with a configuration written for the test, and stopped by it.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import e2e

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def freePort() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now (mosquitto cannot bind port 0)."""
    with socket.socket() as s:
        s.bind((e2e.HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """
    One mosquitto process.  C{port} stays the same across L{stop} and L{start}, so a bridge
    pointed at it finds it again after a restart.

    @ivar log: mosquitto's own log (C{log_type all}), for a failing test's message.
    """

    def __init__(self, directory: Path, name: str, config: str = "", port: int = 0) -> None:
        """
        @param config: lines added to the configuration (e.g. a bridge's C{connection}).
        """
        assert MOSQUITTO, "mosquitto missing: apt-get install mosquitto (see .ci/run)"
        self.port = port or freePort()
        self.log = directory / f"{name}.log"
        self.config = directory / f"{name}.conf"
        persistence = "" if "persistence" in config else "persistence false\n"
        self.config.write_text(
            f"listener {self.port} {e2e.HOST}\n"
            "allow_anonymous true\n"
            # As root mosquitto would switch to the mosquitto user, who cannot write the log here.
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.log}\n"
            "log_type all\n" + persistence + config
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        assert self._process is None
        assert MOSQUITTO
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + e2e.TIMEOUT
        while True:
            try:
                socket.create_connection((e2e.HOST, self.port), 0.5).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mosquitto did not start:\n{self.logText()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(e2e.TIMEOUT)

    def logText(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"


Start = Callable[..., Mosquitto]


@pytest.fixture
def mosquittos(tmp_path: Path) -> Iterator[Start]:
    """C{mosquittos(name, config="", port=0)} starts a mosquitto; all are stopped at teardown."""
    started: list[Mosquitto] = []

    def start(name: str, config: str = "", port: int = 0) -> Mosquitto:
        broker = Mosquitto(tmp_path, name, config, port)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()
