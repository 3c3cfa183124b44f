"""
mqttd's lean TCP server transport (mqttd.transports.tcp) behaves as Twisted's C{tcp.Server}:
every test runs the same protocol over both, on real sockets of 127.0.0.1 and the reactor the
e2e tests share, and expects the same: addresses, writes in order whatever the kernel takes,
back-pressure on a streaming producer, the peer's FIN (half-closeable protocols or not),
C{loseConnection} after the last byte, C{loseWriteConnection}, C{abortConnection} with a reset,
errors met on a later turn, pausing reads.  Where the lean one differs it is on purpose, and
tested as such: a write goes to the socket at once, and the transport keeps no dict.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import tcp as twistedTCP
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqttd.transports import tcp as lean
from tests import e2e

TRANSPORTS = ["lean", "twisted"]


class Recording(Protocol):
    """Records what its transport tells it; the test drives it from the reactor thread."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None
        self.readLost = False
        self.writeLost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Recording):
    """Told of the peer's FIN instead of losing the connection; answers it, then closes."""

    def readConnectionLost(self) -> None:
        self.readLost = True
        assert self.transport is not None
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.writeLost = True


@implementer(IPushProducer)
class Producer:
    """A streaming producer recording the transport's calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


@dataclass
class Server:
    """A listening port of one kind, and the protocols it built."""

    port: IListeningPort
    protocols: list[Recording] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        host: Any = self.port.getHost()
        return host.host, host.port

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        return e2e.in_reactor(f, *args)

    def accepted(self) -> Recording:
        e2e.wait_until(lambda: self.call(lambda: len(self.protocols)) > 0, "a connection")
        return self.protocols[0]

    def connect(self) -> tuple[socket.socket, Recording]:
        sock = socket.create_connection(self.address, timeout=e2e.TIMEOUT)
        return sock, self.accepted()


def _listen(kind: str, protocol: type[Recording], interface: str = e2e.HOST) -> Server:
    e2e.start_reactor()
    protocols: list[Recording] = []

    class Building(Factory):
        def buildProtocol(self, addr: Any) -> Recording:
            p = protocol()
            p.factory = self
            protocols.append(p)
            return p

    def listen() -> IListeningPort:
        if kind == "lean":
            return lean.listenTCP(e2e.reactor, 0, Building(), interface=interface)
        return e2e.reactor.listenTCP(0, Building(), interface=interface)

    return Server(e2e.in_reactor(listen), protocols)


@pytest.fixture(params=TRANSPORTS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    running = _listen(request.param, Recording)
    yield running
    _close(running)


@pytest.fixture(params=TRANSPORTS)
def halfCloseable(request: pytest.FixtureRequest) -> Iterator[Server]:
    running = _listen(request.param, HalfCloseable)
    yield running
    _close(running)


def _close(running: Server) -> None:
    def close() -> Any:
        for p in running.protocols:
            if p.lost is None and p.transport is not None:
                p.transport.abortConnection()  # type: ignore[attr-defined]
        return running.port.stopListening()

    running.call(close)


def _lostWith(running: Server, p: Recording) -> type[BaseException]:
    """The type of the reason C{p} lost its connection with, once it has."""
    # A Failure returned from the reactor thread would be raised here: its type is not.
    e2e.wait_until(lambda: running.call(lambda: p.lost is not None), "connectionLost")
    assert p.lost is not None
    return p.lost.type  # type: ignore[return-value]


def _readAll(sock: socket.socket) -> bytes:
    """What the peer sends until its FIN."""
    got = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return bytes(got)
        got += data


def test_interfaces(server: Server) -> None:
    """Both transports provide ITCPTransport and IPushProducer in full."""
    sock, p = server.connect()
    try:
        assert verifyObject(ITCPTransport, p.transport)
        assert verifyObject(IPushProducer, p.transport)
    finally:
        sock.close()


def test_addresses(server: Server) -> None:
    """C{getPeer} is the client's address and port, C{getHost} the listening one's."""
    sock, p = server.connect()
    try:
        assert p.transport is not None
        host, port = sock.getsockname()
        assert p.transport.getPeer() == IPv4Address("TCP", host, port)
        assert p.transport.getHost() == IPv4Address("TCP", *server.address)
    finally:
        sock.close()
    _lostWith(server, p)
    # And still once the connection is gone, as loggers ask then.
    assert server.call(p.transport.getPeer) == IPv4Address("TCP", host, port)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_ipv6Addresses(kind: str) -> None:
    """Over IPv6 the addresses are L{IPv6Address}es, as Twisted gives them."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        running = _listen(kind, Recording, "::1")
    except Exception as e:
        pytest.skip(f"no ::1 here: {e}")
    try:
        sock = socket.create_connection(("::1", running.address[1]), timeout=e2e.TIMEOUT)
        p = running.accepted()
        try:
            peer = sock.getsockname()
            assert p.transport is not None
            assert p.transport.getPeer() == IPv6Address("TCP", "::1", peer[1], peer[2], peer[3])
            assert p.transport.getHost() == IPv6Address("TCP", "::1", running.address[1], 0, 0)
        finally:
            sock.close()
    finally:
        _close(running)


