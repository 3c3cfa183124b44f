"""
Topic names, topic filters and the subscription trie (MQTT 3.1.1 section 4.7).

Pure Python with no Twisted import: the broker core calls L{SubscriptionTree.match}
once per PUBLISH, so matching splits the topic once and walks the trie
iteratively.  Nothing here recurses, so a topic or filter of thousands of
levels (bad-inputs entry 21) cannot hit the interpreter's recursion limit; the
level cap in the validators is what bounds the work per message.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_LEVELS",
    "InvalidTopic",
    "SubscriptionTree",
    "validate_topic_filter",
    "validate_topic_name",
]

DEFAULT_MAX_LEVELS = 128

# Bounds on the match cache.  The entry count alone is not enough: with many
# subscribers on '#' every cached result holds all of them, so a publisher
# cycling through distinct topics could pin entries x subscribers dict slots.
# Capping the total number of cached subscriber slots keeps memory bounded
# whatever the subscription pattern.
_CACHE_MAX_ENTRIES = 4096
_CACHE_MAX_SLOTS = 1 << 18
# A topic may be up to 65535 bytes; caching thousands of those would pin
# hundreds of megabytes of keys, and such topics are not the hot ones.
_CACHE_MAX_TOPIC_LENGTH = 512


class InvalidTopic(ValueError):
    """
    A topic name or topic filter breaks the rules of section 4.7.

    @ivar spec: the normative statement violated, e.g. C{"MQTT-4.7.1-2"}, or
        C{None} when the limit is the broker's own (the level cap).
    """

    def __init__(self, message: str, spec: str | None) -> None:
        super().__init__(message)
        self.spec = spec


def _check_levels(topic: str, max_levels: int) -> None:
    # count() avoids building the level list just to measure it.
    if topic.count("/") >= max_levels:
        raise InvalidTopic(f"more than {max_levels} topic levels", None)


def validate_topic_name(name: str, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
    """
    Check a topic name taken from a PUBLISH packet.

    @param name: the topic name.
    @param max_levels: the most C{/}-separated levels allowed (the broker's
        C{max_topic_levels}); an empty level still counts.
    @raise InvalidTopic: if C{name} is empty [MQTT-4.7.3-1], contains a
        wildcard [MQTT-3.3.2-2], or has more than C{max_levels} levels.
    """
    if not name:
        raise InvalidTopic("empty topic name", "MQTT-4.7.3-1")
    if "+" in name or "#" in name:
        raise InvalidTopic(f"wildcard in topic name {name[:64]!r}", "MQTT-3.3.2-2")
    _check_levels(name, max_levels)


def validate_topic_filter(topic_filter: str, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
    """
    Check a topic filter taken from a SUBSCRIBE or UNSUBSCRIBE packet.

    @param topic_filter: the topic filter.
    @param max_levels: the most C{/}-separated levels allowed.
    @raise InvalidTopic: if C{topic_filter} is empty [MQTT-4.7.3-1], has a
        C{#} that is not the whole last level [MQTT-4.7.1-2], a C{+} that is
        not a whole level [MQTT-4.7.1-3], or more than C{max_levels} levels.
    """
    if not topic_filter:
        raise InvalidTopic("empty topic filter", "MQTT-4.7.3-1")
    _check_levels(topic_filter, max_levels)
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level:
            if level != "#" or index != last:
                raise InvalidTopic(
                    f"'#' not the whole last level of {topic_filter[:64]!r}",
                    "MQTT-4.7.1-2",
                )
        elif "+" in level and level != "+":
            raise InvalidTopic(f"'+' not a whole level of {topic_filter[:64]!r}", "MQTT-4.7.1-3")


class _Node:
    """
    One level of the subscription trie.

    @ivar children: the next level, keyed by level text; the wildcards C{+}
        and C{#} are ordinary keys here.
    @ivar subscribers: the maximum QoS of each subscriber whose filter ends
        at this node.
    """

    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, int] = {}


def _merge(result: dict[str, int], subscribers: dict[str, int]) -> None:
    # One delivery per client at the highest QoS granted by any matching
    # filter [MQTT-3.3.5-1].
    if not result:
        result.update(subscribers)
        return
    get = result.get
    for subscriber, qos in subscribers.items():
        if get(subscriber, -1) < qos:
            result[subscriber] = qos


class SubscriptionTree:
    """
    Every (topic filter, subscriber) pair of the broker, in a trie of levels.

    Filters must already have passed L{validate_topic_filter} and topics
    L{validate_topic_name}; the tree does not check them again.
    """

    __slots__ = ("_cache", "_cache_slots", "_count", "_root")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0
        self._cache: dict[str, dict[str, int]] = {}
        self._cache_slots = 0

    def __len__(self) -> int:
        """
        @return: the number of (topic filter, subscriber) pairs.
        """
        return self._count

    def _invalidate(self) -> None:
        if self._cache:
            self._cache.clear()
            self._cache_slots = 0

    def subscribe(self, topic_filter: str, subscriber: str, qos: int) -> bool:
        """
        Add or replace the subscription of C{subscriber} to C{topic_filter}.

        @param topic_filter: a valid topic filter.
        @param subscriber: the subscriber's identity (the client id).
        @param qos: the granted maximum QoS.
        @return: C{True} if the subscription is new, C{False} if it already
            existed and now has QoS C{qos} [MQTT-3.8.4-3].
        """
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        previous = node.subscribers.get(subscriber)
        if previous == qos:
            return False
        node.subscribers[subscriber] = qos
        self._invalidate()
        if previous is None:
            self._count += 1
            return True
        return False

    def unsubscribe(self, topic_filter: str, subscriber: str) -> bool:
        """
        Remove the subscription of C{subscriber} to C{topic_filter}.

        Nodes left with neither subscribers nor children are removed, so
        memory follows the live subscriptions however much clients churn.

        @return: C{True} if the subscription existed.
        """
        node = self._root
        path: list[tuple[_Node, str]] = []
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(subscriber, None) is None:
            return False
        self._count -= 1
        self._invalidate()
        while path and not node.subscribers and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def match(self, topic: str) -> dict[str, int]:
        """
        Find who receives a message published to C{topic}.

        Results are cached until the next change to the tree, so the
        returned dict may be shared with later callers: treat it as
        read-only.

        @param topic: a valid topic name.
        @return: each matching subscriber mapped to the maximum QoS of all
            its matching filters [MQTT-3.3.5-1].
        """
        cache = self._cache
        cached = cache.get(topic)
        if cached is not None:
            return cached

        result: dict[str, int] = {}
        levels = topic.split("/")
        children = self._root.children
        frontier: list[_Node] = []
        # Filters starting with a wildcard never see '$' topics
        # [MQTT-4.7.2-1], so the root's wildcard children are skipped.
        if not topic.startswith("$"):
            node = children.get("#")
            if node is not None:
                _merge(result, node.subscribers)
            node = children.get("+")
            if node is not None:
                frontier.append(node)
        node = children.get(levels[0])
        if node is not None:
            frontier.append(node)

        # Each frontier node is reached by a distinct path of the trie, so
        # the frontier never holds more nodes than the trie has at one depth.
        for index in range(1, len(levels)):
            if not frontier:
                break
            level = levels[index]
            following: list[_Node] = []
            for parent in frontier:
                children = parent.children
                if not children:
                    continue
                node = children.get("#")
                if node is not None:
                    _merge(result, node.subscribers)
                node = children.get("+")
                if node is not None:
                    following.append(node)
                node = children.get(level)
                if node is not None:
                    following.append(node)
            frontier = following

        for node in frontier:
            if node.subscribers:
                _merge(result, node.subscribers)
            # 'a/#' also matches 'a' itself [MQTT-4.7.1-2].
            parent_match = node.children.get("#")
            if parent_match is not None:
                _merge(result, parent_match.subscribers)

        if len(topic) <= _CACHE_MAX_TOPIC_LENGTH:
            slots = len(result) + 1
            if len(cache) >= _CACHE_MAX_ENTRIES or self._cache_slots + slots > _CACHE_MAX_SLOTS:
                cache.clear()
                self._cache_slots = 0
            cache[topic] = result
            self._cache_slots += slots
        return result
