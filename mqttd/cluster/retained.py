"""
Retained messages, cluster-wide (L{IRetainedStore}): every node answers from its own copy, as
the seam's synchronous methods require, and writes each change through to Redis's
C{mqttd:retained} hash, announcing it so the other nodes update their copies.

The node's own C{$SYS/broker/...} tree is the one thing kept local: each node has its own
figures there, as mosquitto's; C{$SYS/brokers/{node}/...} is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from zope.interface import implementer

from mqttd.interfaces import IRetainedStore
from mqttd.message import Message
from mqttd.retain import RetainedMessages

LOCAL_PREFIX = "$SYS/broker/"

Writer = Callable[[str, "Message | None"], None]


@implementer(IRetainedStore)
class ClusterRetained(RetainedMessages[Message]):
    """
    The in-process trie (L{RetainedMessages}) as this node's copy, writing through.

    @ivar writer: called with each local change (a message, or L{None} for a deletion) once
        the cluster service runs; before, changes (the store's restore) stay local and the
        service's first read of Redis replaces them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._shared: set[str] = set()
        self.writer: Writer | None = None

    def set(self, topic: str, message: Message) -> None:
        super().set(topic, message)
        if not topic.startswith(LOCAL_PREFIX):
            self._shared.add(topic)
            if self.writer is not None:
                self.writer(topic, message)

    def delete(self, topic: str) -> bool:
        existed = super().delete(topic)
        if not topic.startswith(LOCAL_PREFIX):
            self._shared.discard(topic)
            if self.writer is not None:
                self.writer(topic, None)
        return existed

    def apply(self, topic: str, message: Message | None) -> None:
        """Another node changed C{topic}: update this copy only."""
        if message is None:
            super().delete(topic)
            self._shared.discard(topic)
        else:
            super().set(topic, message)
            self._shared.add(topic)

    def load(self, messages: Mapping[str, Message]) -> None:
        """Redis holds exactly C{messages}: make this copy the same."""
        for topic in self._shared - set(messages):
            self.apply(topic, None)
        for topic, message in messages.items():
            self.apply(topic, message)
