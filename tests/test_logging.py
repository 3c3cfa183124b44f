"""
What the log tells an operator: connect and disconnect lines that say who (address, client id,
user or certificate identity, protocol level, session present, reason), failed logins naming the
user, TLS handshake failures, ACL denials, a flood summarised per address, a failed reload that
names its file; and C{[log] level} and C{format = json} with the real C{twistd}.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, formatEvent
from zope.interface import implementer

from mqttd.cli import main as cli
from mqttd.codec import encode
from mqttd.codec.packets import Connack, Connect, Disconnect, Publish, Subscribe
from mqttd.config import ConfigError, load_config
from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    Deny,
    IAuthenticator,
    IAuthorizer,
)
from mqttd.logsummary import WINDOW
from mqttd.protocol import MQTTServerProtocol
from mqttd.service import BrokerService, makeBrokerService
from tests import e2e
from tests.harness import World
from tests.listeners import PKI, Listen, make_pki, start_listener, tcpListener
from tests.test_tls import mutualListener, pahoTLS
from tests.test_twistd import TIMEOUT, freePort, twistdCommand, waitForPort


@implementer(ILogObserver)
class Events(list[dict[str, Any]]):
    """The log events a L{Logger} given this as its observer emitted, in order."""

    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self]


@implementer(IAuthenticator)
class Passwords:
    """An authenticator with one user, alice, whose password is "secret"."""

    def authenticate(self, credentials: Credentials) -> Allow | Deny | None:
        if credentials.username != "alice":
            return None
        if credentials.password == b"secret":
            return Allow("alice")
        return Deny(4, "wrong password")


@implementer(IAuthorizer)
class NoWritesToSecrets:
    """An authorizer denying everything under secret/."""

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool | None:
        return not topic.startswith("secret/")


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> tuple[World, Events]:
    """A broker whose listener checks alice's password, with its log lines captured."""
    world = World()
    world.broker.authenticators = (Passwords(),)
    events = Events()
    monkeypatch.setattr(MQTTServerProtocol, "log", Logger(observer=events))
    world.broker.repeats.log = Logger(observer=events)
    return world, events


def test_connectAndDisconnectLinesSayWho(logged: tuple[World, Events]) -> None:
    """
    The connect line names the client id, address, listener, user, MQTT version, clean flag,
    session present and keepalive; the disconnect line the client id, address, user and
    reason.
    """
    world, events = logged
    client = world.client()
    client.send(
        Connect(
            4, "kitchen", clean_session=False, keepalive=30, username="alice", password=b"secret"
        )
    )
    assert client.read() == [Connack(False, 0)]
    client.send(Disconnect())
    client.finish()
    port = client.transport.getPeer().port
    assert events.lines() == [
        f"client kitchen connected from 127.0.0.1:{port} on listener test as user 'alice'"
        " (MQTT 3.1.1, clean False, session present False, keepalive 30)",
        f"client kitchen disconnected from 127.0.0.1:{port} (user 'alice'): client sent DISCONNECT",
    ]
    assert events[0]["username"] == "alice"
    client = world.client()
    client.send(Connect(4, "kitchen", clean_session=False, username="alice", password=b"secret"))
    assert client.read() == [Connack(True, 0)]
    assert "session present True" in events.lines()[-1]


def test_failedLoginNamesTheUser(logged: tuple[World, Events]) -> None:
    """
    A refused login is logged with the user name it tried, not only the (often empty) client
    id, and why: the operator can tell a typo from an attack.
    """
    world, events = logged
    client = world.client()
    client.send(Connect(4, "", username="alice", password=b"guess"))
    assert client.read() == [Connack(False, 5)]
    port = client.transport.getPeer().port
    assert events.lines() == [
        f"connection from 127.0.0.1:{port} on listener test refused: user 'alice'"
        " (client id '') not authenticated: wrong password"
    ]


def test_badConnectFloodSummarised(logged: tuple[World, Events]) -> None:
    """
    A thousand refused connections from one address write one line, then one summary line
    with the count, instead of a thousand lines (31 MB in five minutes of fuzzing before).
    """
    world, events = logged
    for _ in range(1000):
        client = world.client()
        client.send(Connect(4, "x", username="alice", password=b"guess"))
        client.finish()
    assert len(events) == 1
    world.clock.advance(WINDOW)
    assert events.lines()[-1] == ("127.0.0.1: connections refused, and 999 more in the last minute")


def test_aclDenialsLogged(logged: tuple[World, Events]) -> None:
    """
    An ACL denial is logged with the client id, user, address, action and topic: a denied
    SUBSCRIBE and a denied PUBLISH each get their line, repeats summarised per client.
    """
    world, events = logged
    world.broker.authorizers = (NoWritesToSecrets(),)
    client = world.client()
    client.send(Connect(4, "c", username="alice", password=b"secret"))
    client.read()
    client.send(Subscribe(1, [("secret/#", 0)]))
    client.send(Publish("secret/x", b"", 0))
    client.send(Publish("secret/y", b"", 0))
    denials = [line for line in events.lines() if line.startswith("ACL denied")]
    assert denials == [
        "ACL denied c (user 'alice', 127.0.0.1) subscribe to 'secret/#'",
    ]
    world.clock.advance(WINDOW)
    assert events.lines()[-1] == "c: ACL denials, and 2 more in the last minute"


