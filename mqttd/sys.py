"""
The broker's C{$SYS} tree, as mosquitto publishes it, and presence events.

Every C{sys_interval} seconds L{SysTree} publishes mosquitto's topics with
mosquitto's names and meanings (so dashboards and scripts written for it work
unchanged), retained, each only when its value changed, plus mqttd's own under
C{$SYS/broker/mqttd/}.  The numbers come from L{mqttd.stats.Stats} and from
the broker's state, which the Prometheus endpoint reads too.  The values are
kept as retained messages in memory only: a restarted broker publishes fresh
ones, and no store is written every interval (mosquitto does not persist
C{$SYS} either).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import __version__
from .message import Message
from .stats import DROP_CAUSES
from .topics import topic_level

if TYPE_CHECKING:
    from .broker import Broker

# The averaging windows of $SYS/broker/load/..., in seconds, and their topic suffixes.
LOAD_WINDOWS = ((60.0, "1min"), (300.0, "5min"), (900.0, "15min"))
# The load topics, each with its counter read as a running total.
LOAD_TOPICS = (
    "messages/received",
    "messages/sent",
    "publish/dropped",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "sockets",
    "connections",
)
PRESENCE_TOPIC = "$SYS/broker/clients/{clientId}/{event}"


def residentBytes() -> int:
    """The process's resident set size now, in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peakResidentBytes() -> int:
    """The process's largest resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


class LoadAverage:
    """
    One of mosquitto's C{$SYS/broker/load/...} values: an exponentially
    decaying average of a counter's rate per minute over a window, as
    mosquitto's C{calc_load} computes it: each update moves the average
    towards the rate of the interval just ended by C{1 - exp(-elapsed /
    window)}.
    """

    __slots__ = ("value", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.value = 0.0

    def update(self, perMinute: float, elapsed: float) -> float:
        """Fold in the rate (per minute) of the last C{elapsed} seconds; return the average."""
        exponent = math.exp(-elapsed / self.window)
        self.value = perMinute + exponent * (self.value - perMinute)
        return self.value


class SysTree:
    """
    Publishes the C{$SYS} tree of C{broker} every C{interval} seconds on the
    broker's clock.
    """

    log = Logger()

    def __init__(self, broker: Broker, interval: float) -> None:
        self.broker = broker
        self.interval = interval
        # What each topic last carried, so that only changes are published, as mosquitto does.
        self._published: dict[str, str] = {}
        self._loads = {
            topic: [LoadAverage(window) for window, _ in LOAD_WINDOWS] for topic in LOAD_TOPICS
        }
        self._lastTotals: dict[str, int] | None = None
        self._lastUpdate = 0.0
        self._lastFlush = (0, 0.0)
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """Publish the static topics, then the tree now and every interval."""
        self._publish("$SYS/broker/version", f"mqttd version {__version__}")
        # mosquitto's is its build time; an installed Python package has none, so its start.
        self._publish(
            "$SYS/broker/timestamp",
            time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(self.broker.clock.seconds())),
        )
        self._loop = LoopingCall(self.update)
        self._loop.clock = self.broker.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("$SYS updates stopped", f)
        )

    def stop(self) -> None:
        """Stop publishing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _publish(self, topic: str, value: str) -> None:
        if self._published.get(topic) == value:
            return
        self._published[topic] = value
        payload = value.encode()
        broker = self.broker
        if broker.config.retain_available:
            # Set here rather than through route, which would also write it to the store.
            broker.retained.set(topic, Message(topic, payload, 0, True))
        broker.route(Message(topic, payload, 0, False))

    def totals(self) -> dict[str, int]:
        """The counters the load averages follow, as running totals."""
        stats = self.broker.stats
        return {
            "messages/received": stats.packetsReceived,
            "messages/sent": stats.messagesSent,
            "publish/dropped": stats.messagesDropped,
            "publish/received": stats.messagesReceived,
            "publish/sent": stats.publishMessagesSent,
            "bytes/received": stats.bytesReceived,
            "bytes/sent": stats.bytesSent,
            "sockets": stats.sockets,
            "connections": stats.connects,
        }

    def update(self) -> None:
        """Publish every topic whose value changed since the last update."""
        broker = self.broker
        stats = broker.stats
        now = broker.clock.seconds()
        publish = self._publish
        publish("$SYS/broker/uptime", f"{int(now - broker.startedAt)} seconds")

        state = BrokerState.of(broker)
        stats.clientsMaximum = max(stats.clientsMaximum, state.sessions)
        for name, value in (
            ("total", state.sessions),
            ("maximum", stats.clientsMaximum),
            ("connected", state.connected),
            ("active", state.connected),
            ("disconnected", state.sessions - state.connected),
            ("inactive", state.sessions - state.connected),
            ("expired", stats.clientsExpired),
        ):
            publish(f"$SYS/broker/clients/{name}", str(value))

        totals = self.totals()
        self._updateLoads(totals, now)
        for topic, value in (
            ("messages/received", totals["messages/received"]),
            ("messages/sent", totals["messages/sent"]),
            ("messages/stored", state.stored),
            ("messages/inflight", state.inflight),
            ("store/messages/count", state.stored),
            ("store/messages/bytes", state.storedBytes),
            ("publish/messages/received", totals["publish/received"]),
            ("publish/messages/sent", totals["publish/sent"]),
            ("publish/messages/dropped", totals["publish/dropped"]),
            ("publish/bytes/received", sum(stats.publishPayloadReceived)),
            ("bytes/received", totals["bytes/received"]),
            ("bytes/sent", totals["bytes/sent"]),
            ("retained messages/count", state.retained),
            ("subscriptions/count", state.subscriptions),
            ("shared_subscriptions/count", state.sharedSubscriptions),
            ("heap/current size", residentBytes()),
            ("heap/maximum size", peakResidentBytes()),
        ):
            publish(f"$SYS/broker/{topic}", str(value))
        self._updateOwn(state)

    def _updateLoads(self, totals: dict[str, int], now: float) -> None:
        last = self._lastTotals
        self._lastTotals = totals
        if last is None:
            # mosquitto's first update publishes every average as 0.00.
            for topic, averages in self._loads.items():
                for (_, suffix), average in zip(LOAD_WINDOWS, averages, strict=True):
                    self._publish(f"$SYS/broker/load/{topic}/{suffix}", f"{average.value:.2f}")
            self._lastUpdate = now
            return
        elapsed = now - self._lastUpdate
        self._lastUpdate = now
        if elapsed <= 0:
            return
        perMinute = 60.0 / elapsed
        for topic, averages in self._loads.items():
            rate = (totals[topic] - last[topic]) * perMinute
            for (_, suffix), average in zip(LOAD_WINDOWS, averages, strict=True):
                before = average.value
                after = average.update(rate, elapsed)
                # As mosquitto: only a change of at least 0.01 is published.
                if abs(after - before) >= 0.01:
                    self._publish(f"$SYS/broker/load/{topic}/{suffix}", f"{after:.2f}")

    def _updateOwn(self, state: BrokerState) -> None:
        stats = self.broker.stats
        publish = self._publish
        publish("$SYS/broker/mqttd/groups/deliveries", str(stats.selectedDeliveries))
        for cause, count in zip(DROP_CAUSES, stats.dropped, strict=True):
            publish(f"$SYS/broker/mqttd/dropped/{cause}", str(count))
        publish("$SYS/broker/mqttd/messages/queued", str(state.queued))
        publish("$SYS/broker/mqttd/clients/auth failures", str(stats.authFailures))
        flush = stats.storeFlush
        count, total = self._lastFlush
        self._lastFlush = (flush.count, flush.total)
        publish("$SYS/broker/mqttd/store/flushes", str(flush.count))
        if flush.count > count:
            # The mean over the last interval: what an operator watching it wants to see move.
            mean = (flush.total - total) / (flush.count - count)
            publish("$SYS/broker/mqttd/store/flush latency", f"{mean:.6f}")


