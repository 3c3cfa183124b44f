"""
The broker's life cycle as an operator runs it, with the real C{twistd}: a listener that cannot
be opened stops start-up with one line; daemonized (no C{-n}) the broker serves with every store,
keeps a pid file and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from zope.interface import implementer

from mqttd.broker import Broker
from mqttd.config import BrokerConfig, ListenerConfig
from mqttd.protocol import MQTTServerFactory
from mqttd.service import BrokerService, ListenerService
from tests import e2e
from tests.test_logging import Events
from tests.test_twistd import TIMEOUT, freePort, twistdCommand

# TEST-NET-1 (RFC 5737): never an address of this machine.
FOREIGN_ADDRESS = "192.0.2.1"


@pytest.fixture
def heldPort() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def runTwistd(tmp_path: Path, config: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run C{twistd -n mqttd} on C{config} until it exits; its result and its log."""
    path = tmp_path / "mqttd.ini"
    path.write_text(config)
    command, env = twistdCommand(tmp_path, "--config", str(path))
    log = tmp_path / "twistd.log"
    command[command.index("--logfile=-")] = f"--logfile={log}"
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return result, log.read_text() if log.exists() else ""


def listener(name: str, endpoint: str) -> str:
    return f"[listener:{name}]\nendpoint = {endpoint}\nallow_anonymous = true\n"


def assertOneLine(result: subprocess.CompletedProcess[str], log: str, expected: str) -> None:
    """
    twistd exited 1, and the log (where twistd puts standard error) holds C{expected} as the
    text of exactly one line, with no traceback; no pid file is left behind.
    """
    assert result.returncode == 1, log
    lines = [line for line in log.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, log
    assert lines[0].endswith(f"] {expected}"), log
    assert "Traceback" not in log + result.stderr
    assert "Restored" not in log


def test_portInUseStopsStartup(tmp_path: Path, heldPort: int) -> None:
    """
    A listener whose port another program holds makes C{twistd -n mqttd} exit with status 1,
    one line naming the listener, its endpoint and the OS error, no traceback, and no store
    restored (it used to log "Restored ..." and run forever without the listener).
    """
    endpoint = f"tcp:{heldPort}:interface=127.0.0.1"
    result, log = runTwistd(tmp_path, listener("main", endpoint))
    assertOneLine(
        result,
        log,
        f"twistd mqttd: listener main cannot listen on {endpoint}:"
        " [Errno 98] Address already in use",
    )
    assert not (tmp_path / "twistd.pid").exists()


def test_twoListenersOnOnePortStopStartup(tmp_path: Path) -> None:
    """
    Two listeners configured on the same port: the second cannot be opened, and start-up
    stops naming it (the first, already bound, is closed with the process).
    """
    port = freePort()
    endpoint = f"tcp:{port}:interface=127.0.0.1"
    result, log = runTwistd(tmp_path, listener("one", endpoint) + listener("two", endpoint))
    assertOneLine(
        result,
        log,
        f"twistd mqttd: listener two cannot listen on {endpoint}:"
        " [Errno 98] Address already in use",
    )


def test_missingInterfaceStopsStartup(tmp_path: Path) -> None:
    """A listener on an address this machine does not have stops start-up the same way."""
    endpoint = f"tcp:{freePort()}:interface={FOREIGN_ADDRESS}"
    result, log = runTwistd(tmp_path, listener("lan", endpoint))
    assertOneLine(
        result,
        log,
        f"twistd mqttd: listener lan cannot listen on {endpoint}:"
        " [Errno 99] Cannot assign requested address",
    )


def daemonCommand(tmp_path: Path, config: Path) -> tuple[list[str], dict[str, str], Path, Path]:
    """C{twistd mqttd} daemonized (no C{-n}), logging to a file: command, env, pid file, log."""
    command, env = twistdCommand(tmp_path, "--config", str(config))
    command.remove("--nodaemon")
    log = tmp_path / "twistd.log"
    command[command.index("--logfile=-")] = f"--logfile={log}"
    return command, env, tmp_path / "twistd.pid", log


def test_daemonPortInUse(tmp_path: Path, heldPort: int) -> None:
    """
    Daemonized, a listener that cannot be opened makes the command itself (the parent that
    waits for the daemon's start-up) exit 1 with the OS error, rather than report success or
    wait forever; the daemon's log has the one line, and no pid file is left.
    """
    config = tmp_path / "mqttd.ini"
    config.write_text(listener("main", f"tcp:{heldPort}:interface=127.0.0.1"))
    command, env, pidfile, log = daemonCommand(tmp_path, config)
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "listener main: [Errno 98] Address already in use" in result.stderr
    waitFor(lambda: "cannot listen" in log.read_text(), "the daemon's log line")
    text = log.read_text()
    assert "Traceback" not in text
    assert "twistd mqttd: listener main cannot listen on" in text
    waitFor(lambda: not pidfile.exists(), "the pid file removed")


def waitFor(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"no {what} within {TIMEOUT}s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("store", ["memory", "sqlite", "file"])
def test_daemonServesAndStopsOnSigterm(tmp_path: Path, store: str) -> None:
    """
    C{twistd mqttd} without C{-n}, with each store: the command returns 0 once the daemon has
    started, the daemon writes its pid file, listens, acknowledges a QoS 1 PUBLISH (the durable
    stores' writer threads run in the daemon, not in the parent that forked it), and on SIGTERM
    shuts down cleanly and removes the pid file.
    """
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        listener("main", f"tcp:{port}:interface=127.0.0.1")
        + ("" if store == "memory" else f"[store]\nplugin = {store}\n")
    )
    command, env, pidfile, log = daemonCommand(tmp_path, config)
    result = subprocess.run(
        command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, timeout=TIMEOUT
    )
    assert result.returncode == 0
    waitFor(pidfile.exists, "pid file")
    waitFor(lambda: pidfile.read_text().strip().isdigit(), "pid in the pid file")
    pid = int(pidfile.read_text())
    try:
        waitFor(lambda: "Restored" in log.read_text(), "restore")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="daemon", clean_session=False)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            published = client.publish("daemon/t", b"kept", qos=1)
            published.wait_for_publish(TIMEOUT)
            assert published.is_published(), log.read_text()
        finally:
            client.disconnect()
            client.loop_stop()
        os.kill(pid, signal.SIGTERM)
        waitFor(lambda: not alive(pid), "exit after SIGTERM")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert "Server Shut Down." in text
    assert "Traceback" not in text
    assert not pidfile.exists()