def test_tlsHandshakeFailureLogged(twisted_reactor: None, tmp_path: Path) -> None:
    """A client speaking plain MQTT to a TLS listener is logged as a failed TLS handshake."""
    pki = make_pki(tmp_path)
    started = start_listener(
        tcpListener(certificate=str(pki.server.certificate), private_key=str(pki.server.key)),
        sys_interval=0,
    )
    events = Events()
    started.broker.call(setattr, started.broker.broker.repeats, "log", Logger(observer=events))
    try:
        with socket.create_connection(("127.0.0.1", started.port), timeout=e2e.TIMEOUT) as s:
            s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00" * 20)
            s.settimeout(e2e.TIMEOUT)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        e2e.wait_until(lambda: bool(started.broker.call(list, events)), "the log line")
        (line,) = started.broker.call(events.lines)
        assert line.startswith("TLS handshake from 127.0.0.1:")
        assert " on listener t failed: " in line
        assert "[(" not in line
    finally:
        started.broker.stop()


def test_brokenPasswordFileReloadNamesFile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    SIGHUP's reload with a broken password file logs one error naming the file and why, and no
    "reloaded" line for that plugin (it used to log the error without the file, then
    "reloaded"); the users it had still log in.
    """
    passwd = tmp_path / "passwd"
    cli(["passwd", "-c", "-b", str(passwd), "alice", "one"])
    config = tmp_path / "mqttd.ini"
    config.write_text(
        "[auth]\nchain = passwordfile\n[plugin:passwordfile]\nfile = passwd\n"
        "[listener:main]\nendpoint = tcp:0\n"
    )
    service = makeBrokerService(load_config(str(config)), MemoryReactorClock())
    events = Events()
    monkeypatch.setattr(BrokerService, "log", Logger(observer=events))
    passwd.write_text("alice:plaintext\n")
    service.reloadPlugins()
    (line,) = events.lines()
    assert line.startswith(
        f"plugin passwordfile not reloaded, keeping its previous state: {passwd}: "
    )
    assert events[0]["log_level"].name == "error"
    (authenticator,) = service.broker.authenticators
    assert authenticator.authenticate(
        Credentials("c", "alice", b"one", None, "127.0.0.1", "main")
    ) == Allow("alice")


def test_logLevelAndJSONFormat(tmp_path: Path) -> None:
    """
    C{[log] level = warn} and C{format = json} under the real C{twistd -n}: every line written
    is one JSON object, nothing below warn is written (no start-up or connect lines), and a
    refused login is there with its fields (address, reason naming the user).
    """
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:main]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
        "[log]\nlevel = warn\nformat = json\n"
    )
    command, env = twistdCommand(tmp_path, "--config", str(config))
    log = tmp_path / "twistd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        waitForPort(process, port, log)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(encode(Connect(4, "x", username="mallory", password=b"p")))
            s.settimeout(TIMEOUT)
            assert s.recv(4) == b"\x20\x02\x00\x05"
        e2e.wait_until(lambda: "mallory" in log.read_text(), "the refusal in the log")
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records, "nothing logged"
    assert {r["level"] for r in records} <= {"warn", "error", "critical"}
    (refusal,) = [r for r in records if "mallory" in r["message"]]
    assert refusal["level"] == "warn"
    assert refusal["reason"] == (
        "user 'mallory' (client id 'x') not authenticated: anonymous clients are refused"
    )
    assert refusal["address"].startswith("127.0.0.1:")
    assert refusal["listener"] == "main"


@pytest.mark.parametrize(
    "body, key",
    [("level = loud\n", "level"), ("format = xml\n", "format"), ("colour = red\n", "colour")],
)
def test_logSectionChecked(tmp_path: Path, body: str, key: str) -> None:
    """A bad C{[log]} key or value stops start-up naming it."""
    config = tmp_path / "mqttd.ini"
    config.write_text("[listener:main]\nendpoint = tcp:0\n[log]\n" + body)
    with pytest.raises(ConfigError) as e:
        load_config(str(config))
    assert (e.value.section, e.value.key) == ("log", key)


def test_certificateIdentityInConnectLine(
    pki: PKI, listen: Listen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    On a listener with C{identity = cn}, the connect line says the client connected as its
    verified certificate's identity (not the user name it sent), over real TLS.
    """
    events = Events()
    monkeypatch.setattr(MQTTServerProtocol, "log", Logger(observer=events))
    started = listen(mutualListener(pki))

    def setup(client: Any) -> None:
        pahoTLS(pki, pki.client)(client)
        client.username_pw_set("mallory", "guess")

    c = e2e.Client(started.port, "sensor-1", setup=setup)
    c.close()
    e2e.wait_until(lambda: len(events) >= 2, "the connect and disconnect lines")
    connected, disconnected = events.lines()[:2]
    assert connected.startswith("client sensor-1 connected from 127.0.0.1:")
    assert " as certificate identity 'alice' (MQTT 3.1.1," in connected
    assert "(certificate identity 'alice'): client sent DISCONNECT" in disconnected


@pytest.mark.parametrize(("level", "lines"), [("info", 2), ("warn", 0)])
def test_connectionLinesOnlyBuiltWhenTheLevelKeepsThem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str, lines: int
) -> None:
    """
    At C{[log] level = warn} (the one bench/run and mosquitto's quiet configurations use) the
    connect and disconnect lines, which the level would drop, are not even emitted, so a
    connection pays nothing for them; at C{info} both are.  The client is served alike.
    """
    path = tmp_path / "mqttd.ini"
    path.write_text(
        f"[log]\nlevel = {level}\n\n[listener:t]\nendpoint = tcp:0\nallow_anonymous = true\n"
    )
    service = makeBrokerService(load_config(str(path)), MemoryReactorClock())
    broker = service.broker
    assert broker.logConnections == (level == "info")
    events = Events()
    monkeypatch.setattr(MQTTServerProtocol, "log", Logger(observer=events))
    world = World()
    world.broker = broker
    world.factory.broker = broker
    client = world.connect("quiet")
    client.send(Disconnect())
    client.finish()
    assert len(events) == lines