def test_readsWhatThePeerSends(server: Server) -> None:
    """Bytes the peer sends reach C{dataReceived}, all and in order."""
    sock, p = server.connect()
    payload = bytes(range(256)) * 4096
    try:
        sock.sendall(payload)
        e2e.wait_until(
            lambda: server.call(lambda: len(p.received)) == len(payload), "all bytes read"
        )
        assert bytes(p.received) == payload
    finally:
        sock.close()


def test_backPressureOnAStreamingProducer(server: Server) -> None:
    """
    Writes the kernel cannot take wait in the transport: past its buffer size the streaming
    producer registered is paused, and resumed once they are written; the peer gets every
    byte, in order.
    """
    sock, p = server.connect()
    producer = Producer()
    chunks = [bytes([i]) * 65536 for i in range(4)]

    def flood() -> list[str]:
        assert p.transport is not None
        transport: Any = p.transport
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        transport.registerProducer(producer, True)
        for chunk in chunks:
            transport.write(chunk)
        return list(producer.calls)

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        # Twisted's asks again on every write past the buffer size, the lean one once.
        assert set(server.call(flood)) == {"pause"}
        got = bytearray()
        while len(got) < 4 * 65536:
            got += sock.recv(1 << 20)
        assert bytes(got) == b"".join(chunks)
        e2e.wait_until(lambda: server.call(lambda: producer.calls[-1]) == "resume", "resume")
        assert producer.calls.count("resume") == 1
    finally:
        sock.close()


def test_loseConnectionAfterTheLastByte(server: Server) -> None:
    """
    C{loseConnection} sends what waits, then FIN; the protocol's C{connectionLost} comes on a
    later turn with L{ConnectionDone}, not inside the call.
    """
    sock, p = server.connect()
    payload = b"x" * (4 << 20)

    def close() -> bool:
        assert p.transport is not None
        p.transport.write(payload)
        p.transport.loseConnection()
        return p.lost is None

    try:
        assert server.call(close)
        assert _readAll(sock) == payload
        assert _lostWith(server, p) is ConnectionDone
    finally:
        sock.close()


def test_peerFINEndsAProtocolThatIsNotHalfCloseable(server: Server) -> None:
    """The peer's FIN loses the connection, cleanly, for a protocol that cannot half-close."""
    sock, p = server.connect()
    try:
        sock.sendall(b"last")
        sock.shutdown(socket.SHUT_WR)
        assert _lostWith(server, p) is ConnectionDone
        assert bytes(p.received) == b"last"
        assert _readAll(sock) == b""
    finally:
        sock.close()


def test_peerFINHalfClosesAHalfCloseableProtocol(halfCloseable: Server) -> None:
    """
    A half-closeable protocol is told of the peer's FIN by C{readConnectionLost} and may still
    write: the peer reads its answer, then FIN.
    """
    sock, p = halfCloseable.connect()
    try:
        sock.sendall(b"question")
        sock.shutdown(socket.SHUT_WR)
        assert _readAll(sock) == b"bye"
        assert _lostWith(halfCloseable, p) is ConnectionDone
        assert p.readLost and bytes(p.received) == b"question"
    finally:
        sock.close()


def test_loseWriteConnection(halfCloseable: Server) -> None:
    """
    C{loseWriteConnection} sends FIN after what waits, tells a half-closeable protocol by
    C{writeConnectionLost}, and reading goes on.
    """
    sock, p = halfCloseable.connect()

    def halfClose() -> None:
        assert p.transport is not None
        p.transport.write(b"done")
        p.transport.loseWriteConnection()  # type: ignore[attr-defined]

    try:
        halfCloseable.call(halfClose)
        assert _readAll(sock) == b"done"
        e2e.wait_until(lambda: halfCloseable.call(lambda: p.writeLost), "writeConnectionLost")
        sock.sendall(b"still read")
        e2e.wait_until(
            lambda: halfCloseable.call(lambda: bytes(p.received)) == b"still read", "the read"
        )
    finally:
        sock.close()


