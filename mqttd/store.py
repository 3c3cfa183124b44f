"""
The in-memory L{IMessageStore}: state survives disconnects and a broker
rebuilt on the same store object, not a process restart.

It is also the model the file store replays its log into, so the journal's
meaning is written down once, here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from zope.interface import implementer

from .codec.packets import Will
from .interfaces import IMessageStore
from .message import Message
from .session import WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, SessionState


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
    """One persistent session as a store sees it."""

    __slots__ = ("awaitingRel", "inflight", "queue", "subscriptions")

    def __init__(self, subscriptions: Mapping[str, int]) -> None:
        self.subscriptions = dict(subscriptions)
        self.queue: deque[tuple[Message, int, bool]] = deque()
        # In send order, which is the order of re-sending on resume.
        self.inflight: dict[int, list[object]] = {}
        self.awaitingRel: dict[int, float] = {}

    def state(self, clientId: str) -> SessionState:
        inflight = [
            (packetId, out[0], out[1], out[2], out[3]) for packetId, out in self.inflight.items()
        ]
        # Carry on after the newest identifier sent, as the live session would have.
        nextPacketId = next(reversed(self.inflight)) % 65535 + 1 if self.inflight else 1
        return SessionState(
            clientId=clientId,
            subscriptions=dict(self.subscriptions),
            inflight=inflight,  # type: ignore[arg-type]
            pending=list(self.queue),
            awaitingRel=dict(self.awaitingRel),
            nextPacketId=nextPacketId,
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

    def flush(self) -> None:
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
            session.queue.popleft()
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
