"""
Retained messages, stored in a trie of topic levels.

Pure Python with no Twisted import; the in-process L{IRetainedStore}.  A
new subscription asks for every retained message its filter matches; the
trie lets a filter such as C{sensors/+/temp} visit only the branches it can
match instead of testing every retained topic.  All walks are iterative, so topics of thousands of
levels (bad-inputs entry 21) cannot hit the interpreter's recursion limit.
"""

from __future__ import annotations

import enum
from typing import Generic, Literal, TypeVar

from zope.interface import implementer

from .interfaces import IRetainedStore

__all__ = ["RetainedMessages"]

M = TypeVar("M")


class _Absent(enum.Enum):
    # A sentinel rather than None, so that None stays a storable message.
    ABSENT = enum.auto()


_ABSENT = _Absent.ABSENT


class _Node(Generic[M]):
    """
    One level of the retained-message trie.

    @ivar children: the next level, keyed by level text.
    @ivar message: the message retained for the topic ending here, or
        C{_ABSENT}.
    """

    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node[M]] = {}
        self.message: M | Literal[_Absent.ABSENT] = _ABSENT


@implementer(IRetainedStore)
class RetainedMessages(Generic[M]):
    """
    At most one retained message per topic name.

    This class only stores: what a zero-length payload means
    [MQTT-3.3.1-10] is the broker's decision, which calls L{delete}.
    Topics must already have passed
    L{mqttd.topics.validate_topic_name} and filters
    L{mqttd.topics.validate_topic_filter}.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[M] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """
        @return: the number of retained messages.
        """
        return self._count

    def set(self, topic: str, message: M) -> None:
        """
        Retain C{message} for C{topic}, replacing any message retained there.
        """
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.message is _ABSENT:
            self._count += 1
        node.message = message

    def get(self, topic: str) -> M | None:
        """
        @return: the message retained for exactly C{topic}, or C{None}.
        """
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        message = node.message
        return None if message is _ABSENT else message

    def delete(self, topic: str) -> bool:
        """
        Forget the message retained for C{topic}.

        Nodes left with neither a message nor children are removed, so
        memory follows the live retained messages.

        @return: C{True} if a message was retained for C{topic}.
        """
        node = self._root
        path: list[tuple[_Node[M], str]] = []
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.message is _ABSENT:
            return False
        node.message = _ABSENT
        self._count -= 1
        while path and node.message is _ABSENT and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def matching(self, topic_filter: str) -> list[M]:
        """
        Find the retained messages a new subscription to C{topic_filter}
        receives.

        A filter starting with C{+} or C{#} never returns topics starting
        with C{$} [MQTT-4.7.2-1], and C{a/#} returns the message of C{a}
        too [MQTT-4.7.1-2].

        @param topic_filter: a valid topic filter.
        @return: the matching messages, in no particular order.
        """
        levels = topic_filter.split("/")
        depth_of_last = len(levels)
        found: list[M] = []
        # Pending (node, number of filter levels already matched) pairs.
        pending: list[tuple[_Node[M], int]] = [(self._root, 0)]
        subtrees: list[_Node[M]] = []
        while pending:
            node, depth = pending.pop()
            if depth == depth_of_last:
                if node.message is not _ABSENT:
                    found.append(node.message)
                continue
            level = levels[depth]
            if level == "#":
                if depth == 0:
                    subtrees.extend(
                        child for name, child in node.children.items() if not name.startswith("$")
                    )
                else:
                    subtrees.append(node)
            elif level == "+":
                for name, child in node.children.items():
                    if depth == 0 and name.startswith("$"):
                        continue
                    pending.append((child, depth + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    pending.append((exact, depth + 1))

        while subtrees:
            node = subtrees.pop()
            if node.message is not _ABSENT:
                found.append(node.message)
            subtrees.extend(node.children.values())
        return found
