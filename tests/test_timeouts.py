"""
Many timeouts on one reactor timer (mqttd.timeouts): each is called at its due time and not
before, a cancelled one never and without keeping its target alive, cancelled entries do not pile
up, and the broker's connections use it, so that an idle connection holds no timer of the
reactor's.  Everything runs on a fake clock.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock

from mqttd.codec.packets import Pingreq
from mqttd.timeouts import Timeouts
from tests.harness import World


class _Target:
    """Something to time out, which records when."""

    def __init__(self, clock: Clock, name: str, calls: list[tuple[str, float]]) -> None:
        self.clock = clock
        self.name = name
        self.calls = calls

    def expired(self) -> None:
        self.calls.append((self.name, self.clock.seconds()))


def test_calledAtTheirDueTimesInOrderAndNotBefore() -> None:
    """
    Timeouts of different delays, set at different times, are each called once, at their due
    time, in the order of their due times (ties in the order they were set).
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []
    timeouts.set(10, _Target.expired, _Target(clock, "a", calls))
    timeouts.set(3, _Target.expired, _Target(clock, "b", calls))
    clock.advance(2)
    timeouts.set(1, _Target.expired, _Target(clock, "c", calls))
    timeouts.set(8, _Target.expired, _Target(clock, "d", calls))
    timeouts.set(8, _Target.expired, _Target(clock, "e", calls))
    clock.advance(0.999)
    assert calls == []
    clock.advance(0.001)
    assert calls == [("b", 3.0), ("c", 3.0)]
    clock.advance(6.9)
    assert calls == [("b", 3.0), ("c", 3.0)]
    clock.advance(0.1)
    assert calls[2:] == [("a", 10.0), ("d", 10.0), ("e", 10.0)]
    clock.advance(100)
    assert len(calls) == 5 and len(timeouts) == 0
    assert clock.getDelayedCalls() == []


def test_oneReactorCallServesThemAll() -> None:
    """
    However many timeouts are set, the reactor holds one call, for the earliest; a timeout due
    sooner than that call moves it earlier.
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []
    for i in range(1000):
        timeouts.set(60 + i, _Target.expired, _Target(clock, str(i), calls))
    assert len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 60
    timeouts.set(5, _Target.expired, _Target(clock, "soon", calls))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5]
    clock.advance(5)
    assert calls == [("soon", 5.0)]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [60]


def test_cancelledNeverCalledAndTargetReleased() -> None:
    """
    A cancelled timeout is not called, and the timeouts keep no reference to its target (the
    connection it was for can be freed at once); cancelling twice, or after the call, is
    harmless.
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []
    target = _Target(clock, "gone", calls)
    kept = _Target(clock, "kept", calls)
    ref = weakref.ref(target)
    timeout = timeouts.set(5, _Target.expired, target)
    timeouts.set(5, _Target.expired, kept)
    timeouts.cancel(timeout)
    timeouts.cancel(timeout)
    assert len(clock.getDelayedCalls()) == 1
    del target
    gc.collect()
    assert ref() is None
    assert len(timeouts) == 1
    clock.advance(5)
    assert calls == [("kept", 5.0)]
    timeouts.cancel(timeout)
    assert len(timeouts) == 0


def test_noReactorCallOnceAllAreCancelled() -> None:
    """
    With every timeout cancelled the reactor is left with no call of theirs (a broker whose
    clients all left has no timer running for them).
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []
    first = timeouts.set(5, _Target.expired, _Target(clock, "a", calls))
    second = timeouts.set(7, _Target.expired, _Target(clock, "b", calls))
    timeouts.cancel(first)
    assert len(clock.getDelayedCalls()) == 1
    timeouts.cancel(second)
    assert clock.getDelayedCalls() == [] and len(timeouts) == 0
    timeouts.set(1, _Target.expired, _Target(clock, "c", calls))
    clock.advance(1)
    assert calls == [("c", 1.0)]


def test_cancelledEntriesDoNotPileUp() -> None:
    """
    Entries cancelled long before they are due (every connection's CONNECT timeout, cancelled
    at CONNACK while its keepalive lives on, as 10,000 clients connect) are dropped once they
    reach a quarter of the live ones, so the heap never holds more than that many dead entries.
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []
    for _ in range(10_000):
        timeouts.cancel(timeouts.set(10, _Target.expired, _Target(clock, "connect", calls)))
        timeouts.set(90, _Target.expired, _Target(clock, "keepalive", calls))
        assert len(timeouts._heap) - len(timeouts) <= len(timeouts) // 4 + 64
    assert len(timeouts) == 10_000
    clock.advance(90)
    assert {name for name, _ in calls} == {"keepalive"} and len(calls) == 10_000


def test_setWhileExpiringAndAFailingCall() -> None:
    """
    A called function may set a new timeout (a keepalive checked and set again), due at once
    or later; one that raises is logged and the others due with it still run.
    """
    clock = Clock()
    timeouts = Timeouts(clock)
    calls: list[tuple[str, float]] = []

    class Again(_Target):
        def expired(self) -> None:
            super().expired()
            if len(self.calls) < 3:
                timeouts.set(2, Again.expired, self)

    def fail(target: object) -> None:
        raise RuntimeError("broken")

    timeouts.set(1, fail, None)
    timeouts.set(1, Again.expired, Again(clock, "again", calls))
    clock.advance(1)
    clock.advance(2)
    clock.advance(2)
    assert calls == [("again", 1.0), ("again", 3.0), ("again", 5.0)]
    assert clock.getDelayedCalls() == []


def test_idleConnectionsHoldNoReactorTimers() -> None:
    """
    A thousand connected clients with a keepalive hold no timer each in the reactor: their
    CONNECT timeouts and keepalives share the listener's one, and those timeouts still close a
    silent client at 1.5 x its keepalive [MQTT-3.1.2-24].
    """
    world = World()
    clients = [world.connect(f"c{i}", keepalive=10) for i in range(1000)]
    assert len(world.clock.getDelayedCalls()) <= 2
    world.clock.advance(14)
    for client in clients[1:]:
        client.send(Pingreq())
    world.clock.advance(1)
    assert clients[0].closed
    assert not any(client.closed for client in clients[1:])
    assert len(world.clock.getDelayedCalls()) <= 3
