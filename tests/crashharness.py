"""
A crash harness: C{twistd mqttd} on a durable store is SIGKILLed at a random moment of every
cycle while numbered QoS 1 and QoS 2 streams flow through it, restarted on the same file, and the
clients carry on as real ones would (persistent sessions; unacknowledged PUBLISHes re-sent with
DUP, PUBRELs re-sent).  At the end everything still in flight is drained and each stream is
checked: acknowledged messages never delivered (loss), QoS 2 messages delivered twice, and
messages first delivered out of their stream's order.

The clients speak MQTT through mqttd's own codec over raw sockets (at 3.1.1 and 5.0 in turn) so
that the receiver can be exactly the one [MQTT-4.3.3-2] describes: a QoS 2 message reaches the
application on its first PUBLISH, and a PUBLISH under an identifier awaiting PUBREL is a resend.

Used by C{tests/test_crash_harness.py} (a few cycles) and C{bench/crash.py} (the soak, with the
cycle count a flag).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

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
)
from mqttd.codec.properties import Properties

# The outbound window the broker is configured with, and the publishers' own.
MAX_INFLIGHT = 20
WINDOW = 20
SUBSCRIBER = "crash-subscriber"
STREAMS = {"q1": 1, "q2": 2}


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PortTaken(Exception):
    """The broker could not listen: another process has its port."""


class BrokerProcess:
    """C{twistd mqttd} on one store file, started and SIGKILLed at will."""

    def __init__(
        self,
        directory: Path,
        command: Callable[[Path, Path], tuple[list[str], dict[str, str]]],
        store: str,
        durability: str,
        flushMs: int = 50,
    ) -> None:
        self.directory = directory
        self.config = directory / "mqttd.ini"
        self._settings = (
            f"[broker]\nmax_inflight = {MAX_INFLIGHT}\nmax_queued_messages = 1000000\n"
            f"[store]\nplugin = {store}\n"
            f"[plugin:{store}]\npath = data/store\ndurability = {durability}\n"
            f"flush_ms = {flushMs}\n"
        )
        self._listenOn(freePort())
        self._command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        # The crash cycle running (runCycles sets it), which names its logs.
        self.cycle = 0

    @property
    def logPath(self) -> Path:
        return self.directory / f"twistd-{self.cycle:04d}-{self.runs}.log"

    def snapshot(self, cycle: int) -> None:
        """
        Copy the store as the last kill left it (what the next start loads) to
        C{store-CYCLE/}, so that a cycle that loses or duplicates a message can be examined.
        """
        shutil.copytree(self.directory / "data", self.directory / f"store-{cycle:04d}")

    def _listenOn(self, port: int) -> None:
        self.port = port
        self.config.write_text(
            self._settings + f"[listener:crash]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            "allow_anonymous = true\n"
        )

    def start(self, timeout: float = 60.0) -> None:
        for _ in range(5):
            try:
                self._start(timeout)
                return
            except PortTaken:
                # Another process took the port while the broker was down: move to another.
                self._listenOn(freePort())
        self._start(timeout)

    def _start(self, timeout: float) -> None:
        self.runs += 1
        command, env = self._command(self.directory, self.config)
        with self.logPath.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.logPath.read_text()
                if "Address already in use" in log:
                    raise PortTaken(log)
                raise RuntimeError(f"twistd exited:\n{log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            # Up only once this process says it listens there: another process may have taken
            # the port while the broker was down, and the clients would then talk to it.
            if f"starting on {self.port}\n" in self.logPath.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"twistd did not listen:\n{self.logPath.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Wire:
    """One client connection, packet by packet, at level 4 or 5."""

    def __init__(self, port: int, level: int) -> None:
        self.level = level
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._decoder = Decoder(server=False, protocol_level=5 if level == 5 else None)
        self._packets: deque[Packet] = deque()

    def send(self, *packets: Packet) -> None:
        self.sock.sendall(b"".join(encode(p, self.level) for p in packets))

    def read(self, timeout: float) -> Packet | None:
        """The next packet, or L{None} after C{timeout} seconds without one."""
        if not self._packets:
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise EOFError("the broker closed the connection")
            self._packets.extend(self._decoder.feed(data))
            if not self._packets:
                return None
        return self._packets.popleft()

    def connect(self, clientId: str) -> bool:
        properties = Properties(session_expiry_interval=0xFFFFFFFF) if self.level == 5 else None
        connect = Connect(self.level, clientId, False, 0)
        if properties is not None:
            connect = Connect(self.level, clientId, False, 0, properties=properties)
        self.send(connect)
        connack = self.read(60)
        assert isinstance(connack, Connack) and connack.return_code == 0, connack
        return connack.session_present

    def close(self) -> None:
        self.sock.close()


class Trace:
    """
    What the QoS 2 clients sent and received, one line per packet, to C{trace-CYCLE.log}: the
    client side of a duplicate or a loss, next to the broker's log and store of that cycle.
    """

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def cycle(self, cycle: int) -> None:
        self.close()
        if self._directory is not None:
            self._file = (self._directory / f"trace-{cycle:04d}.log").open("w")

    def __call__(self, who: str, direction: str, packet: Packet) -> None:
        if self._file is None:
            return
        if isinstance(packet, Publish):
            what = f"PUBLISH id {packet.packet_id} {packet.payload.decode()} dup {packet.dup:d}"
        else:
            what = f"{type(packet).__name__.upper()} id {getattr(packet, 'packet_id', '')}"
        with self._lock:
            self._file.write(f"{time.monotonic():.6f} {who} {direction} {what}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _untraced(who: str, direction: str, packet: Packet) -> None:
    pass


@dataclass
class Publisher:
    """
    One stream: numbered messages at one QoS on topic C{s/NAME}, from a persistent session that
    keeps its unacknowledged messages over reconnections, as a real client does.
    """

    name: str
    qos: int
    next: int = 0
    # Packet identifier to [sequence number, stage]: "pub" awaits PUBACK/PUBREC, "rel" PUBCOMP.
    outstanding: dict[int, list[object]] = field(default_factory=dict)
    # Sequence number to when its PUBACK or PUBREC came (monotonic clock).
    acknowledged: dict[int, float] = field(default_factory=dict)
    _lastId: int = 0
    trace: Callable[[str, str, Packet], None] = _untraced

    def _packetId(self) -> int:
        packetId = self._lastId
        while True:
            packetId = packetId % 65535 + 1
            if packetId not in self.outstanding:
                self._lastId = packetId
                return packetId

    def publish(self, packetId: int, seq: int, dup: bool) -> Publish:
        return Publish(
            f"s/{self.name}", b"%s:%d" % (self.name.encode(), seq), self.qos, False, dup, packetId
        )

    def run(self, wire: Wire, stop: threading.Event, limit: int | None = None) -> None:
        """Re-send what is outstanding, then publish until C{stop} or the connection ends."""
        trace = self.trace if self.qos == 2 else _untraced

        def send(packet: Packet) -> None:
            trace(self.name, "out", packet)
            wire.send(packet)

        for packetId, (seq, stage) in list(self.outstanding.items()):
            if stage == "pub":
                send(self.publish(packetId, seq, True))  # type: ignore[arg-type]
            else:
                send(Pubrel(packetId))
        while not stop.is_set():
            while (
                len(self.outstanding) < WINDOW
                and (limit is None or self.next < limit)
                and not stop.is_set()
            ):
                packetId = self._packetId()
                # Numbered before it is sent: a send that fails (the broker killed) leaves the
                # message outstanding, to be re-sent under its packet identifier, and the next
                # message must not take its number again under a new one.
                seq, self.next = self.next, self.next + 1
                self.outstanding[packetId] = [seq, "pub"]
                send(self.publish(packetId, seq, False))
            packet = wire.read(0.2)
            if packet is None:
                if limit is not None and not self.outstanding:
                    return
                continue
            trace(self.name, "in", packet)
            entry = self.outstanding.get(getattr(packet, "packet_id", -1))
            if isinstance(packet, Puback) and entry is not None:
                self.acknowledged.setdefault(entry[0], time.monotonic())  # type: ignore[arg-type]
                del self.outstanding[packet.packet_id]
            elif isinstance(packet, Pubrec) and entry is not None:
                self.acknowledged.setdefault(entry[0], time.monotonic())  # type: ignore[arg-type]
                entry[1] = "rel"
                send(Pubrel(packet.packet_id))
            elif isinstance(packet, Pubcomp) and entry is not None:
                del self.outstanding[packet.packet_id]


@dataclass
class Subscriber:
    """
    The persistent-session subscriber: every message on C{s/#}, granted QoS 2, counted per
    stream in the order first delivered.
    """

    delivered: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STREAMS})
    awaitingRel: set[int] = field(default_factory=set)
    subscribed: bool = False
    lastDelivery: float = 0.0
    # The cycle running, and where each delivery came from: (cycle, packet id, DUP), per message.
    cycle: int = 0
    origins: dict[str, dict[int, list[tuple[int, int | None, bool]]]] = field(
        default_factory=lambda: {s: {} for s in STREAMS}
    )
    trace: Callable[[str, str, Packet], None] = _untraced

    def deliver(self, packet: Publish) -> None:
        stream, seq = packet.payload.decode().split(":")
        self.delivered[stream].append(int(seq))
        self.origins[stream].setdefault(int(seq), []).append(
            (self.cycle, packet.packet_id, packet.dup)
        )
        self.lastDelivery = time.monotonic()

    def run(self, wire: Wire, stop: threading.Event, delay: float) -> None:
        def send(packet: Packet) -> None:
            self.trace("sub", "out", packet)
            wire.send(packet)

        while not stop.is_set():
            packet = wire.read(0.2)
            if packet is None:
                continue
            if isinstance(packet, Publish):
                if delay:
                    time.sleep(delay)
                if packet.qos == 2:
                    assert packet.packet_id is not None
                    self.trace("sub", "in", packet)
                    if packet.packet_id not in self.awaitingRel:
                        self.awaitingRel.add(packet.packet_id)
                        self.deliver(packet)
                    send(Pubrec(packet.packet_id))
                else:
                    self.deliver(packet)
                    if packet.qos == 1:
                        assert packet.packet_id is not None
                        wire.send(Puback(packet.packet_id))
            elif isinstance(packet, Pubrel):
                self.trace("sub", "in", packet)
                self.awaitingRel.discard(packet.packet_id)
                send(Pubcomp(packet.packet_id))


@dataclass
class StreamResult:
    acknowledged: int
    lost: list[int]
    duplicates: int
    outOfOrder: int
    # For each lost message, how long before the kill that ended its cycle it was acknowledged.
    lostAges: list[float]
    # For each message delivered more than once: its deliveries' (cycle, packet id, DUP).
    duplicated: dict[int, list[tuple[int, int | None, bool]]] = field(default_factory=dict)
    # For each lost message, the cycle in which it was acknowledged (cycles: the drain).
    lostCycles: list[int] = field(default_factory=list)


@dataclass
class Result:
    cycles: int
    streams: dict[str, StreamResult]

    def implicated(self) -> set[int]:
        """
        The cycles that acknowledged a lost message or delivered a QoS 2 message again (QoS 1
        may deliver twice).
        """
        cycles: set[int] = set()
        for name, stream in self.streams.items():
            cycles.update(stream.lostCycles)
            if STREAMS[name] == 2:
                for origins in stream.duplicated.values():
                    cycles.update(cycle for cycle, _, _ in origins)
        return cycles

    def summary(self) -> str:
        return "; ".join(
            f"{name} (QoS {STREAMS[name]}): {s.acknowledged} acknowledged, {len(s.lost)} lost"
            f" (oldest {max(s.lostAges, default=0) * 1000:.0f} ms before its kill),"
            f" {s.duplicates} duplicates, {s.outOfOrder} out of order"
            for name, s in self.streams.items()
        )


def _guarded(target: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except (EOFError, OSError):
            # The broker was killed under the client: what a crash looks like from outside.
            pass
        except BaseException as e:
            errors.append(e)

    return run


def runCycles(
    broker: BrokerProcess,
    cycles: int,
    *,
    seed: int = 0,
    killAfter: tuple[float, float] = (0.3, 1.2),
    drainTimeout: float = 60.0,
    progress: Callable[[int, Result | None], None] | None = None,
    keep: bool = False,
) -> Result:
    """
    Run C{cycles} crash cycles on C{broker}, then drain, and count per stream.

    Each cycle: start the broker, connect both publishers and (unless this cycle's subscriber
    is offline) the subscriber, all at 3.1.1 on even cycles and 5.0 on odd ones, let them run
    for a random time within C{killAfter} seconds, and SIGKILL the broker.  The subscriber is
    offline, slow (1 ms per message) or fast, in turn.

    With C{keep}, each cycle leaves in the broker's directory, beside its twistd log, the QoS 2
    clients' packets (L{Trace}) and a copy of the store its kill left (L{BrokerProcess.snapshot}).
    """
    rng = random.Random(seed)
    trace = Trace(broker.directory if keep else None)
    publishers = {name: Publisher(name, qos, trace=trace) for name, qos in STREAMS.items()}
    subscriber = Subscriber(trace=trace)
    kills: list[float] = []
    errors: list[BaseException] = []
    for cycle in range(cycles):
        subscriber.cycle = broker.cycle = cycle
        trace.cycle(cycle)
        level = 5 if cycle % 2 else 4
        mode = ("offline", "slow", "fast")[cycle % 3]
        broker.start()
        if not subscriber.subscribed:
            # Before anything is published, so that every message has the subscriber.
            wire = Wire(broker.port, level)
            wire.connect(SUBSCRIBER)
            wire.send(Subscribe(1, [("s/#", 2)]))
            assert wire.read(10) == Suback(1, [2])
            subscriber.subscribed = True
            wire.close()
        stop = threading.Event()
        wires = []
        threads = []
        if mode != "offline":
            wire = Wire(broker.port, level)
            wire.connect(SUBSCRIBER)
            wires.append(wire)
            delay = 0.001 if mode == "slow" else 0.0
            threads.append(
                threading.Thread(
                    target=_guarded(partial(subscriber.run, wire, stop, delay), errors)
                )
            )
        for publisher in publishers.values():
            wire = Wire(broker.port, level)
            wire.connect(f"crash-{publisher.name}")
            wires.append(wire)
            threads.append(
                threading.Thread(target=_guarded(partial(publisher.run, wire, stop), errors))
            )
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(*killAfter))
        broker.kill()
        kills.append(time.monotonic())
        stop.set()
        for thread in threads:
            thread.join()
        for wire in wires:
            wire.close()
        if keep:
            broker.snapshot(cycle)
        if errors:
            raise errors[0]
        if progress is not None:
            progress(cycle + 1, None)

    # Drain: finish every publisher's outstanding exchanges and let the subscriber take all.
    subscriber.cycle = broker.cycle = cycles
    trace.cycle(cycles)
    broker.start()
    stop = threading.Event()
    wires = []
    threads = []
    wire = Wire(broker.port, 4)
    wire.connect(SUBSCRIBER)
    wires.append(wire)
    threads.append(
        threading.Thread(target=_guarded(partial(subscriber.run, wire, stop, 0.0), errors))
    )
    for publisher in publishers.values():
        wire = Wire(broker.port, 4)
        wire.connect(f"crash-{publisher.name}")
        wires.append(wire)
        threads.append(
            threading.Thread(
                target=_guarded(partial(publisher.run, wire, stop, publisher.next), errors)
            )
        )
    for thread in threads:
        thread.start()
    subscriber.lastDelivery = time.monotonic()
    deadline = time.monotonic() + drainTimeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        settled = all(not p.outstanding for p in publishers.values())
        if settled and all(
            set(p.acknowledged) <= set(subscriber.delivered[p.name]) for p in publishers.values()
        ):
            break
        if settled and time.monotonic() - subscriber.lastDelivery > 3.0:
            break
    stop.set()
    for thread in threads:
        thread.join()
    for wire in wires:
        wire.close()
    broker.kill()
    trace.close()
    if errors:
        raise errors[0]

    streams = {}
    for name, publisher in publishers.items():
        delivered = subscriber.delivered[name]
        seen = set(delivered)
        lost = sorted(seq for seq in publisher.acknowledged if seq not in seen)
        ages = []
        lostCycles = []
        for seq in lost:
            acked = publisher.acknowledged[seq]
            cycle = next((c for c, k in enumerate(kills) if k >= acked), cycles)
            lostCycles.append(cycle)
            ages.append((kills[cycle] if cycle < cycles else acked) - acked)
        outOfOrder = 0
        highest = -1
        firsts: set[int] = set()
        for seq in delivered:
            if seq in firsts:
                continue
            firsts.add(seq)
            if seq < highest:
                outOfOrder += 1
            highest = max(highest, seq)
        streams[name] = StreamResult(
            acknowledged=len(publisher.acknowledged),
            lost=lost,
            duplicates=len(delivered) - len(seen),
            outOfOrder=outOfOrder,
            lostAges=ages,
            lostCycles=lostCycles,
            duplicated={
                seq: origins
                for seq, origins in subscriber.origins[name].items()
                if len(origins) > 1
            },
        )
    return Result(cycles, streams)
