"""
An application message as the broker routes it.
"""

from __future__ import annotations

from .codec.encoder import publish_prefix


class Message:
    """
    One published message, shared by every session it is delivered to.

    The wire prefix (fixed header and topic) depends only on the delivered
    QoS band, RETAIN and DUP, so it is encoded once per distinct form and the
    same bytes object (like the payload) is written to every subscriber.

    @ivar storeId: the identifier the process's durable store wrote this
        message under, or L{None} until one does: a message queued for many
        persistent sessions is written once and referenced by each.
    """

    __slots__ = ("_prefixes", "_topicBytes", "payload", "qos", "retain", "storeId", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.storeId: int | None = None
        self._topicBytes: bytes | None = None
        self._prefixes: dict[int, bytes] = {}

    def wirePrefix(self, qos: int, retain: bool, dup: bool) -> bytes:
        """
        The encoded PUBLISH up to (not including) the packet identifier.

        @param qos: the QoS this delivery uses; only 0 versus non-zero and the
            value itself change the prefix.
        """
        key = qos | (retain << 2) | (dup << 3)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if self._topicBytes is None:
                self._topicBytes = self.topic.encode("utf-8")
            prefix = publish_prefix(self._topicBytes, len(self.payload), qos, retain, dup)
            self._prefixes[key] = prefix
        return prefix

    def __repr__(self) -> str:
        return (
            f"<Message topic={self.topic!r} qos={self.qos} retain={self.retain} "
            f"payload={len(self.payload)} bytes>"
        )
