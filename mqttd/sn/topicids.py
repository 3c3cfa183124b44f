"""
Topic ids: the numbers MQTT-SN uses instead of topic names on the air (section 6.5).

Each client has its own normal topic ids, registered by either side (REGISTER/REGACK, or given
in SUBACK); pre-defined ids are the same for every client and come from the listener's
configuration; short topic names need no id at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from .packets import TopicIdType, shortTopicName

# Normal topic ids one client may hold: a client registering endless names, or subscribed to
# "#" on a busy broker, must not grow the gateway's memory without bound.
TOPIC_IDS_PER_CLIENT = 1000
# 0x0000 and 0xFFFF are reserved (section 5.3.11).
_LAST_ID = 0xFFFE


class TopicIds:
    """One client's normal topic ids, both ways."""

    __slots__ = ("_byId", "_byName", "_next", "limit")

    def __init__(self, limit: int = TOPIC_IDS_PER_CLIENT) -> None:
        self.limit = limit
        self._byId: dict[int, str] = {}
        self._byName: dict[str, int] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._byId)

    def name(self, topicId: int) -> str | None:
        return self._byId.get(topicId)

    def known(self, name: str) -> int | None:
        """The id C{name} is registered under, or L{None}."""
        return self._byName.get(name)

    def register(self, name: str) -> int | None:
        """The id of C{name}, given one if it has none; L{None} once the client holds its limit."""
        topicId = self._byName.get(name)
        if topicId is not None:
            return topicId
        if len(self._byId) >= self.limit:
            return None
        topicId = self._next
        while topicId in self._byId:
            topicId = topicId % _LAST_ID + 1
        self._next = topicId % _LAST_ID + 1
        self._byId[topicId] = name
        self._byName[name] = topicId
        return topicId

    def forget(self, topicId: int) -> None:
        name = self._byId.pop(topicId, None)
        if name is not None:
            del self._byName[name]


class PredefinedTopics:
    """The listener's pre-defined topic ids, both ways."""

    __slots__ = ("_byId", "_byName")

    def __init__(self, pairs: Iterable[tuple[int, str]]) -> None:
        self._byId = dict(pairs)
        self._byName: dict[str, int] = {}
        for topicId, name in self._byId.items():
            self._byName.setdefault(name, topicId)

    def name(self, topicId: int) -> str | None:
        return self._byId.get(topicId)

    def known(self, name: str) -> int | None:
        return self._byName.get(name)


def topicName(
    kind: int, topicId: int, ids: TopicIds | None, predefined: PredefinedTopics
) -> str | None:
    """
    The topic name a PUBLISH's topic fields stand for, or L{None} when they name nothing this
    client may use (an id never registered, a reserved type, a short name that is not text).
    """
    if kind == TopicIdType.NORMAL:
        return ids.name(topicId) if ids is not None else None
    if kind == TopicIdType.PREDEFINED:
        return predefined.name(topicId)
    if kind == TopicIdType.SHORT:
        try:
            return shortTopicName(topicId)
        except UnicodeDecodeError:
            return None
    return None
