"""
Per-client session state: subscriptions, packet identifiers, the outbound
in-flight window and queue, and inbound QoS 2 state.

Pure state and rules; the only output is through an
L{mqttd.interfaces.IClientConnection}, and time arrives as arguments.

Over 500 lines, for a reason: the in-flight window, the offline queue, the
writes held for the store and the acknowledgements are one state machine over
the same in-flight map, queue and packet identifiers, on the per-message path;
split, each part would have to reach into the others' slots.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .codec.packets import ProtocolLevel, ReasonCode, Will
from .interfaces import IClientConnection, IMessageStore
from .message import Message
from .stats import DROP_EXPIRED, DROP_QUEUE_FULL, DROP_RECEIVE_DENIED, DROP_TOO_LARGE, Stats
from .topics import SHARE_PREFIX, filter_matches

WAIT_PUBACK = 1
WAIT_PUBREC = 2
WAIT_PUBCOMP = 3

# PUBREL's fixed header; its packet identifier follows.  Written as two chunks like a PUBLISH's
# prefix and payload, so the connection counts it as it counts those (mqttd.stats).
PUBREL_HEADER = b"\x62\x02"

# Seconds between two log lines about one session's queue dropping messages.
DROP_REPORT_INTERVAL = 60.0

# The Session Expiry Interval that means the session never expires (section 3.1.2.11.2).
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


class SessionError(Exception):
    """
    The client broke the session's rules (an acknowledgement of the wrong
    kind, too many QoS 2 messages awaiting PUBREL); close its connection.

    @ivar reasonCode: the MQTT 5 reason code of the DISCONNECT that says why.
    """

    def __init__(self, message: str, reasonCode: int = ReasonCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reasonCode = reasonCode


class _Empty(dict[Any, Any]):
    """
    The one empty dict every session without subscriptions, or without deliveries in flight,
    holds as its C{subscriptions} or C{inflight}: a dict of its own is 64 bytes of every idle
    connection, and kept its table (~0.16 KB more) once emptied.  The session gives itself a
    dict of its own when it adds the first entry (L{Session.setSubscription}, L{Session._send});
    adding to this one raises, so that a writer that bypassed them fails instead of writing to
    every session at once.
    """

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a session's shared empty dict is read-only: give the session its own")

    __setitem__ = setdefault = update = __ior__ = _refuse


_EMPTY: dict[Any, Any] = _Empty()


class Outgoing:
    """A QoS 1 or 2 delivery sent and not yet fully acknowledged."""

    __slots__ = ("message", "qos", "retain", "state")

    def __init__(self, message: Message, qos: int, retain: bool, state: int) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.state = state


@dataclass
class SessionState:
    """
    What a persistent session keeps across connections, in plain values, for
    an L{mqttd.interfaces.IMessageStore}.

    C{inflight} holds C{(packetId, message, qos, retain, state)}, C{pending}
    holds C{(message, qos, retain)}, both in delivery order.  C{expiresAt}
    is when (broker clock) an offline session's Session Expiry Interval
    C{expiryInterval} runs out; L{None} while its client was connected.
    C{owner} is the identity that created the session (see L{Session.owner}),
    L{None} when the store does not know it (a session from before owners).
    """

    clientId: str
    subscriptions: dict[str, int] = field(default_factory=dict)
    inflight: list[tuple[int, Message, int, bool, int]] = field(default_factory=list)
    pending: list[tuple[Message, int, bool]] = field(default_factory=list)
    awaitingRel: dict[int, float] = field(default_factory=dict)
    nextPacketId: int = 1
    expiryInterval: int = SESSION_NEVER_EXPIRES
    expiresAt: float | None = None
    owner: str | None = None


class SessionContext:
    """
    What every session of one broker shares, kept once rather than in each session (40 bytes
    of every connection).

    @ivar stats: the broker's counters.
    @ivar now: the broker's clock, for Message Expiry Intervals and the queue's drop reports.
    @ivar acknowledged: told (client id, message, QoS) of each QoS 1/2 delivery a client
        acknowledged, for the broker's observers; L{None} without observers, costing one test
        per acknowledgement.
    @ivar maxAwaitingRel: the most inbound QoS 2 messages a session keeps awaiting PUBREL.
    @ivar awaitRelTimeout: seconds after which one awaiting PUBREL may be forgotten to make room.
    """

    __slots__ = ("acknowledged", "awaitRelTimeout", "maxAwaitingRel", "now", "stats")

    def __init__(
        self,
        stats: Stats,
        *,
        maxAwaitingRel: int,
        awaitRelTimeout: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.now = now
        self.acknowledged: Callable[[str, Message, int], None] | None = None
        self.maxAwaitingRel = maxAwaitingRel
        self.awaitRelTimeout = awaitRelTimeout


class Session:
    """
    One client identifier's session.

    @ivar pending: deliveries waiting for the in-flight window, for the
        connection to drain, or (persistent sessions) for the client to come
        back.  Bounded by C{maxQueued} messages and, when C{maxQueuedBytes}
        is set, by that many payload bytes (C{queuedBytes}); when full the
        newest message is dropped and counted, as mosquitto does, so what a
        client already has queued is never displaced.
    @ivar owner: the identity (user name, or TLS certificate identity) of the
        client that created the session, C{""} for an anonymous one;
        L{None} while unknown (restored from a store that kept none).  Only
        a client with this identity may connect with this client identifier.
    @ivar journal: the store told of every change to the QoS 1/2 state, for
        a persistent session; L{None} for a clean one, which no store keeps,
        so clean sessions pay one test per change and nothing more.
    """

    log = Logger()

    __slots__ = (
        "_context",
        "_dropsReported",
        "_nextPacketId",
        "aliasMaximum",
        "aliases",
        "awaitingRel",
        "cleanSession",
        "clientId",
        "connection",
        "dropped",
        "expiryInterval",
        "identified",
        "inflight",
        "journal",
        "maxInflight",
        "maxPacketSize",
        "maxQueued",
        "maxQueuedBytes",
        "mqtt5",
        "owner",
        "pending",
        "queueDropped",
        "queuedBytes",
        "subscriptions",
        "unsent",
        "will",
    )

    def __init__(
        self,
        clientId: str,
        cleanSession: bool,
        context: SessionContext,
        *,
        maxInflight: int,
        maxQueued: int,
        maxQueuedBytes: int = 0,
    ) -> None:
        self.clientId = clientId
        self._context = context
        self.cleanSession = cleanSession
        self.connection: IClientConnection | None = None
        self.owner: str | None = None
        self.will: Will | None = None
        # Both shared and empty until the first entry (see _Empty).
        self.subscriptions: dict[str, int] = _EMPTY
        self.inflight: dict[int, Outgoing] = _EMPTY
        # Most sessions never queue; an empty deque costs ~700 bytes, which
        # is most of an idle connection's footprint.
        self.pending: deque[tuple[Message, int, bool]] | None = None
        # Inbound QoS 2 packet identifiers awaiting PUBREL, with when each came; None until the
        # first, as most clients never publish at QoS 2 (an empty dict is 64 bytes each).
        self.awaitingRel: dict[int, float] | None = None
        self.dropped = 0
        # Seconds the session outlives its connection (MQTT 5 Session Expiry Interval); 3.1.1
        # sessions are kept for ever or end with the connection, as their clean session says.
        self.expiryInterval = 0 if cleanSession else SESSION_NEVER_EXPIRES
        self.journal: IMessageStore | None = None
        # Writes waiting, in order, for the store to make what they announce durable (see
        # _hold); None while nothing waits, so the usual path pays one test.
        self.unsent: deque[list[Any]] | None = None
        self.maxInflight = maxInflight
        # The Maximum Packet Size of a 5.0 client's CONNECT; 0 when it set none.
        self.maxPacketSize = 0
        # The Topic Alias Maximum of a 5.0 client's CONNECT, and the aliases this connection
        # gave topics: the first topics sent keep theirs, and the rest go by name.
        self.aliasMaximum = 0
        # None until the first alias: most clients set no Topic Alias Maximum, and an empty
        # dict is 64 bytes of every idle connection.
        self.aliases: dict[str, int] | None = None
        self.maxQueued = maxQueued
        # 0: bounded by count only.
        self.maxQueuedBytes = maxQueuedBytes
        self.queuedBytes = 0
        # Messages dropped because the queue was full, how many of them the log has told of,
        # and when (broker clock) it may tell again: (reported, next report), None until the
        # first drop.
        self.queueDropped = 0
        self._dropsReported: tuple[int, float] | None = None
        self._nextPacketId = 1
        # Whether the connection speaks 5.0, whose PUBLISH carries properties; set by resume.
        self.mqtt5 = False
        # Whether a subscription may carry a Subscription Identifier, so 5.0 deliveries
        # look for them only then; set by the broker, never cleared (a stale True costs a scan).
        self.identified = False

    def setSubscription(self, topicFilter: str, options: int) -> None:
        """Keep C{options} (the granted QoS and subscription options) for C{topicFilter}."""
        subscriptions = self.subscriptions
        if subscriptions is _EMPTY:
            subscriptions = self.subscriptions = {}
        subscriptions[topicFilter] = options

    # Outbound: broker -> client

    def deliver(self, message: Message, qos: int, retain: bool = False) -> None:
        """
        Deliver C{message} at C{qos} (already the minimum of the published and
        granted QoS), now if the connection and window allow, else queued.
        """
        conn = self.connection
        if conn is None:
            # QoS 0 is not queued for offline clients [MQTT-3.1.2-5].
            if qos:
                self._enqueue(message, qos, retain)
            return
        if self.pending or conn.paused:
            # Anything already waiting goes first, keeping per-topic order
            # [MQTT-4.6.0-6].
            self._enqueue(message, qos, retain)
        elif qos == 0:
            if self.unsent is not None:
                self.hold(None, self._writePublish, conn, message, 0, retain, False, 0)
            elif self.mqtt5:
                self._write5(conn, message, 0, retain, False, b"")
            else:
                conn.writeSequence((message.wirePrefix(0, retain, False), message.payload))
        elif len(self.inflight) < self.maxInflight:
            self._send(conn, message, qos, retain, False)
        else:
            self._enqueue(message, qos, retain)

    def _write5(
        self,
        conn: IClientConnection,
        message: Message,
        qos: int,
        retain: bool,
        dup: bool,
        packetId: bytes,
    ) -> None:
        ids = self._subscriptionIds(message) if self.identified else _NO_IDS
        alias = 0
        known = False
        aliases = self.aliases
        if self.aliasMaximum:
            if aliases is None:
                aliases = self.aliases = {}
            alias = aliases.get(message.topic, 0)
            known = alias != 0
            if not known and len(aliases) < self.aliasMaximum:
                # Numbered from 1 up to the client's maximum [MQTT-3.3.2-8, MQTT-3.1.2-26].
                alias = len(aliases) + 1
        # The clock is read only for a message with an expiry interval to count down.
        now = 0.0 if message.expiresAt is None else self._context.now()
        prefix, block = message.wire5(qos, retain, dup, now, ids, alias, known)
        limit = self.maxPacketSize
        if limit and len(prefix) + len(packetId) + len(block) + len(message.payload) > limit:
            # Never sent, and settled as if delivered [MQTT-3.1.2-24, MQTT-3.1.2-25].
            self.dropped += 1
            self._context.stats.drop(DROP_TOO_LARGE)
            if packetId:
                sent = int.from_bytes(packetId, "big")
                del self.inflight[sent]
                if self.journal is not None:
                    self.journal.messageAcknowledged(self.clientId, sent)
            return
        self._context.stats.propertyBytesSent[qos] += len(block)
        if alias and not known:
            # Only once sent: the client must have seen the topic its alias stands for.
            aliases[message.topic] = alias  # type: ignore[index]
        conn.writeSequence((prefix, packetId, block, message.payload))

    def _enqueue(self, message: Message, qos: int, retain: bool) -> None:
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        elif len(pending) >= self.maxQueued:
            self._queueFull()
            return
        size = len(message.payload)
        if self.maxQueuedBytes and self.queuedBytes + size > self.maxQueuedBytes:
            self._queueFull()
            return
        self.queuedBytes += size
        pending.append((message, qos, retain))
        # QoS 0 is at most once: losing it in a crash breaks no promise.
        if qos and self.journal is not None:
            self.journal.messageQueued(self.clientId, message, qos, retain)

    def _queueFull(self) -> None:
        self.dropped += 1
        self.queueDropped += 1
        self._context.stats.drop(DROP_QUEUE_FULL)
        now = self._context.now()
        reported, nextReport = self._dropsReported or (0, 0.0)
        if now < nextReport:
            return
        # Once a minute at most: a stalled subscriber of a busy topic drops thousands a second.
        self._dropsReported = (self.queueDropped, now + DROP_REPORT_INTERVAL)
        self.log.warn(
            "{clientId}'s queue is full ({messages} messages, {size} bytes; max_queued_messages"
            " {maxMessages}, max_queued_bytes {maxBytes}): new messages for it are dropped;"
            " {count} dropped since the last report",
            clientId=self.clientId,
            messages=len(self.pending or ()),
            size=self.queuedBytes,
            maxMessages=self.maxQueued,
            maxBytes=self.maxQueuedBytes,
            count=self.queueDropped - reported,
        )

    def _send(
        self, conn: IClientConnection, message: Message, qos: int, retain: bool, queued: bool
    ) -> None:
        inflight = self.inflight
        if inflight is _EMPTY:
            inflight = self.inflight = {}
        # _allocatePacketId's steps, written out on the per-delivery path.
        packetId = self._nextPacketId
        while packetId in inflight:
            packetId = packetId % 65535 + 1
        self._nextPacketId = packetId % 65535 + 1
        inflight[packetId] = Outgoing(
            message, qos, retain, WAIT_PUBACK if qos == 1 else WAIT_PUBREC
        )
        journal = self.journal
        if journal is not None:
            journal.messageSent(self.clientId, packetId, message, qos, retain, queued)
            # Written once the store holds the delivery and its packet identifier: a crash in
            # between would leave the client holding an identifier (QoS 2: awaiting PUBREL)
            # that the restored session does not know and may give another message, which the
            # client would then discard as a resend [MQTT-4.3.3-2].
            durable = journal.flush(qos == 2)
            if durable is not None or self.unsent is not None:
                self.hold(durable, self._writePublish, conn, message, qos, retain, False, packetId)
                return
        elif self.unsent is not None:
            self.hold(None, self._writePublish, conn, message, qos, retain, False, packetId)
            return
        if self.mqtt5:
            self._write5(conn, message, qos, retain, False, packetId.to_bytes(2, "big"))
            return
        conn.writeSequence(
            (message.wirePrefix(qos, retain, False), packetId.to_bytes(2, "big"), message.payload)
        )

    def _writePublish(
        self,
        conn: IClientConnection,
        message: Message,
        qos: int,
        retain: bool,
        dup: bool,
        packetId: int,
    ) -> None:
        if self.mqtt5:
            self._write5(
                conn, message, qos, retain, dup, packetId.to_bytes(2, "big") if qos else b""
            )
        elif qos:
            conn.writeSequence(
                (message.wirePrefix(qos, retain, dup), packetId.to_bytes(2, "big"), message.payload)
            )
        else:
            conn.writeSequence((message.wirePrefix(0, retain, False), message.payload))

    def hold(self, durable: Deferred[None] | None, write: Callable[..., None], *args: Any) -> None:
        """
        Call C{write(*args)} once C{durable} has fired (at once if L{None})
        and every write held before it is done, so that the client sees
        packets in the order the session made them: a QoS 0 message never
        overtakes a held one, nor a topic alias its definition.
        """
        unsent = self.unsent
        if unsent is None:
            if durable is None:
                write(*args)
                return
            unsent = self.unsent = deque()
        entry: list[Any] = [durable is None, write, args]
        unsent.append(entry)
        if durable is not None:
            durable.addBoth(self._durable, unsent, entry)

    def _durable(self, result: object, unsent: deque[list[Any]], entry: list[Any]) -> None:
        entry[0] = True
        if isinstance(result, Failure):
            # The store could not write (and logged why): not sent now, and re-sent from the
            # in-flight window when the client comes back.
            entry[1] = None
        if unsent is not self.unsent:
            # Written for a connection that is gone: resume re-sends what matters.
            return
        if self.connection is None:
            self.unsent = None
            return
        while unsent and unsent[0][0]:
            _, write, args = unsent.popleft()
            if write is not None:
                write(*args)
        if not unsent and unsent is self.unsent:
            self.unsent = None

    def _allocatePacketId(self) -> int:
        # The window is far smaller than the id space, so this loop ends after
        # at most len(self.inflight) + 1 steps.
        packetId = self._nextPacketId
        while packetId in self.inflight:
            packetId = packetId % 65535 + 1
        self._nextPacketId = packetId % 65535 + 1
        return packetId

    def pump(self) -> None:
        """
        Send queued deliveries while the connection is writable and the
        in-flight window has room.
        """
        conn = self.connection
        pending = self.pending
        while pending and conn is not None and not conn.paused:
            message, qos, retain = pending[0]
            if message.expiresAt is not None and message.expired(self._context.now()):
                pending.popleft()
                self.queuedBytes -= len(message.payload)
                self._expired(message, qos, retain)
            elif qos == 0:
                pending.popleft()
                self.queuedBytes -= len(message.payload)
                if self.unsent is not None:
                    self.hold(None, self._writePublish, conn, message, 0, retain, False, 0)
                elif self.mqtt5:
                    self._write5(conn, message, 0, retain, False, b"")
                else:
                    conn.writeSequence((message.wirePrefix(0, retain, False), message.payload))
            elif len(self.inflight) < self.maxInflight:
                pending.popleft()
                self.queuedBytes -= len(message.payload)
                self._send(conn, message, qos, retain, True)
            else:
                break
        if pending is not None and not pending and pending is self.pending:
            # Drained: a session that queued once does not keep the deque (~0.75 KB) for ever.
            self.pending = None

    def _subscriptionIds(self, message: Message) -> list[int]:
        # Found when sent rather than carried from routing, so queues and stores keep
        # (message, qos, retain): those of the matching ordinary subscriptions, or of the one
        # shared subscription the delivery is for [MQTT-3.3.4-3, MQTT-3.3.4-5].
        share = message.viaShare
        if share is not None:
            options = self.subscriptions.get(share, 0)
            return [options >> 8] if options > 0xFF else _NO_IDS
        topic = message.topic
        return [
            options >> 8
            for topicFilter, options in self.subscriptions.items()
            if options > 0xFF
            and not topicFilter.startswith(SHARE_PREFIX)
            and filter_matches(topicFilter, topic)
        ]

    def _expired(self, message: Message, qos: int, retain: bool) -> None:
        # Never sent once its expiry interval has passed [MQTT-3.3.2-5].
        self.dropped += 1
        self._context.stats.drop(DROP_EXPIRED)
        if qos and self.journal is not None:
            # The store has no event for a queued message leaving unsent; sent then
            # acknowledged under an identifier not in use leaves it in that state.
            packetId = self._allocatePacketId()
            self.journal.messageSent(self.clientId, packetId, message, qos, retain, True)
            self.journal.messageAcknowledged(self.clientId, packetId)

    def withhold(self, denied: Callable[[Message], bool]) -> int:
        """
        Drop every in-flight and queued delivery whose message C{denied}
        says the client may no longer receive (its rights changed while it
        was away), before L{resume} re-sends them.  A QoS 2 delivery already
        answered with PUBREC stays: the client has the message.

        @return: how many were dropped, also counted as dropped messages.
        """
        dropped = 0
        journal = self.journal
        for packetId, out in list(self.inflight.items()):
            if out.state != WAIT_PUBCOMP and denied(out.message):
                del self.inflight[packetId]
                dropped += 1
                if journal is not None:
                    journal.messageAcknowledged(self.clientId, packetId)
        pending = self.pending
        if pending and any(denied(message) for message, _, _ in pending):
            # The store's queue changes only at its head, so it is emptied in order and the
            # deliveries kept are queued again, as they were.
            kept: deque[tuple[Message, int, bool]] = deque()
            for entry in pending:
                message, qos, retain = entry
                if qos and journal is not None:
                    packetId = self._allocatePacketId()
                    journal.messageSent(self.clientId, packetId, message, qos, retain, True)
                    journal.messageAcknowledged(self.clientId, packetId)
                if denied(message):
                    dropped += 1
                    continue
                kept.append(entry)
                if qos and journal is not None:
                    journal.messageQueued(self.clientId, message, qos, retain)
            self.pending = kept or None
        self.dropped += dropped
        self._context.stats.messagesDropped += dropped
        self._context.stats.dropped[DROP_RECEIVE_DENIED] += dropped
        return dropped

    def resume(self, conn: IClientConnection) -> None:
        """
        Attach a new connection (after its CONNACK was written) and re-send
        every unacknowledged PUBLISH with DUP=1 and PUBREL, with their original
        packet identifiers [MQTT-4.4.0-1], then the queue.
        """
        self.connection = conn
        self.mqtt5 = conn.protocolLevel == ProtocolLevel.MQTT_5
        # Aliases are the connection's, not the session's [MQTT-3.3.2-7].
        self.aliases = None
        # What the last connection still waited for is its no more.
        self.unsent = None
        durable = None
        if self.inflight and self.journal is not None:
            # A reconnection quicker than the commit of a send: re-sent once it is durable.
            durable = self.journal.flush(True)
        # A copy, taken now: what pump sends next is written by itself, and a re-send too
        # large for a 5.0 client leaves the window [MQTT-3.1.2-25].
        resent = list(self.inflight.items())
        if durable is None:
            self._resend(conn, resent)
        else:
            self.hold(durable, self._resend, conn, resent)
        self.pump()

    def _resend(self, conn: IClientConnection, resent: list[tuple[int, Outgoing]]) -> None:
        for packetId, out in resent:
            if self.inflight.get(packetId) is not out:
                continue
            if out.state == WAIT_PUBCOMP:
                conn.writeSequence((PUBREL_HEADER, packetId.to_bytes(2, "big")))
            else:
                self._writePublish(conn, out.message, out.qos, out.retain, True, packetId)

    def _settled(self, packetId: int) -> None:
        inflight = self.inflight
        del inflight[packetId]
        if not inflight:
            # An emptied dict keeps its table (~0.16 KB): every session that ever had a
            # delivery in flight kept one, and the dict, while idle.
            self.inflight = _EMPTY

    def pubackReceived(self, packetId: int) -> None:
        """
        The client acknowledged a QoS 1 delivery.

        @raise SessionError: C{packetId} names a QoS 2 delivery.
        """
        inflight = self.inflight
        out = inflight.get(packetId)
        if out is None:
            return
        if out.state != WAIT_PUBACK:
            raise SessionError(f"PUBACK for QoS 2 message {packetId}")
        # _settled's steps, written out on the per-delivery path.
        del inflight[packetId]
        if not inflight:
            self.inflight = _EMPTY
        if self.journal is not None:
            self.journal.messageAcknowledged(self.clientId, packetId)
        acknowledged = self._context.acknowledged
        if acknowledged is not None:
            acknowledged(self.clientId, out.message, out.qos)
        if self.pending:
            self.pump()

    def pubrecReceived(self, packetId: int) -> None:
        """
        The client received a QoS 2 delivery; the caller answers PUBREL
        with L{sendPubrel} once the change is as durable as the store
        promises [MQTT-4.3.3-1].

        @raise SessionError: C{packetId} names a QoS 1 delivery.
        """
        out = self.inflight.get(packetId)
        if out is not None and out.state != WAIT_PUBCOMP:
            if out.state == WAIT_PUBACK:
                raise SessionError(f"PUBREC for QoS 1 message {packetId}")
            out.state = WAIT_PUBCOMP
            if self.journal is not None:
                self.journal.messageReleased(self.clientId, packetId)

    def sendPubrel(self, packetId: int) -> None:
        """
        Answer PUBREC with PUBREL.  An unknown identifier is answered too, so
        a client that lost track after a reconnect can finish its flow.
        """
        if self.connection is not None:
            self.connection.writeSequence((PUBREL_HEADER, packetId.to_bytes(2, "big")))

    def pubrecRefused(self, packetId: int) -> None:
        """
        A 5.0 client answered a QoS 2 delivery with a PUBREC reason code of
        0x80 or more: the delivery ends there, with no PUBREL
        [MQTT-4.3.3-4], and the message is not offered again [MQTT-4.8.2-6].

        @raise SessionError: C{packetId} names a QoS 1 delivery.
        """
        out = self.inflight.get(packetId)
        if out is None or out.state == WAIT_PUBCOMP:
            return
        if out.state == WAIT_PUBACK:
            raise SessionError(f"PUBREC for QoS 1 message {packetId}")
        self._settled(packetId)
        if self.journal is not None:
            self.journal.messageAcknowledged(self.clientId, packetId)
        self.pump()

    def pubcompReceived(self, packetId: int) -> None:
        """
        The client completed a QoS 2 delivery.

        @raise SessionError: C{packetId} names a delivery still waiting for
            PUBACK or PUBREC.
        """
        out = self.inflight.get(packetId)
        if out is None:
            return
        if out.state != WAIT_PUBCOMP:
            raise SessionError(f"PUBCOMP before PUBREC for message {packetId}")
        self._settled(packetId)
        if self.journal is not None:
            self.journal.messageAcknowledged(self.clientId, packetId)
        acknowledged = self._context.acknowledged
        if acknowledged is not None:
            acknowledged(self.clientId, out.message, out.qos)
        self.pump()

    # Inbound: client -> broker

    def qos2Received(self, packetId: int, now: float) -> bool:
        """
        Record an inbound QoS 2 PUBLISH.

        @return: C{True} if the message is new and must be routed, C{False}
            if it is a resend of one not yet released, which must not be
            delivered onward again [MQTT-4.3.3-2].
        @raise SessionError: more than C{maxAwaitingRel} messages await
            PUBREL even after forgetting those older than C{awaitRelTimeout}.
        """
        awaiting = self.awaitingRel
        if awaiting is None:
            awaiting = self.awaitingRel = {}
        elif packetId in awaiting:
            return False
        journal = self.journal
        maxAwaitingRel = self._context.maxAwaitingRel
        if len(awaiting) >= maxAwaitingRel:
            cutoff = now - self._context.awaitRelTimeout
            for stale in [p for p, t in awaiting.items() if t < cutoff]:
                del awaiting[stale]
                if journal is not None:
                    journal.qos2Released(self.clientId, stale)
            if len(awaiting) >= maxAwaitingRel:
                # maxAwaitingRel is the Receive Maximum advertised to MQTT 5 clients.
                raise SessionError(
                    f"more than {maxAwaitingRel} QoS 2 messages await PUBREL",
                    ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                )
        awaiting[packetId] = now
        if journal is not None:
            journal.qos2Received(self.clientId, packetId, now)
        return True

    def pubrelReceived(self, packetId: int) -> None:
        """
        The client released an inbound QoS 2 message; its identifier may be
        reused for a new message from now on.
        """
        awaiting = self.awaitingRel
        if awaiting and awaiting.pop(packetId, None) is not None and self.journal is not None:
            self.journal.qos2Released(self.clientId, packetId)

    # Persistence

    def restore(self, state: SessionState) -> None:
        """Take over the state a store kept, into this fresh session."""
        self.subscriptions = dict(state.subscriptions) or _EMPTY
        self.identified = any(options > 0xFF for options in self.subscriptions.values())
        self.inflight = {
            packetId: Outgoing(message, qos, retain, st)
            for packetId, message, qos, retain, st in state.inflight
        } or _EMPTY
        self.pending = deque(state.pending) if state.pending else None
        self.queuedBytes = sum(len(message.payload) for message, _, _ in state.pending)
        self.awaitingRel = dict(state.awaitingRel) or None
        self._nextPacketId = state.nextPacketId
        self.owner = state.owner


_NO_IDS: list[int] = []