@implementer(IStreamServerEndpoint)
class LaterEndpoint:
    """An endpoint whose listen answers later, as one waiting on a network resource would."""

    def __init__(self) -> None:
        self.listening: Deferred[IListeningPort] = Deferred()

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return self.listening


def test_listenerFailingLaterStopsTheBroker(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An endpoint that fails only after start-up has returned still stops the broker, with the
    same one line, rather than leave it running without the listener.
    """
    reactor = MemoryReactorClock()
    events = Events()
    monkeypatch.setattr(BrokerService, "log", Logger(observer=events))
    broker = Broker(replace(BrokerConfig(), sys_interval=0), reactor)
    service = BrokerService(broker, reactor)  # type: ignore[arg-type]
    endpoint = LaterEndpoint()
    listenerConfig = ListenerConfig("later", "tcp:1883")
    ListenerService(
        listenerConfig,
        endpoint,
        MQTTServerFactory(broker, listenerConfig, reactor),
        service._listenerFailed,
    ).setServiceParent(service)
    service.privilegedStartService()
    service.startService()
    assert not reactor.hasStopped
    endpoint.listening.errback(
        CannotListenError("", 1883, OSError(errno.EADDRINUSE, "Address already in use"))
    )
    assert reactor.hasStopped
    assert events.lines() == [
        "mqttd cannot start: listener later cannot listen on tcp:1883:"
        " [Errno 98] Address already in use"
    ]


def test_boundListenerAcceptsOnlyWhenTold(twisted_reactor: None) -> None:
    """
    A listener is bound at start-up but not read from (connections wait in the kernel's
    backlog) until the broker has restored its store and L{ListenerService.accept} is called.
    """
    reactor: Any = e2e.reactor
    listenerConfig = ListenerConfig("t", "tcp:0:interface=127.0.0.1")
    broker = Broker(replace(BrokerConfig(), sys_interval=0), reactor)
    service = ListenerService(
        listenerConfig,
        serverFromString(reactor, listenerConfig.listenEndpoint()),
        MQTTServerFactory(broker, listenerConfig, reactor),
        lambda error: None,
    )

    def bind() -> bool:
        service.privilegedStartService()
        return service.port in reactor.getReaders()

    def accept() -> bool:
        service.accept()
        return service.port in reactor.getReaders()

    assert e2e.in_reactor(bind) is False
    try:
        assert e2e.in_reactor(accept) is True
    finally:
        e2e.in_reactor(service.stopService)
