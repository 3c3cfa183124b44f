"""
Topic names, topic filters and the subscription trie (MQTT 3.1.1 section 4.7),
and shared subscriptions (MQTT 5.0 section 4.8.2).

Pure Python with no Twisted import: the broker core calls L{SubscriptionTree.match}
once per PUBLISH, so matching splits the topic once and walks the trie
iteratively.  Nothing here recurses, so a topic or filter of thousands of
levels (bad-inputs entry 21) cannot hit the interpreter's recursion limit; the
level cap in the validators is what bounds the work per message.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_LEVELS",
    "SHARE_PREFIX",
    "InvalidTopic",
    "SharedGroup",
    "SharedSubscriptions",
    "SubscriptionTree",
    "filter_matches",
    "split_shared_filter",
    "topic_level",
    "validate_topic_filter",
    "validate_topic_name",
]

SHARE_PREFIX = "$share/"

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
# The cached result of every topic nobody subscribes to (read-only, as every cached result):
# with virtual groups most published topics have no subscriber, and a dict of its own was 64
# bytes of each of the cache's entries.
_NO_SUBSCRIBERS: dict[str, int] = {}


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
    Check a topic name taken from a PUBLISH packet, or one the broker is to
    publish on (a template's result, a control reply's topic).

    @param name: the topic name.
    @param max_levels: the most C{/}-separated levels allowed (the broker's
        C{max_topic_levels}); an empty level still counts.
    @raise InvalidTopic: if C{name} is empty [MQTT-4.7.3-1], contains a
        wildcard [MQTT-3.3.2-2] or U+0000 [MQTT-1.5.4-2], is not UTF-8
        [MQTT-1.5.4-1] or longer than such a string can be (65535 bytes), or
        has more than C{max_levels} levels.
    """
    if not name:
        raise InvalidTopic("empty topic name", "MQTT-4.7.3-1")
    if "+" in name or "#" in name:
        raise InvalidTopic(f"wildcard in topic name {name[:64]!r}", "MQTT-3.3.2-2")
    if "\0" in name:
        raise InvalidTopic(f"U+0000 in topic name {name[:64]!r}", "MQTT-1.5.4-2")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidTopic(f"a surrogate in topic name {name[:64]!r}", "MQTT-1.5.4-1") from None
    if size > 0xFFFF:
        raise InvalidTopic("topic name longer than 65535 bytes", None)
    _check_levels(name, max_levels)


def topic_level(text: str) -> str:
    """
    C{text} (a client id) as one topic level: C{%}, C{/}, C{+}, C{#} and U+0000
    percent-encoded, so that it neither adds levels nor makes a topic name
    invalid, and two client ids never give the same level.
    """
    if not any(c in text for c in "%/+#\0"):
        return text
    return (
        text.replace("%", "%25")
        .replace("/", "%2F")
        .replace("+", "%2B")
        .replace("#", "%23")
        .replace("\0", "%00")
    )


