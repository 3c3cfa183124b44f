"""
One broker per store file: a durable store takes an exclusive OS lock on C{PATH.lock} beside its
file for as long as it is open, so a second broker configured with the same C{path} stops
start-up with one line naming the file and the pid holding it, instead of both writing the file
and losing each other's acknowledged messages.  The lock survives twistd's fork into the
background, goes with the process however it ends, and does not stop C{mqttd groups} from
editing a running broker's SQLite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttd import cli
from mqttd.config import BrokerConfig
from mqttd.interfaces import PluginConfigError, PluginContext
from mqttd.message import Message
from mqttd.plugin_loader import findPlugins
from tests import e2e
from tests.test_lifecycle import alive, daemonCommand, listener, waitFor
from tests.test_store import closed, restored
from tests.test_twistd import TIMEOUT, freePort, twistdCommand

FILES = {"sqlite": "mqttd.db", "file": "mqttd.log"}


def build(kind: str, directory: Path) -> Any:
    return e2e.in_reactor(
        findPlugins()[kind].build,
        {"path": FILES[kind], "group_poll_interval": "0.05"} if kind == "sqlite" else {},
        PluginContext(e2e.reactor, str(directory), BrokerConfig()),
    )


@pytest.mark.usefixtures("twisted_reactor")
@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_secondStoreOnOneFileRefused(kind: str, tmp_path: Path) -> None:
    """
    While a store is open, opening another on the same file is refused with one line naming
    the file, the lock file and the holder's pid, and the refused store neither reads nor
    changes the file; once the first is closed, the file opens again with what it wrote.
    """
    first = build(kind, tmp_path)
    restored(first)
    e2e.in_reactor(lambda: first.retainedSet(Message("r", b"kept", 1, True)))
    e2e.in_reactor(first.flush)
    store = tmp_path / FILES[kind]
    before = store.read_bytes()
    with pytest.raises(PluginConfigError) as raised:
        build(kind, tmp_path)
    assert raised.value.key == "path"
    assert raised.value.why == (
        f"{store}: in use by this process (pid {os.getpid()}), opened twice, which holds"
        f" {store}.lock; one store per broker"
    )
    assert store.read_bytes() == before
    closed(first)
    again = build(kind, tmp_path)
    assert [m.payload for m in restored(again).retained] == [b"kept"]
    closed(again)


@pytest.mark.usefixtures("twisted_reactor")
def test_groupsCommandEditsALockedSQLiteStore(tmp_path: Path) -> None:
    """
    C{mqttd groups} does not take the broker's lock: it edits the SQLite store an open store
    (a running broker) holds, and the store reads the change on its next poll.
    """
    store = build("sqlite", tmp_path)
    restored(store)
    changes: list[None] = []
    e2e.in_reactor(store.watch, lambda: changes.append(None))
    assert cli.main(["groups", "--file", store.path, "add", "g", "carol:1"]) == 0
    e2e.wait_until(lambda: bool(changes), "the store to read the change")
    assert e2e.in_reactor(lambda: store.group("g").members) == {"carol": 1}
    closed(store)


def publishKept(port: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="kept", clean_session=False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        published = client.publish("kept/t", b"kept", qos=1, retain=True)
        published.wait_for_publish(TIMEOUT)
        assert published.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_secondTwistdOnOneStoreExits(tmp_path: Path, kind: str) -> None:
    """
    A daemonized C{twistd mqttd} holds its store; a second C{twistd mqttd} on another port with
    the same store path exits 1 with one line naming the file and the daemon's pid (the lock
    and the pid in it are the daemon's, after twistd's fork), and the daemon keeps serving.
    After C{kill -9} of the daemon the lock is gone with it, and a new broker starts on the
    store with the acknowledged message.
    """
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    store = tmp_path / FILES[kind]
    section = f"[store]\nplugin = {kind}\n[plugin:{kind}]\npath = {store}\n"
    port = freePort()
    config = first / "mqttd.ini"
    config.write_text(listener("main", f"tcp:{port}:interface=127.0.0.1") + section)
    command, env, pidfile, log = daemonCommand(first, config)
    assert subprocess.run(command, cwd=first, env=env, timeout=TIMEOUT).returncode == 0
    waitFor(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), "the pid file")
    pid = int(pidfile.read_text())
    try:
        waitFor(lambda: "Restored" in log.read_text(), "restore")
        publishKept(port)
        otherPort = freePort()
        otherConfig = second / "mqttd.ini"
        otherConfig.write_text(listener("main", f"tcp:{otherPort}:interface=127.0.0.1") + section)
        command, env = twistdCommand(second, "--config", str(otherConfig))
        result = subprocess.run(
            command, cwd=second, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 1, result.stdout + result.stderr
        output = result.stdout + result.stderr
        lines = [line for line in output.splitlines() if "in use" in line]
        assert lines == [
            f"twistd mqttd: {otherConfig}: [plugin:{kind}] path: {store}: in use by another"
            f" broker (pid {pid}), which holds {store}.lock; one store per broker"
        ], output
        assert "Traceback" not in output
        publishKept(port)
    finally:
        os.kill(pid, signal.SIGKILL)
    waitFor(lambda: not alive(pid), "the daemon killed")
    port = freePort()
    config.write_text(listener("main", f"tcp:{port}:interface=127.0.0.1") + section)
    command, env = twistdCommand(first, "--config", str(config))
    restarted = subprocess.Popen(
        command, cwd=first, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        received: list[bytes] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="reader")
        client.on_message = lambda c, u, m: received.append(bytes(m.payload))

        def connected() -> bool:
            try:
                client.connect("127.0.0.1", port)
            except ConnectionRefusedError:
                return False
            return True

        e2e.wait_until(connected, "the restarted broker listening")
        client.loop_start()
        client.subscribe("kept/t", 1)
        e2e.wait_until(lambda: received == [b"kept"], "the retained message")
        client.disconnect()
        client.loop_stop()
    finally:
        restarted.send_signal(signal.SIGTERM)
        output, _ = restarted.communicate(timeout=TIMEOUT)
    assert "Server Shut Down." in output
    assert "in use" not in output
