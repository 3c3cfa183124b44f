"""
The in-memory L{IMessageStore}: state survives disconnects and a broker
rebuilt on the same store object, not a process restart.
"""

from __future__ import annotations

from zope.interface import implementer

from .interfaces import IMessageStore
from .message import Message
from .session import SessionState


@implementer(IMessageStore)
class MemoryStore:
    """
    Keeps retained messages and persistent session state in dicts.

    It is the default when no durable store is configured, and the reference
    behaviour a durable store must match.
    """

    def __init__(self) -> None:
        self.retained: dict[str, Message] = {}
        self.sessions: dict[str, SessionState] = {}

    def restore(self) -> tuple[list[Message], list[SessionState]]:
        return list(self.retained.values()), list(self.sessions.values())

    def retainedSet(self, message: Message) -> None:
        self.retained[message.topic] = message

    def retainedDeleted(self, topic: str) -> None:
        self.retained.pop(topic, None)

    def sessionSaved(self, state: SessionState) -> None:
        self.sessions[state.clientId] = state

    def sessionDeleted(self, clientId: str) -> None:
        self.sessions.pop(clientId, None)