def validate_topic_filter(topic_filter: str, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
    """
    Check a topic filter taken from a SUBSCRIBE or UNSUBSCRIBE packet.

    @param topic_filter: the topic filter.
    @param max_levels: the most C{/}-separated levels allowed.
    @raise InvalidTopic: if C{topic_filter} is empty [MQTT-4.7.3-1], has a
        C{#} that is not the whole last level [MQTT-4.7.1-2], a C{+} that is
        not a whole level [MQTT-4.7.1-3], or more than C{max_levels} levels;
        for a shared subscription C{$share/{ShareName}/{filter}}, if the share
        name is empty [MQTT-4.8.2-1], holds C{/}, C{+} or C{#}, or is not
        followed by C{/} and a valid filter [MQTT-4.8.2-2].
    """
    if not topic_filter:
        raise InvalidTopic("empty topic filter", "MQTT-4.7.3-1")
    _check_levels(topic_filter, max_levels)
    if topic_filter.startswith(SHARE_PREFIX):
        topic_filter = split_shared_filter(topic_filter)[1]
        if not topic_filter:
            raise InvalidTopic("empty topic filter after the share name", "MQTT-4.8.2-2")
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


def split_shared_filter(topic_filter: str) -> tuple[str, str]:
    """
    Split a shared subscription's topic filter (one starting with
    L{SHARE_PREFIX}) into its share name and the filter it applies to.

    @raise InvalidTopic: the share name is empty [MQTT-4.8.2-1], has a
        wildcard or is not followed by C{/} [MQTT-4.8.2-2]; the filter after
        it is returned unchecked.
    """
    share, separator, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not share:
        raise InvalidTopic(f"empty share name in {topic_filter[:64]!r}", "MQTT-4.8.2-1")
    if "+" in share or "#" in share or not separator:
        raise InvalidTopic(f"invalid share name in {topic_filter[:64]!r}", "MQTT-4.8.2-2")
    return share, inner


class _Node:
    """
    One level of the subscription trie.

    @ivar children: the next level, keyed by level text; the wildcards C{+}
        and C{#} are ordinary keys here.
    @ivar subscribers: the maximum QoS (with any MQTT 5 options above it) of
        each subscriber whose filter ends at this node.
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

    __slots__ = ("_cache", "_cache_slots", "_count", "_root", "optioned")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0
        # How many subscriptions carry more than a QoS (see subscribe), so that the broker
        # checks for them once per message, not once per delivery, and only when there are any.
        self.optioned = 0
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
        @param qos: the granted maximum QoS, in the low two bits of the
            subscription's options; a value of 4 or more (MQTT 5 options
            beyond the QoS) counts in L{optioned}, and since it is larger than
            any bare QoS, a subscriber matched by such a subscription is
            matched with a value of 4 or more.
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
        self.optioned += (qos > 3) - (previous is not None and previous > 3)
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
        previous = node.subscribers.pop(subscriber, None)
        if previous is None:
            return False
        self.optioned -= previous > 3
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
            if not result:
                result = _NO_SUBSCRIBERS
            slots = len(result) + 1
            if len(cache) >= _CACHE_MAX_ENTRIES or self._cache_slots + slots > _CACHE_MAX_SLOTS:
                cache.clear()
                self._cache_slots = 0
            cache[topic] = result
            self._cache_slots += slots
        return result


def filter_matches(topic_filter: str, topic: str) -> bool:
    """
    Whether the valid topic filter C{topic_filter} matches the valid topic
    name C{topic} (section 4.7), for the rare checks of one filter;
    L{SubscriptionTree.match} is the way to match many.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    levels = topic.split("/")
    filters = topic_filter.split("/")
    for index, level in enumerate(filters):
        if level == "#":
            return True
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(filters) == len(levels)


class SharedGroup:
    """
    The members of one shared subscription (one share name with one topic
    filter): each message matching the filter goes to one member only.

    @ivar topicFilter: the whole C{$share/{ShareName}/{filter}} filter.
    @ivar members: each member's subscription options (an C{int} whose low
        bits are the granted QoS) by subscriber, in the order they joined.
    """

    __slots__ = ("_cursor", "_order", "members", "topicFilter")

    def __init__(self, topicFilter: str) -> None:
        self.topicFilter = topicFilter
        self.members: dict[str, int] = {}
        # The members as a list too, so taking turns is an index, not a walk of the dict.
        self._order: list[str] = []
        self._cursor = 0

    def add(self, subscriber: str, options: int) -> bool:
        """
        Add C{subscriber}, or change its options keeping its turn.

        @return: C{True} if it was not a member.
        """
        new = subscriber not in self.members
        self.members[subscriber] = options
        if new:
            self._order.append(subscriber)
        return new

    def remove(self, subscriber: str) -> bool:
        """
        @return: C{True} if C{subscriber} was a member.
        """
        if self.members.pop(subscriber, None) is None:
            return False
        order = self._order
        index = order.index(subscriber)
        del order[index]
        # The member after the removed one keeps the turn it had.
        if index < self._cursor:
            self._cursor -= 1
        if self._cursor >= len(order):
            self._cursor = 0
        return True

    def pick(self, online: Callable[[str], bool]) -> str:
        """
        The member whose turn it is: the next one, in joining order, for which
        C{online} is true; when none is, simply the next one, so messages
        wait in turn in the offline members' queues.  The group must have
        members.
        """
        order = self._order
        count = len(order)
        start = self._cursor
        for step in range(count):
            index = (start + step) % count
            subscriber = order[index]
            if online(subscriber):
                self._cursor = (index + 1) % count
                return subscriber
        self._cursor = (start + 1) % count
        return order[start]


class SharedSubscriptions:
    """
    Every shared subscription of the broker, apart from the
    L{SubscriptionTree} of ordinary ones so that a broker without shared
    subscriptions pays nothing for them on each message.

    @ivar groups: each shared subscription by its whole C{$share/} filter.
    """

    __slots__ = ("_tree", "groups")

    def __init__(self) -> None:
        # Keyed by whole $share/ filter, so each group appears once per match.
        self._tree = SubscriptionTree()
        self.groups: dict[str, SharedGroup] = {}

    def __len__(self) -> int:
        """
        @return: the number of (shared subscription, member) pairs.
        """
        return sum(len(group.members) for group in self.groups.values())

    def subscribe(self, topicFilter: str, subscriber: str, options: int) -> bool:
        """
        Make C{subscriber} a member of the shared subscription C{topicFilter}
        (valid, starting with L{SHARE_PREFIX}), or change its options.

        @return: C{True} if it was not a member.
        """
        group = self.groups.get(topicFilter)
        if group is None:
            group = self.groups[topicFilter] = SharedGroup(topicFilter)
            self._tree.subscribe(split_shared_filter(topicFilter)[1], topicFilter, 0)
        return group.add(subscriber, options)

    def unsubscribe(self, topicFilter: str, subscriber: str) -> bool:
        """
        Take C{subscriber} out of the shared subscription C{topicFilter}; the
        last member to leave ends it.

        @return: C{True} if C{subscriber} was a member.
        """
        group = self.groups.get(topicFilter)
        if group is None or not group.remove(subscriber):
            return False
        if not group.members:
            del self.groups[topicFilter]
            self._tree.unsubscribe(split_shared_filter(topicFilter)[1], topicFilter)
        return True

    def match(self, topic: str) -> list[SharedGroup]:
        """
        @param topic: a valid topic name.
        @return: the shared subscriptions whose filter matches C{topic}.
        """
        groups = self.groups
        return [groups[topicFilter] for topicFilter in self._tree.match(topic)]
