"""
The in-memory L{IMessageStore}: state survives disconnects and a broker
rebuilt on the same store object, not a process restart.

It is also the model the file store replays its log into, so the journal's
meaning is written down once, here.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from .codec.packets import Will
from .codec.properties import NO_PROPERTIES, Properties
from .interfaces import IMessageStore
from .message import Message, PropertiedMessage
from .session import (
    SESSION_NEVER_EXPIRES,
    WAIT_PUBACK,
    WAIT_PUBCOMP,
    WAIT_PUBREC,
    SessionState,
)


class StoreError(Exception):
    """
    A durable store's file cannot be used (corrupt, of an unknown schema
    version, unreadable); start-up stops with this one line.

    @ivar file: the store's path.
    @ivar why: what is wrong, for a human.
    """

    def __init__(self, file: str, why: str) -> None:
        super().__init__(file, why)
        self.file = file
        self.why = why

    def __str__(self) -> str:
        return f"{self.file}: {self.why}"


# What a durable store keeps of a message's or a will's MQTT 5 properties: those a message
# forwards, and the will's own; the rest only concerned the packet that carried them.
_KEPT_PROPERTIES = (
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_properties",
    "will_delay_interval",
)


def dumpProperties(properties: Properties) -> str | None:
    """
    C{properties} as the JSON text a durable store keeps, or L{None} if
    there is nothing to keep (every 3.1.1 message), so that those cost nothing.
    """
    if properties is NO_PROPERTIES:
        return None
    kept: dict[str, Any] = {}
    for name in _KEPT_PROPERTIES:
        value = getattr(properties, name)
        if value is None or value == ():
            continue
        kept[name] = value.hex() if isinstance(value, bytes) else value
    return json.dumps(kept, separators=(",", ":")) if kept else None


def loadProperties(text: str | None) -> Properties:
    """The L{Properties} L{dumpProperties} wrote as C{text}."""
    if text is None:
        return NO_PROPERTIES
    kept = json.loads(text)
    if "correlation_data" in kept:
        kept["correlation_data"] = bytes.fromhex(kept["correlation_data"])
    if "user_properties" in kept:
        kept["user_properties"] = tuple((name, value) for name, value in kept["user_properties"])
    return Properties(**kept)


def storedMessage(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    properties: str | None,
    expiresAt: float | None,
) -> Message:
    """
    A message as a durable store restores it.

    @param properties: what L{dumpProperties} made of its properties.
    @param expiresAt: its L{Message.expiresAt}: kept as a deadline on the
        broker's clock (the wall clock outside tests), so that the time it
        has left is right after a restart [MQTT-3.3.2-5, MQTT-3.3.2-6].
    """
    if properties is None and expiresAt is None:
        return Message(topic, payload, qos, retain)
    message = PropertiedMessage(topic, payload, qos, retain, loadProperties(properties), 0.0)
    message.expiresAt = expiresAt
    return message


@dataclass
class StoredState:
    """
    What L{IMessageStore.restore} gives back.

    @ivar wills: the will of every connection that was open when the broker
        stopped, by client identifier.
    """

    retained: list[Message] = field(default_factory=list)
    sessions: list[SessionState] = field(default_factory=list)
    wills: dict[str, Will] = field(default_factory=dict)


class StoredSession:
    """
    One persistent session as a store sees it.

    Its queue, in-flight and awaiting-PUBREL tables are made on first use: the broker's own
    store (no C{[store]} configured) is told of sessions but never of their deliveries, and
    an empty deque is ~0.7 KB, which every persistent session paid (S7: a fifth of a user).
    """

    __slots__ = (
        "_awaitingRel",
        "_inflight",
        "_queue",
        "expiresAt",
        "expiryInterval",
        "owner",
        "subscriptions",
    )

    def __init__(self, subscriptions: Mapping[str, int]) -> None:
        self.subscriptions = dict(subscriptions)
        self.owner: str | None = None
        self.expiryInterval = SESSION_NEVER_EXPIRES
        self.expiresAt: float | None = None
        self._queue: deque[tuple[Message, int, bool]] | None = None
        self._inflight: dict[int, list[object]] | None = None
        self._awaitingRel: dict[int, float] | None = None

    @property
    def queue(self) -> deque[tuple[Message, int, bool]]:
        """Deliveries waiting to be sent, oldest first."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    @property
    def inflight(self) -> dict[int, list[object]]:
        """Deliveries sent and not yet acknowledged, in send order, which is that of re-sending
        on resume."""
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = {}
        return inflight

    @property
    def awaitingRel(self) -> dict[int, float]:
        """Inbound QoS 2 packet identifiers awaiting PUBREL, with when each came."""
        awaiting = self._awaitingRel
        if awaiting is None:
            awaiting = self._awaitingRel = {}
        return awaiting

    def state(self, clientId: str) -> SessionState:
        sent = self._inflight or {}
        inflight = [(packetId, out[0], out[1], out[2], out[3]) for packetId, out in sent.items()]
        # Carry on after the newest identifier sent, as the live session would have.
        nextPacketId = next(reversed(sent)) % 65535 + 1 if sent else 1
        return SessionState(
            clientId=clientId,
            subscriptions=dict(self.subscriptions),
            inflight=inflight,  # type: ignore[arg-type]
            pending=list(self._queue or ()),
            awaitingRel=dict(self._awaitingRel or {}),
            nextPacketId=nextPacketId,
            expiryInterval=self.expiryInterval,
            expiresAt=self.expiresAt,
            owner=self.owner,
        )


