"""
A subscriber that stops reading holds a bounded amount of the broker's memory: its queue is
bounded by C{max_queued_bytes} (10 MB by default) as well as by C{max_queued_messages}, what is
dropped is counted, and the log tells of it once per session per minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from mqttd.codec.packets import Publish
from mqttd.config import BrokerConfig
from mqttd.stats import DROP_QUEUE_FULL
from tests.harness import World

MEGABYTE = 1_000_000


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The queue-full warnings logged meanwhile."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        text = formatEvent(event) or ""
        if "queue is full" in text:
            lines.append(text)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_stalledSubscriberBoundedByBytes(warnings: list[str]) -> None:
    """
    With the default configuration, a subscriber whose socket no longer drains, fed 1 MB
    messages, queues only as many as fit in max_queued_bytes (the newest dropped, as mosquitto
    does), although max_queued_messages would allow 1,000; each drop is counted as queue_full.
    """
    assert BrokerConfig().max_queued_bytes == 10 * 1024 * 1024
    world = World()
    sub = world.subscriber("stalled", ("big/#", 1))
    sub.protocol.pauseProducing()
    pub = world.connect("pub")
    for n in range(30):
        pub.send(Publish("big/t", b"x" * MEGABYTE, qos=1, packet_id=n + 1))
    session = world.broker.sessions["stalled"]
    assert session.pending is not None and len(session.pending) == 10
    assert session.queuedBytes == 10 * MEGABYTE
    assert world.broker.stats.dropped[DROP_QUEUE_FULL] == 20
    assert session.queueDropped == 20
    # The queue drains as the socket does, and has room again.
    sub.protocol.resumeProducing()
    assert len(sub.publishes()) == 10
    assert session.queuedBytes == 0


def test_dropsLoggedOncePerMinute(warnings: list[str]) -> None:
    """
    A session dropping message after message is told of in one warning per minute, naming the
    client, its queue and the limits, with the count of drops since the last warning.
    """
    world = World(max_queued_bytes=2 * MEGABYTE)
    world.subscriber("stalled", ("big/#", 0)).protocol.pauseProducing()
    pub = world.connect("pub")
    for _ in range(50):
        pub.send(Publish("big/t", b"x" * MEGABYTE))
    assert len(warnings) == 1
    assert "stalled's queue is full (2 messages, 2000000 bytes" in warnings[0]
    assert "max_queued_bytes 2000000" in warnings[0]
    world.clock.advance(59)
    pub.send(Publish("big/t", b"x" * MEGABYTE))
    assert len(warnings) == 1
    world.clock.advance(1)
    pub.send(Publish("big/t", b"x" * MEGABYTE))
    assert len(warnings) == 2
    # 48 + 1 + 1 drops; the first warning told of the first.
    assert "49 dropped since the last report" in warnings[1]


def test_zeroMeansNoByteLimit() -> None:
    """max_queued_bytes = 0 leaves the queue bounded by max_queued_messages alone."""
    world = World(max_queued_bytes=0, max_queued_messages=15)
    world.subscriber("stalled", ("big/#", 0)).protocol.pauseProducing()
    pub = world.connect("pub")
    for _ in range(20):
        pub.send(Publish("big/t", b"x" * MEGABYTE))
    session = world.broker.sessions["stalled"]
    assert session.pending is not None and len(session.pending) == 15
