"""
Crash recovery: C{twistd mqttd} on a durable store in C{sync} mode is killed with SIGKILL in the
middle of a burst of QoS 1 and QoS 2 messages, restarted on the same file, and loses nothing it
acknowledged.

The clients are raw sockets speaking MQTT through mqttd's own codec, because the test needs what
paho will not do: leave deliveries unacknowledged on purpose, and see the DUP flag of every
PUBLISH it receives.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttd.codec import Decoder, encode
from mqttd.codec.packets import (
    Connack,
    Connect,
    Packet,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Will,
)
from tests.test_twistd import TIMEOUT, freePort, twistdCommand, waitForPort

# Messages the publisher may have unacknowledged at once during the burst.
WINDOW = 10


class Wire:
    """One MQTT 3.1.1 client connection, packet by packet."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._decoder = Decoder(server=False)
        self._packets: deque[Packet] = deque()

    def send(self, *packets: Packet) -> None:
        self.sock.sendall(b"".join(encode(p) for p in packets))

    def read(self, timeout: float = TIMEOUT) -> Packet:
        self.sock.settimeout(timeout)
        while not self._packets:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the broker closed the connection")
            self._packets.extend(self._decoder.feed(data))
        return self._packets.popleft()

    def connect(self, clientId: str, clean: bool, will: Will | None = None) -> Connack:
        self.send(Connect(4, clientId, clean, 0, will))
        connack = self.read()
        assert isinstance(connack, Connack) and connack.return_code == 0, connack
        return connack

    def drop(self) -> None:
        """The network fails: no DISCONNECT, a TCP reset."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        self.sock.close()


class Subscriber:
    """
    A persistent-session subscriber as an application sees it: QoS 2 messages are delivered to
    the application on their first PUBLISH and their identifiers remembered until PUBREL, as
    [MQTT-4.3.3-2] describes for the receiver, so a resend is never delivered twice.
    """

    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.awaitingRel: set[int] = set()
        self.dups: list[bytes] = []

    def handle(self, wire: Wire, packet: Packet, ack: bool) -> None:
        if isinstance(packet, Publish):
            if packet.dup:
                self.dups.append(packet.payload)
            if packet.qos == 2:
                assert packet.packet_id is not None
                if packet.packet_id not in self.awaitingRel:
                    self.delivered.append(packet.payload)
                    self.awaitingRel.add(packet.packet_id)
                if ack:
                    wire.send(Pubrec(packet.packet_id))
            else:
                self.delivered.append(packet.payload)
                if ack and packet.qos == 1:
                    assert packet.packet_id is not None
                    wire.send(Puback(packet.packet_id))
        elif isinstance(packet, Pubrel):
            self.awaitingRel.discard(packet.packet_id)
            wire.send(Pubcomp(packet.packet_id))


class Broker:
    """C{twistd mqttd} on one store file, started and SIGKILLed at will."""

    def __init__(self, tmp_path: Path, plugin: str) -> None:
        self.tmp_path = tmp_path
        self.port = freePort()
        self.config = tmp_path / "mqttd.ini"
        self.config.write_text(
            f"[store]\nplugin = {plugin}\n"
            f"[plugin:{plugin}]\npath = data/store\ndurability = sync\n"
            f"[listener:crash]\nendpoint = tcp:{self.port}:interface=127.0.0.1\n"
            "allow_anonymous = true\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = self.tmp_path / f"twistd-{self.runs}.log"
        command, env = twistdCommand(self.tmp_path, "--config", str(self.config))
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        waitForPort(self.process, self.port, log)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def log(self) -> str:
        return (self.tmp_path / f"twistd-{self.runs}.log").read_text()


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    running = Broker(tmp_path, request.param)
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def burst(
    publisher: Wire, broker: Broker, first: int, count: int, killAfter: int | None
) -> set[bytes]:
    """
    Publish C{count} numbered messages from C{first}, alternately QoS 1 and QoS 2, keeping
    L{WINDOW} unacknowledged, and SIGKILL the broker once C{killAfter} were accepted, with the
    rest of the window still in flight; with C{killAfter} L{None}, return once all were.

    @return: the payloads the broker accepted: PUBACK (QoS 1) or PUBREC (QoS 2) seen.
    """
    accepted: set[bytes] = set()
    outstanding: dict[int, bytes] = {}
    sent = 0
    while True:
        while sent < count and len(outstanding) < WINDOW:
            n = first + sent
            sent += 1
            qos = 1 + n % 2
            payload = b"msg-%d" % n
            packetId = n % 65000 + 1
            outstanding[packetId] = payload
            publisher.send(Publish(f"q{qos}/{n}", payload, qos, False, False, packetId))
        packet = publisher.read()
        if isinstance(packet, Puback | Pubrec):
            accepted.add(outstanding.pop(packet.packet_id))
            if isinstance(packet, Pubrec):
                publisher.send(Pubrel(packet.packet_id))
        if killAfter is None:
            if len(accepted) == count:
                return accepted
        elif len(accepted) >= killAfter:
            broker.kill()
            return accepted


@pytest.mark.parametrize("broker", ["sqlite", "file"], indirect=True)
@pytest.mark.parametrize("killAfter", [1, 37, 150])
def test_crashRecovery(broker: Broker, killAfter: int) -> None:
    """
    SIGKILL mid-burst loses nothing acknowledged.  Before the crash a persistent subscriber
    (QoS 1 and QoS 2 subscriptions) takes 20 messages and acknowledges only half, leaving QoS 1
    deliveries without PUBACK, QoS 2 deliveries without PUBREC and, after PUBREC, without PUBCOMP;
    then it drops, and a publisher's burst is queued for it until the broker is killed.  A
    clean-session client with a will is connected throughout.  After the restart on the same
    store file:
      - the subscriber resumes with Session Present = 1 [MQTT-3.2.2-2] and its subscriptions;
      - every message the publisher saw accepted (PUBACK, PUBREC) reaches it [MQTT-3.1.2-5];
      - unacknowledged deliveries are re-sent with DUP=1 [MQTT-4.4.0-1, MQTT-3.3.1-1], QoS 2 ones
        after PUBREC as PUBREL only, so no QoS 2 message reaches the application twice
        [MQTT-4.3.3-2];
      - the retained message survives [MQTT-3.3.1-5];
      - the will of the connection open at the crash is published [MQTT-3.1.2-8].
    """
    broker.start()
    subscriber = Subscriber()
    sub = Wire(broker.port)
    assert not sub.connect("crash-sub", clean=False).session_present
    sub.send(Subscribe(1, [("q1/#", 1), ("q2/#", 2), ("wills/#", 1)]))
    assert sub.read() == Suback(1, [1, 2, 1])

    publisher = Wire(broker.port)
    publisher.connect("crash-pub", clean=True)
    publisher.send(Publish("retained/state", b"kept", 1, True, False, 1))
    assert publisher.read() == Puback(1)
    willer = Wire(broker.port)
    willer.connect("crash-willer", clean=True, will=Will("wills/willer", b"gone", 1, False))

    # 20 messages delivered; the subscriber acknowledges every other one.
    published = {b"msg-%d" % n for n in range(20)}
    accepted = burst(publisher, broker, 0, 20, killAfter=None)
    assert accepted == published
    unacked: set[bytes] = set()
    while len(subscriber.delivered) < 20:
        packet = sub.read()
        ack = not (isinstance(packet, Publish) and len(subscriber.delivered) % 2)
        if isinstance(packet, Publish) and not ack:
            unacked.add(packet.payload)
        subscriber.handle(sub, packet, ack)
    sub.drop()

    accepted |= burst(publisher, broker, 20, 400, killAfter=killAfter)
    broker.start()

    sub = Wire(broker.port)
    assert sub.connect("crash-sub", clean=False).session_present, broker.log()
    expected = accepted | {b"gone"}
    while not expected <= set(subscriber.delivered):
        try:
            packet = sub.read()
        except TimeoutError:
            missing = sorted(expected - set(subscriber.delivered))
            pytest.fail(f"never delivered after the restart: {missing[:10]}\n{broker.log()}")
        subscriber.handle(sub, packet, ack=True)

    qos2 = [p for p in subscriber.delivered if p != b"gone" and int(p[4:]) % 2]
    assert len(qos2) == len(set(qos2)), "a QoS 2 message reached the application twice"
    assert unacked and unacked <= set(subscriber.dups)

    fresh = Wire(broker.port)
    fresh.connect("crash-fresh", clean=True)
    fresh.send(Subscribe(1, [("retained/#", 1)]))
    assert fresh.read() == Suback(1, [1])
    retained = fresh.read()
    assert isinstance(retained, Publish)
    assert (retained.topic, retained.payload, retained.retain) == ("retained/state", b"kept", True)
    broker.kill()


@pytest.mark.parametrize("broker", ["sqlite", "file"], indirect=True)
def test_sessionKeptWhenKilledRightAfterConnack(broker: Broker) -> None:
    """
    Ten clients ask for new persistent sessions at once and the broker is SIGKILLed as soon as
    the first CONNACK arrives: every client that got CONNACK has its session after the restart
    (each CONNACK waited for its session's commit), so its next CONNACK says Session Present
    [MQTT-3.2.2-2].  Without that wait the kill beats SQLite's commit in about every other run:
    test_durability's test_connackWaitsForANewSession is the deterministic proof.
    """
    broker.start()
    wires = {f"fresh-{n}": Wire(broker.port) for n in range(10)}
    for clientId, wire in wires.items():
        wire.send(Connect(4, clientId, False, 0))
    select.select([wire.sock for wire in wires.values()], [], [], TIMEOUT)
    broker.kill()
    told = []
    for clientId, wire in wires.items():
        # What reached the client before the kill; the rest of the connection is gone.
        try:
            connack = wire.read()
        except (EOFError, OSError):
            continue
        assert isinstance(connack, Connack) and not connack.session_present
        told.append(clientId)
    assert told
    broker.start()
    for clientId in told:
        wire = Wire(broker.port)
        assert wire.connect(clientId, clean=False).session_present, clientId
        wire.drop()