def test_abortDropsWhatWaitsAndResets(server: Server) -> None:
    """
    C{abortConnection} drops what waits and resets the connection; the protocol hears of it on
    a later turn, with L{ConnectionAborted}.
    """
    sock, p = server.connect()

    def abort() -> bool:
        assert p.transport is not None
        p.transport.write(b"y" * (8 << 20))
        p.transport.abortConnection()  # type: ignore[attr-defined]
        return p.lost is None

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        assert server.call(abort)
        assert _lostWith(server, p) is ConnectionAborted
        got = 0
        with pytest.raises(ConnectionResetError):
            while True:
                data = sock.recv(1 << 20)
                assert data, "a FIN, not a reset"
                got += len(data)
        assert got < 8 << 20
    finally:
        sock.close()


def test_nothingLeavesAfterAbort(server: Server) -> None:
    """
    Once C{abortConnection} is called, writes, C{loseConnection} and C{resumeProducing} do
    nothing: the peer gets no byte written afterwards, only the reset.
    """
    sock, p = server.connect()

    def abort() -> None:
        transport: Any = p.transport
        transport.abortConnection()
        transport.write(b"after the abort")
        transport.writeSequence([b"and", b"this"])
        transport.resumeProducing()
        transport.loseConnection()

    try:
        server.call(abort)
        assert _lostWith(server, p) is ConnectionAborted
        with pytest.raises(ConnectionResetError):
            data = sock.recv(100)
            pytest.fail(f"read {data!r} where the reset was expected")
    finally:
        sock.close()


def test_sendErrorLosesTheConnectionLater(server: Server) -> None:
    """
    Writing to a connection the peer has reset raises nothing in C{write}: the transport
    loses the connection on a later turn, with L{ConnectionLost}.
    """
    sock, p = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()

    def write() -> None:
        assert p.transport is not None
        for _ in range(3):
            p.transport.write(b"after the reset")

    # Possibly read as a reset before the writes: either way nothing raises and it is lost.
    server.call(write)
    assert _lostWith(server, p) is ConnectionLost


def test_resetMetByAWriteIsALostConnection(server: Server) -> None:
    """
    A reset the reactor has not seen yet, met by a write in the same turn, still ends the
    connection with L{ConnectionLost}, not the clean L{ConnectionDone} that a later read of
    the socket (its error consumed by the failed send) would suggest.
    """
    sock, p = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def resetThenWrite() -> None:
        # Within one reactor turn: the reset reaches the broker's socket (loopback), and the
        # write meets it before the reactor polls.
        sock.close()
        assert p.transport is not None
        for _ in range(3):
            p.transport.write(b"after the reset")

    server.call(resetThenWrite)
    assert _lostWith(server, p) is ConnectionLost


def test_pauseProducingStopsReading(server: Server) -> None:
    """While the transport is paused nothing is read; resumed, what waited arrives."""
    sock, p = server.connect()
    try:
        server.call(lambda: p.transport.pauseProducing())  # type: ignore[union-attr]
        sock.sendall(b"held")
        # A write from the server's side makes the reactor turn at least once meanwhile.
        server.call(lambda: p.transport.write(b"ping"))  # type: ignore[union-attr]
        assert sock.recv(4) == b"ping"
        assert server.call(lambda: bytes(p.received)) == b""
        server.call(lambda: p.transport.resumeProducing())  # type: ignore[union-attr]
        e2e.wait_until(lambda: server.call(lambda: bytes(p.received)) == b"held", "the read")
    finally:
        sock.close()


def test_registerProducerTwiceAndNonBytes(server: Server) -> None:
    """A second producer without unregistering the first, or writing text, is an error."""
    sock, p = server.connect()

    def misuse() -> list[str]:
        transport: Any = p.transport
        errors = []
        transport.registerProducer(Producer(), True)
        try:
            transport.registerProducer(Producer(), True)
        except RuntimeError:
            errors.append("producer")
        try:
            transport.write("text")
        except TypeError:
            errors.append("write")
        try:
            transport.writeSequence([b"a", "b"])
        except TypeError:
            errors.append("writeSequence")
        transport.unregisterProducer()
        return errors

    try:
        assert server.call(misuse) == ["producer", "write", "writeSequence"]
    finally:
        sock.close()


def test_refusedByTheFactory() -> None:
    """A factory that builds no protocol has the connection closed at once."""
    e2e.start_reactor()

    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    port = e2e.in_reactor(lambda: lean.listenTCP(e2e.reactor, 0, Refusing(), interface=e2e.HOST))
    try:
        sock = socket.create_connection((e2e.HOST, port.getHost().port), timeout=e2e.TIMEOUT)
        try:
            assert _readAll(sock) == b""
        except ConnectionResetError:
            pass
        sock.close()
    finally:
        e2e.in_reactor(port.stopListening)