class BrokerState:
    """
    What is counted from the broker's state when asked rather than on the
    hot path: sessions, subscriptions, queued and in-flight messages.
    """

    __slots__ = (
        "connected",
        "inflight",
        "queued",
        "queuedBytes",
        "retained",
        "sessions",
        "sharedSubscriptions",
        "stored",
        "storedBytes",
        "subscriptions",
    )

    def __init__(self) -> None:
        self.sessions = 0
        self.connected = 0
        self.subscriptions = 0
        self.sharedSubscriptions = 0
        self.queued = 0
        self.queuedBytes = 0
        self.inflight = 0
        self.retained = 0
        self.stored = 0
        self.storedBytes = 0

    @classmethod
    def of(cls, broker: Broker) -> BrokerState:
        """Count C{broker}'s state now (one pass over its sessions)."""
        state = cls()
        state.sessions = len(broker.sessions)
        for session in broker.sessions.values():
            if session.connection is not None:
                state.connected += 1
            for topicFilter in session.subscriptions:
                if topicFilter.startswith("$share/"):
                    state.sharedSubscriptions += 1
                else:
                    state.subscriptions += 1
            pending = session.pending
            if pending:
                state.queued += len(pending)
                state.queuedBytes += session.queuedBytes
            state.inflight += len(session.inflight)
            state.storedBytes += sum(len(out.message.payload) for out in session.inflight.values())
        state.retained = len(broker.retained)
        retainedBytes = sum(
            len(message.payload)
            for topicFilter in ("#", "$SYS/#")
            for message in broker.retained.matching(topicFilter)
        )
        # mosquitto's message store holds every message the broker keeps: retained, queued
        # and in flight.
        state.stored = state.retained + state.queued + state.inflight
        state.storedBytes += retainedBytes + state.queuedBytes
        return state


def presenceMessage(clientId: str, event: str, body: dict[str, Any]) -> Message:
    """
    The presence event C{event} (C{connected} or C{disconnected}) of
    C{clientId}, a QoS 1 message with a JSON body, not retained, under
    C{$SYS/broker/clients/{clientId}/{event}}.
    """
    payload = json.dumps(body, separators=(",", ":")).encode()
    topic = PRESENCE_TOPIC.format(clientId=presenceLevel(clientId), event=event)
    return Message(topic, payload, 1, False)


def presenceLevel(clientId: str) -> str:
    """C{clientId} as one topic level: see L{mqttd.topics.topic_level}."""
    return topic_level(clientId)
