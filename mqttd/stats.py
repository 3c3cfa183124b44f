"""
The broker's counters, in one place: the core adds to them as it works, and
C{$SYS} (L{mqttd.sys}) and the Prometheus endpoint (L{mqttd.http.metrics})
read the same numbers.

The hot path pays one integer addition per counter it touches: every
counter is a plain attribute (or a slot of a list indexed by a byte the
caller already has), never a method call.  Everything that can be counted
from the broker's own state when asked (sessions, subscriptions, queued
messages) is not counted here at all.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Why a message was dropped; L{Stats.dropped} is indexed by these.
DROP_QUEUE_FULL = 0
DROP_EXPIRED = 1
DROP_TOO_LARGE = 2
DROP_PUBLISH_DENIED = 3
DROP_RECEIVE_DENIED = 4
DROP_WILL_DENIED = 5
DROP_SYS_TOPIC = 6
DROP_SIZE_LIMIT = 7
DROP_INVALID_TOPIC = 8
DROP_CAUSES = (
    "queue_full",
    "expired",
    "packet_too_large",
    "publish_denied",
    "receive_denied",
    "will_denied",
    "sys_topic",
    "message_size_limit",
    "invalid_topic",
)

# What an ACL denial refused; L{Stats.aclDenied} is indexed by these.
ACL_PUBLISH = 0
ACL_SUBSCRIBE = 1
ACL_RECEIVE = 2
ACL_ACTIONS = ("publish", "subscribe", "receive")

# Upper bounds, in seconds, of the store flush latency histogram's buckets (the last is +Inf).
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


PUBLISH_TYPE = 3
# The first bytes of PUBLISH packets at each QoS (any DUP and RETAIN).
_PUBLISH_HEADERS = tuple(
    tuple(header for header in range(0x30, 0x40) if (header >> 1) & 3 == qos) for qos in (0, 1, 2)
)


def _perHeader() -> list[int]:
    # Indexed by the first byte of a packet: one subscript gives type, QoS, DUP and RETAIN.
    return [0] * 256


class Histogram:
    """
    Observations counted into fixed buckets, as a Prometheus histogram
    reports them.

    @ivar counts: observations per bucket (not cumulative); one more than
        there are bounds, for those above the last.
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of C{value}."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """C{(upper bound, observations at or below it)} per bucket, ending with +Inf."""
        result = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            result.append((bound, running))
        return result


class Stats:
    """
    Broker-wide counters, each a running total since the broker started.

    @ivar messagesRouted: messages routed (published, wills, the broker's own).
    @ivar messagesDropped: messages dropped for any reason, as mosquitto's
        C{publish/messages/dropped}; L{dropped} splits most of them by cause
        (a plugin may drop for reasons of its own, counted here only).
    @ivar dropped: drops by cause, indexed by the C{DROP_*} constants.
    @ivar publishReceived: PUBLISH packets received, by QoS.
    @ivar publishPayloadReceived: their payload bytes, by QoS.
    @ivar otherReceived: messages received other than as MQTT PUBLISH
        packets: from MQTT-SN clients and the HTTP API.
    @ivar sentByHeader: packets written as chunks (PUBLISH, and PUBREL), by
        first byte: the packet type, and a PUBLISH's QoS, DUP and RETAIN.
    @ivar sentBytesByHeader: of those, the bytes of the first and the last
        chunk (a PUBLISH's fixed header and topic, and its payload), by first
        byte; L{publishBytesSentAt} adds the packet identifier and properties
        between them.
    @ivar propertyBytesSent: the bytes of MQTT 5 PUBLISH property blocks
        written, by QoS.
    @ivar packetsReceived: MQTT packets received, of every type.
    @ivar bytesReceived: bytes received on MQTT connections.
    @ivar controlSent: packets written whole (all but PUBLISH and PUBREL).
    @ivar controlBytesSent: their bytes.
    @ivar sockets: connections accepted by MQTT listeners.
    @ivar connects: CONNECTs accepted.
    @ivar authFailures: CONNECTs refused by the authenticators.
    @ivar aclDenied: ACL denials, indexed by the C{ACL_*} constants.
    @ivar tlsHandshakeFailures: connections that failed their TLS handshake.
    @ivar clientsExpired: persistent sessions ended by their expiry.
    @ivar clientsMaximum: the most sessions there have been at once.
    @ivar selectedDeliveries: deliveries the subscriber selectors (virtual
        groups, direct messages) added.
    @ivar storeFlush: seconds from a flush request to the store's commit,
        for acknowledgements that waited for one.
    """

    __slots__ = (
        "aclDenied",
        "authFailures",
        "bytesReceived",
        "clientsExpired",
        "clientsMaximum",
        "connects",
        "controlBytesSent",
        "controlSent",
        "dropped",
        "messagesDropped",
        "messagesRouted",
        "otherReceived",
        "packetsReceived",
        "propertyBytesSent",
        "publishPayloadReceived",
        "publishReceived",
        "selectedDeliveries",
        "sentByHeader",
        "sentBytesByHeader",
        "sockets",
        "storeFlush",
        "tlsHandshakeFailures",
    )

    def __init__(self) -> None:
        self.messagesRouted = 0
        self.messagesDropped = 0
        self.dropped = [0] * len(DROP_CAUSES)
        self.publishReceived = [0, 0, 0]
        self.publishPayloadReceived = [0, 0, 0]
        self.otherReceived = 0
        self.sentByHeader = _perHeader()
        self.sentBytesByHeader = _perHeader()
        self.propertyBytesSent = [0, 0, 0]
        self.packetsReceived = 0
        self.bytesReceived = 0
        self.controlSent = 0
        self.controlBytesSent = 0
        self.sockets = 0
        self.connects = 0
        self.authFailures = 0
        self.aclDenied = [0] * len(ACL_ACTIONS)
        self.tlsHandshakeFailures = 0
        self.clientsExpired = 0
        self.clientsMaximum = 0
        self.selectedDeliveries = 0
        self.storeFlush = Histogram(FLUSH_BUCKETS)

    def drop(self, cause: int) -> None:
        """Count one message dropped for C{cause} (off the hot path: drops are rare)."""
        self.messagesDropped += 1
        self.dropped[cause] += 1

    @property
    def messagesReceived(self) -> int:
        """Messages received: PUBLISH packets, and those of L{otherReceived}."""
        return sum(self.publishReceived) + self.otherReceived

    @messagesReceived.setter
    def messagesReceived(self, value: int) -> None:
        # What arrives other than as an MQTT PUBLISH (the MQTT-SN gateway, the HTTP API) is
        # counted with "stats.messagesReceived += 1", which lands here.
        self.otherReceived += value - self.messagesReceived

    def publishSentAt(self, qos: int) -> int:
        """PUBLISH packets written at C{qos}."""
        return sum(self.sentByHeader[header] for header in _PUBLISH_HEADERS[qos])

    def publishBytesSentAt(self, qos: int) -> int:
        """Bytes of the PUBLISH packets written at C{qos}."""
        prefixAndPayload = sum(self.sentBytesByHeader[header] for header in _PUBLISH_HEADERS[qos])
        # The packet identifier is 2 bytes of every QoS 1 and 2 PUBLISH.
        identifiers = 2 * self.publishSentAt(qos) if qos else 0
        return prefixAndPayload + identifiers + self.propertyBytesSent[qos]

    @property
    def messagesSent(self) -> int:
        """MQTT packets written, of every type (mosquitto's C{messages/sent})."""
        return sum(self.sentByHeader) + self.controlSent

    @property
    def bytesSent(self) -> int:
        """Bytes written on MQTT connections."""
        publish = sum(self.publishBytesSentAt(qos) for qos in (0, 1, 2))
        # PUBREL comes as its fixed header and its packet identifier: both counted.
        pubrel = sum(
            n for header, n in enumerate(self.sentBytesByHeader) if header >> 4 != PUBLISH_TYPE
        )
        return self.controlBytesSent + publish + pubrel

    @property
    def publishMessagesSent(self) -> int:
        """PUBLISH packets written."""
        return sum(self.publishSentAt(qos) for qos in (0, 1, 2))
