"""
twistd mqttd's epoll dispatch without a log context per event (mqttd.dispatch) does what
Twisted's does: a ready socket is read, a writable one written, a handler's exception closes that
socket alone, a socket removed earlier in the same batch is skipped; other reactors are left alone.
The end of a turn runs once the ready sockets are handled, and before the reactor polls for what
was asked outside the dispatch.  Real sockets on a private EPollReactor, stepped one iteration at
a time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure

from mqttd.dispatch import installLeanDispatch, turnEnd
from mqttd.transports.tcp import Connection


class _Socket:
    """A selectable on one end of a socket pair, recording what the reactor asked of it."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []
        self.writes = 0
        self.lost: list[Failure] = []
        self.others: list[_Socket] = []
        self.reactor: EPollReactor | None = None
        self.prefixes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        if self.fail:
            raise RuntimeError("handler failed")
        self.read.append(self.sock.recv(100))
        # A handler that stops another selectable ready in the same batch.
        for other in self.others:
            assert self.reactor is not None
            self.reactor.removeReader(other)

    def doWrite(self) -> None:
        self.writes += 1

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)

    def logPrefix(self) -> str:
        self.prefixes += 1
        return "test"


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    r = EPollReactor()
    assert installLeanDispatch(r)
    yield r
    r._poller.close()


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_readsAndWritesReadySockets(reactor: EPollReactor) -> None:
    """
    Data waiting on a socket is read by its selectable; a writable one is told so; neither
    event asks the selectable for a log prefix, as Twisted's own dispatch does for each.
    """
    a, b = _pair()
    reader = _Socket(a)
    reactor.addReader(reader)
    b.sendall(b"hello")
    reactor.doIteration(1)
    assert reader.read == [b"hello"]
    reactor.removeReader(reader)
    reactor.addWriter(reader)
    reactor.doIteration(1)
    assert reader.writes == 1
    assert reader.prefixes == 0
    reactor.removeWriter(reader)
    a.close()
    b.close()


def test_failingHandlerClosesItsSocketOnly(reactor: EPollReactor) -> None:
    """
    A handler that raises loses its connection, with the error as the reason, as under
    Twisted's dispatch; another socket ready in the same iteration is still read.
    """
    a, b = _pair()
    c, d = _pair()
    failing, working = _Socket(a, fail=True), _Socket(c)
    reactor.addReader(failing)
    reactor.addReader(working)
    b.sendall(b"x")
    d.sendall(b"y")
    reactor.doIteration(1)
    assert [f.type for f in failing.lost] == [RuntimeError]
    assert working.read == [b"y"] and working.lost == []
    for s in (a, b, c, d):
        s.close()


def test_socketRemovedEarlierInTheBatchIsSkipped(reactor: EPollReactor) -> None:
    """
    Of two sockets ready together, the one the other's handler removed is not dispatched (its
    descriptor may already belong to something else).
    """
    a, b = _pair()
    c, d = _pair()
    first, second = _Socket(a), _Socket(c)
    first.others, second.others = [second], [first]
    first.reactor = second.reactor = reactor
    reactor.addReader(first)
    reactor.addReader(second)
    b.sendall(b"1")
    d.sendall(b"2")
    reactor.doIteration(1)
    assert len(first.read) + len(second.read) == 1
    for s in (a, b, c, d):
        s.close()


def test_otherReactorsLeftAlone() -> None:
    """Only Twisted's epoll reactor itself is changed: a fake clock or a subclass is not."""

    class Subclass(EPollReactor):
        pass

    clock = Clock()
    assert not installLeanDispatch(clock)
    sub = Subclass()
    assert not installLeanDispatch(sub)
    assert "doIteration" not in vars(sub)
    sub._poller.close()


class _Poller:
    """The reactor's epoll object, recording the timeout of every poll."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.timeouts: list[float] = []

    def poll(self, timeout: float, maxevents: int) -> Any:
        self.timeouts.append(timeout)
        return self._poller.poll(timeout, maxevents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def test_turnEndRunsAfterTheReadySockets(reactor: EPollReactor) -> None:
    """
    What handlers ask for the end of the turn runs in the same iteration, once every ready
    socket was handled; what the turn's end itself adds runs then too; one that raises is
    logged and the next still runs.
    """
    found = turnEnd(reactor)
    assert found is not None
    ends = found
    order: list[str] = []
    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)

    def failing() -> None:
        order.append("failing")
        raise RuntimeError("turn end failed")

    def adding() -> None:
        order.append("adding")
        ends.append(lambda: order.append("added by the end"))

    class Reading(_Socket):
        def doRead(self) -> None:
            super().doRead()
            order.append(f"read {self.read[-1].decode()}")
            if len(order) == 1:
                ends.extend([failing, adding])

    a, b = _pair()
    c, d = _pair()
    reactor.addReader(Reading(a))
    reactor.addReader(Reading(c))
    b.sendall(b"1")
    d.sendall(b"2")
    globalLogPublisher.addObserver(observer)
    try:
        reactor.doIteration(1)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert sorted(order[:2]) == ["read 1", "read 2"]
    assert order[2:] == ["failing", "adding", "added by the end"]
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [RuntimeError]
    assert ends == []
    for s in (a, b, c, d):
        s.close()


def test_turnEndAskedOutsideDispatchRunsBeforeThePoll(reactor: EPollReactor) -> None:
    """
    Asked between two polls (by a timed call or a thread's call, which the main loop runs
    there), the turn's end runs before the reactor waits; and if it schedules a call, the poll
    does not wait for sockets, as the main loop's timeout was computed without that call.
    """
    ends = turnEnd(reactor)
    assert ends is not None
    poller = _Poller(reactor._poller)
    reactor._poller = poller
    ran: list[str] = []
    ends.append(lambda: ran.append("end"))
    reactor.doIteration(0)
    assert ran == ["end"] and poller.timeouts == [0]
    ends.append(lambda: reactor.callLater(0, ran.append, "timed"))
    reactor.doIteration(None)
    assert poller.timeouts[-1] == 0
    reactor.runUntilCurrent()
    assert ran == ["end", "timed"]
    reactor._poller = poller._poller


def test_noTurnEndOnOtherReactors() -> None:
    """
    A reactor without the lean dispatch has no end-of-turn list: its users fall back to a
    C{callLater(0)}.
    """
    assert turnEnd(Clock()) is None
    plain = EPollReactor()
    assert turnEnd(plain) is None
    plain._poller.close()


def test_leanTransportReadAndFailingHandler(reactor: EPollReactor) -> None:
    """
    mqttd's own TCP transport is read straight from the dispatch loop: its data reaches the
    protocol, and a protocol that raises is logged and loses its connection with that error,
    as Twisted's dispatch would have it, while another connection ready with it is still read.
    """
    received: list[bytes] = []
    lost: list[Failure] = []

    class Proto(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if data == b"bad":
                raise ValueError("bad input")
            received.append(data)

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            lost.append(reason)

    pairs = [_pair(), _pair()]
    for ours, _ in pairs:
        protocol = Proto()
        protocol.makeConnection(
            Connection(ours, ours.fileno(), protocol, ("127.0.0.1", 1), reactor)
        )
    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    pairs[0][1].sendall(b"bad")
    pairs[1][1].sendall(b"good")
    globalLogPublisher.addObserver(observer)
    try:
        reactor.doIteration(1)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert received == [b"good"]
    assert [f.type for f in lost] == [ValueError]
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [ValueError]
    assert pairs[0][1].recv(10) == b""
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