@implementer(IMessageStore)
class MemoryStore:
    """
    Keeps the journal's outcome in dicts.

    It is the default when no durable store is configured, and the reference
    behaviour a durable store must match.
    """

    def __init__(self) -> None:
        self.retained: dict[str, Message] = {}
        self.sessions: dict[str, StoredSession] = {}
        self.wills: dict[str, Will] = {}

    def restore(self) -> StoredState:
        return StoredState(
            retained=list(self.retained.values()),
            sessions=[s.state(clientId) for clientId, s in self.sessions.items()],
            wills=dict(self.wills),
        )

    def flush(self, exactlyOnce: bool = False) -> None:
        return None

    def close(self) -> None:
        return None

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        session = self.sessions.get(clientId)
        if session is None:
            self.sessions[clientId] = StoredSession(subscriptions)
        else:
            session.subscriptions = dict(subscriptions)

    def sessionDeleted(self, clientId: str) -> None:
        self.sessions.pop(clientId, None)

    def sessionOwned(self, clientId: str, owner: str) -> None:
        self.sessions[clientId].owner = owner

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        session = self.sessions[clientId]
        session.expiryInterval = interval
        session.expiresAt = expiresAt

    def messageQueued(self, clientId: str, message: Message, qos: int, retain: bool) -> None:
        self.sessions[clientId].queue.append((message, qos, retain))

    def messageSent(
        self,
        clientId: str,
        packetId: int,
        message: Message,
        qos: int,
        retain: bool,
        queued: bool,
    ) -> None:
        session = self.sessions[clientId]
        if queued:
            queue = session.queue
            queue.popleft()
            if not queue:
                # Drained: a session that queued once does not keep the deque's block for ever.
                session._queue = None
        session.inflight[packetId] = [
            message,
            qos,
            retain,
            WAIT_PUBACK if qos == 1 else WAIT_PUBREC,
        ]

    def messageReleased(self, clientId: str, packetId: int) -> None:
        self.sessions[clientId].inflight[packetId][3] = WAIT_PUBCOMP

    def messageAcknowledged(self, clientId: str, packetId: int) -> None:
        self.sessions[clientId].inflight.pop(packetId, None)

    def qos2Received(self, clientId: str, packetId: int, when: float) -> None:
        self.sessions[clientId].awaitingRel[packetId] = when

    def qos2Released(self, clientId: str, packetId: int) -> None:
        self.sessions[clientId].awaitingRel.pop(packetId, None)

    def willSet(self, clientId: str, will: Will) -> None:
        self.wills[clientId] = will

    def willCleared(self, clientId: str) -> None:
        self.wills.pop(clientId, None)

    def retainedSet(self, message: Message) -> None:
        self.retained[message.topic] = message

    def retainedDeleted(self, topic: str) -> None:
        self.retained.pop(topic, None)


class SessionlessStore(MemoryStore):
    """
    The broker's own store when no C{[store]} is configured: it keeps retained messages and
    wills as L{MemoryStore} does, and no record of persistent sessions.  Nothing could read
    one back (sessions end with the process, and they journal nothing to it: see
    L{mqttd.broker.Broker.journal}), while each cost ~0.2 KB beside the session itself.
    """

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        return None

    def sessionDeleted(self, clientId: str) -> None:
        return None

    def sessionOwned(self, clientId: str, owner: str) -> None:
        return None

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        return None