def test_leanWriteSendsAtOnce() -> None:
    """
    On the lean transport a write the kernel takes is sent inside C{write}, without the
    reactor watching the socket, and the peer can read it before the reactor turns; Twisted's
    waits for a later turn.
    """
    running = _listen("lean", Recording)
    sock, p = running.connect()

    def write() -> tuple[bool, bytes]:
        assert p.transport is not None
        p.transport.write(b"now")
        # Still inside the reactor's turn: read it from the other end of the socket.
        sock.setblocking(False)
        try:
            got = sock.recv(10)
        except BlockingIOError:
            got = b""
        return p.transport in e2e.reactor.getWriters(), got

    try:
        assert running.call(write) == (False, b"now")
    finally:
        sock.close()
        _close(running)


def test_leanTransportIsSmall() -> None:
    """
    The lean transport keeps no per-connection dict and no log strings: its state is in slots,
    the reactor's tables share its descriptor's int, an IPv4 peer's address is one int.
    """
    running = _listen("lean", Recording)
    sock, p = running.connect()
    try:
        transport: Any = p.transport
        assert isinstance(transport, lean.Connection)
        assert not hasattr(transport, "__dict__")
        assert isinstance(transport._peer, int)
        assert running.call(lambda: e2e.reactor._selectables[transport.fileno()] is transport)
        assert any(fd is transport.fileno() for fd in running.call(lambda: e2e.reactor._reads))
    finally:
        sock.close()
        _close(running)


def test_twistedsAcceptLoopForTheRareCases(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An accept error the lean loop does not expect (here EPERM, as netfilter gives) goes to
    Twisted's accept loop, which skips it and accepts the next connection into a lean
    transport.
    """
    running = _listen("lean", Recording)
    port: Any = running.port
    real = port.socket
    failures = [OSError(errno.EPERM, "refused by a firewall")]

    class Failing:
        def _accept(self) -> Any:
            if failures:
                raise failures.pop()
            return real._accept()

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    running.call(lambda: setattr(port, "socket", Failing()))
    try:
        sock, p = running.connect()
        try:
            assert type(p.transport) is lean.Connection
            assert failures == []
        finally:
            sock.close()
    finally:
        running.call(lambda: setattr(port, "socket", real))
        _close(running)


def test_twistedsServerUnchanged() -> None:
    """The comparison is with Twisted's own server transport, not a lean one by another path."""
    running = _listen("twisted", Recording)
    sock, p = running.connect()
    try:
        assert type(p.transport) is twistedTCP.Server
    finally:
        sock.close()
        _close(running)


@pytest.mark.parametrize("noDelay", [True, False])
def test_noDelayFromTheListeningSocket(noDelay: bool) -> None:
    """
    A lean port with C{noDelay} sets TCP_NODELAY on its listening socket, which its
    connections' sockets have from birth; without it they have it off.  The transport's
    C{setTcpNoDelay} and C{getTcpNoDelay} stay true to the socket either way.
    """
    e2e.start_reactor()
    protocols: list[Recording] = []

    class Building(Factory):
        def buildProtocol(self, addr: Any) -> Recording:
            protocols.append(Recording())
            return protocols[-1]

    port = e2e.in_reactor(
        lambda: lean.listenTCP(e2e.reactor, 0, Building(), interface=e2e.HOST, noDelay=noDelay)
    )
    running = Server(port, protocols)
    sock, p = running.connect()

    def options() -> list[bool]:
        transport: Any = p.transport
        handle = transport.getHandle()
        seen = [bool(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))]
        for enabled in (False, True, True, False):
            transport.setTcpNoDelay(enabled)
            seen.append(transport.getTcpNoDelay())
        return seen

    try:
        assert running.call(options) == [noDelay, False, True, True, False]
    finally:
        sock.close()
        _close(running)


def test_idleMQTTConnectionStateIsACachedInt() -> None:
    """
    An idle MQTT connection's transport (TCP_NODELAY from the listener, the protocol as its
    streaming producer) keeps its state in an int CPython caches (at most 256): no int object
    of its own per connection.
    """
    running = e2e.start_broker()
    client = e2e.Client(running.port, "idle")
    try:

        def state() -> tuple[int, bool]:
            transport: Any = running.broker.sessions["idle"].connection.transport  # type: ignore[union-attr]
            return transport._flags, transport.getTcpNoDelay()

        flags, noDelay = running.call(state)
        assert noDelay
        assert 0 < flags <= 256
    finally:
        client.close()
        running.stop()
