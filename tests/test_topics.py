"""
Tests for L{mqttd.topics}: validation, matching and the subscription trie.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.topics import (
    DEFAULT_MAX_LEVELS,
    InvalidTopic,
    SubscriptionTree,
    _Node,
    filter_matches,
    validate_topic_filter,
    validate_topic_name,
)


def reference_match(topic_filter: str, topic: str) -> bool:
    """
    Match one filter against one topic by the letter of section 4.7, slowly.
    """
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def node_count(tree: SubscriptionTree) -> int:
    """
    Count the nodes of C{tree}'s trie, the root included.
    """
    count = 0
    stack: list[_Node] = [tree._root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


def tree_of(*subscriptions: tuple[str, str, int]) -> SubscriptionTree:
    tree = SubscriptionTree()
    for topic_filter, subscriber, qos in subscriptions:
        tree.subscribe(topic_filter, subscriber, qos)
    return tree


@pytest.mark.parametrize(
    "name",
    ["a", "/", "a//b", "/finance", "finance", "$SYS/broker/load", "Accounts payable"],
)
def test_valid_topic_names(name: str) -> None:
    """
    Topic names of ordinary, empty ('/' is two empty levels), '$' and
    space-containing levels are accepted [MQTT-4.7.3-1, MQTT-4.7.3-4].
    """
    validate_topic_name(name)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("", "MQTT-4.7.3-1"),
        ("+", "MQTT-3.3.2-2"),
        ("#", "MQTT-3.3.2-2"),
        ("a/+/b", "MQTT-3.3.2-2"),
        ("a/#", "MQTT-3.3.2-2"),
        ("a+b", "MQTT-3.3.2-2"),
    ],
)
def test_invalid_topic_names(name: str, spec: str) -> None:
    """
    An empty topic name [MQTT-4.7.3-1] or one containing a wildcard
    anywhere [MQTT-3.3.2-2, MQTT-4.7.1-1] is refused, naming the statement.
    """
    with pytest.raises(InvalidTopic) as raised:
        validate_topic_name(name)
    assert raised.value.spec == spec
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "sport/tennis/#",
        "sport/tennis/player1/#",
        "sport/+",
        "+/tennis/#",
        "sport/+/player1",
        "+/+",
        "/+",
        "/",
        "a//b",
        "$SYS/#",
        "$SYS/monitor/+",
    ],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    """
    The filters that section 4.7 calls valid are accepted: '#' alone or
    after a separator as the last level [MQTT-4.7.1-2], '+' as any whole
    level including the first and last [MQTT-4.7.1-3].
    """
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "spec"),
    [
        ("", "MQTT-4.7.3-1"),
        ("a/#/b", "MQTT-4.7.1-2"),
        ("a/b#", "MQTT-4.7.1-2"),
        ("sport/tennis#", "MQTT-4.7.1-2"),
        ("sport/tennis/#/ranking", "MQTT-4.7.1-2"),
        ("#/", "MQTT-4.7.1-2"),
        ("##", "MQTT-4.7.1-2"),
        ("+#", "MQTT-4.7.1-2"),
        ("a+/b", "MQTT-4.7.1-3"),
        ("sport+", "MQTT-4.7.1-3"),
        ("a/+b", "MQTT-4.7.1-3"),
        ("++", "MQTT-4.7.1-3"),
    ],
)
def test_invalid_topic_filters(topic_filter: str, spec: str) -> None:
    """
    Bad-inputs entry 14: well-formed but invalid filters such as 'a/#/b',
    'a+/b' and 'a/b#' (and the section 4.7 examples 'sport/tennis#',
    'sport/tennis/#/ranking', 'sport+') raise L{InvalidTopic} naming the
    statement broken [MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-4.7.3-1], so the
    broker can refuse just that filter.
    """
    with pytest.raises(InvalidTopic) as raised:
        validate_topic_filter(topic_filter)
    assert raised.value.spec == spec


def test_level_cap() -> None:
    """
    Bad-inputs entry 21: names and filters are accepted up to the level
    cap (128 by default) and refused one level above it; the limit is the
    broker's own, so C{spec} is C{None}.
    """
    at_cap = "/".join(["a"] * DEFAULT_MAX_LEVELS)
    validate_topic_name(at_cap)
    validate_topic_filter(at_cap)
    validate_topic_filter(at_cap[:-1] + "#")
    over = at_cap + "/a"
    with pytest.raises(InvalidTopic) as raised:
        validate_topic_name(over)
    assert raised.value.spec is None
    with pytest.raises(InvalidTopic) as raised:
        validate_topic_filter(over[:-1] + "#")
    assert raised.value.spec is None
    with pytest.raises(InvalidTopic):
        validate_topic_name("a/b/c", max_levels=2)
    with pytest.raises(InvalidTopic):
        validate_topic_filter("///", max_levels=3)


def test_ten_thousand_levels() -> None:
    """
    Bad-inputs entry 21: a 10,000-level topic and filters are refused at
    the default cap, and when the cap is raised they are subscribed,
    matched and unsubscribed without RecursionError, including '#' matching
    its parent level [MQTT-4.7.1-2] and '+' at every level [MQTT-4.7.1-3].
    """
    depth = 10_000
    topic = "/".join(["a"] * depth)
    plus = "/".join(["+"] * depth)
    parent_hash = "/".join(["a"] * depth + ["#"])
    with pytest.raises(InvalidTopic):
        validate_topic_name(topic)
    with pytest.raises(InvalidTopic):
        validate_topic_filter(plus)
    validate_topic_name(topic, max_levels=depth)
    validate_topic_filter(plus, max_levels=depth)
    validate_topic_filter(parent_hash, max_levels=depth + 1)

    tree = tree_of(
        (topic, "exact", 0),
        (plus, "plus", 1),
        (parent_hash, "hash", 2),
        ("#", "all", 0),
    )
    assert tree.match(topic) == {"exact": 0, "plus": 1, "hash": 2, "all": 0}
    assert tree.match(topic + "/a") == {"hash": 2, "all": 0}
    for topic_filter, subscriber in [
        (topic, "exact"),
        (plus, "plus"),
        (parent_hash, "hash"),
        ("#", "all"),
    ]:
        assert tree.unsubscribe(topic_filter, subscriber)
    assert node_count(tree) == 1


def test_spec_multi_level_examples() -> None:
    """
    Section 4.7.1.2's examples: 'sport/tennis/player1/#' matches
    'sport/tennis/player1' and everything below it, 'sport/#' matches
    'sport' itself, and '#' matches everything [MQTT-4.7.1-2].
    """
    tree = tree_of(("sport/tennis/player1/#", "p1", 0), ("sport/#", "sport", 0), ("#", "all", 0))
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ]:
        assert tree.match(topic) == {"p1": 0, "sport": 0, "all": 0}
    assert tree.match("sport") == {"sport": 0, "all": 0}
    assert tree.match("sport/tennis/player2") == {"sport": 0, "all": 0}
    assert tree.match("finance") == {"all": 0}


def test_spec_single_level_examples() -> None:
    """
    Section 4.7.1.3's examples: 'sport/tennis/+' matches one level only,
    'sport/+' does not match 'sport' but matches 'sport/', '/finance'
    matches '+/+' and '/+' but not '+', and '+' can be first and last
    [MQTT-4.7.1-3].
    """
    tree = tree_of(
        ("sport/tennis/+", "tennis", 0),
        ("sport/+", "sport", 0),
        ("+/+", "plus-plus", 0),
        ("/+", "slash-plus", 0),
        ("+", "plus", 0),
        ("+/tennis/#", "any-tennis", 0),
        ("sport/+/player1", "player1", 0),
    )
    assert tree.match("sport/tennis/player1") == {
        "tennis": 0,
        "any-tennis": 0,
        "player1": 0,
    }
    assert tree.match("sport/tennis/player2") == {"tennis": 0, "any-tennis": 0}
    assert tree.match("sport/tennis/player1/ranking") == {"any-tennis": 0}
    assert tree.match("sport") == {"plus": 0}
    assert tree.match("sport/") == {"sport": 0, "plus-plus": 0}
    assert tree.match("/finance") == {"plus-plus": 0, "slash-plus": 0}
    assert tree.match("finance") == {"plus": 0}


def test_empty_levels() -> None:
    """
    '+' matches an empty level, at the start ('/a'), in the middle
    ('a//b') and at the end ('a/'), and no normalisation collapses empty
    levels: '/finance' and 'finance' are different topics [MQTT-4.7.1-3,
    MQTT-4.7.3-4].
    """
    tree = tree_of(("a/+/b", "middle", 0), ("+/a", "start", 0), ("a/+", "end", 0))
    assert tree.match("a//b") == {"middle": 0}
    assert tree.match("/a") == {"start": 0}
    assert tree.match("a/") == {"end": 0}
    assert tree.match("a/b") == {"end": 0}
    assert tree.match("a") == {}
    tree = tree_of(("finance", "plain", 0))
    assert tree.match("/finance") == {}
    assert tree.match("Finance") == {}


def test_dollar_topics() -> None:
    """
    Bad-inputs entry 24: '#' and '+' as the first level never match topics
    starting with '$' [MQTT-4.7.2-1], while filters naming '$SYS' do, and
    '$SYS/#' matches '$SYS' itself [MQTT-4.7.1-2]; a '$' further down a
    topic is ordinary.
    """
    tree = tree_of(
        ("#", "all", 0),
        ("+/monitor/Clients", "plus", 0),
        ("+", "single", 0),
        ("+/#", "plus-hash", 0),
        ("$SYS/#", "sys", 0),
        ("$SYS/monitor/+", "monitor", 0),
    )
    assert tree.match("$SYS/monitor/Clients") == {"sys": 0, "monitor": 0}
    assert tree.match("$SYS") == {"sys": 0}
    assert tree.match("$") == {}
    assert tree.match("$other/monitor/Clients") == {}
    assert tree.match("a/monitor/Clients") == {"all": 0, "plus": 0, "plus-hash": 0}
    assert tree.match("a/$SYS") == {"all": 0, "plus-hash": 0}


def test_max_qos_of_overlapping_filters() -> None:
    """
    A subscriber with several filters matching a topic is listed once, at
    the highest of their QoS values [MQTT-3.3.5-1].
    """
    tree = tree_of(
        ("a/b", "c1", 0),
        ("a/+", "c1", 2),
        ("#", "c1", 1),
        ("a/#", "c2", 1),
        ("a/b", "c2", 0),
        ("+/b", "c3", 0),
    )
    assert tree.match("a/b") == {"c1": 2, "c2": 1, "c3": 0}
    assert tree.match("a") == {"c1": 1, "c2": 1}
    assert tree.match("x/b") == {"c1": 1, "c3": 0}


def test_subscribe_replaces() -> None:
    """
    Subscribing again to an identical filter replaces the subscription: the
    call reports it was not new, the QoS is the new one and the count of
    subscriptions is unchanged [MQTT-3.8.4-3].
    """
    tree = SubscriptionTree()
    assert tree.subscribe("a/+", "c1", 0) is True
    assert tree.subscribe("a/+", "c2", 1) is True
    assert len(tree) == 2
    assert tree.subscribe("a/+", "c1", 2) is False
    assert tree.subscribe("a/+", "c1", 2) is False
    assert len(tree) == 2
    assert tree.match("a/b") == {"c1": 2, "c2": 1}
    assert tree.subscribe("a/+", "c1", 1) is False
    assert tree.match("a/b") == {"c1": 1, "c2": 1}


def test_unsubscribe_prunes() -> None:
    """
    Unsubscribing reports whether the subscription existed and removes
    nodes left empty, so the trie returns to its empty state after churn
    (bad-inputs entry 21: memory must not grow with hostile filters).
    """
    tree = SubscriptionTree()
    empty = node_count(tree)
    assert empty == 1
    filters = ["a/b/c", "a/b", "a/+/c", "#", "a/#", "/", "x//y/#", "+/+/+/+"]
    for index, topic_filter in enumerate(filters):
        tree.subscribe(topic_filter, "c1", index % 3)
        tree.subscribe(topic_filter, "c2", 0)
    assert len(tree) == 2 * len(filters)

    assert tree.unsubscribe("a/b/c/d", "c1") is False
    assert tree.unsubscribe("a/b/c", "nobody") is False
    assert tree.unsubscribe("a", "c1") is False
    assert len(tree) == 2 * len(filters)

    assert tree.unsubscribe("a/b/c", "c1") is True
    assert tree.unsubscribe("a/b/c", "c1") is False
    assert tree.match("a/b/c") == {"c1": 2, "c2": 0}
    assert tree.unsubscribe("a/b/c", "c2") is True
    assert tree.match("a/b/c") == {"c1": 2, "c2": 0}
    assert tree.match("z/b/c") == {"c1": 0, "c2": 0}

    for topic_filter in filters:
        tree.unsubscribe(topic_filter, "c1")
        tree.unsubscribe(topic_filter, "c2")
    assert len(tree) == 0
    assert node_count(tree) == empty
    assert tree.match("a/b/c") == {}


def test_unsubscribe_keeps_shared_prefix() -> None:
    """
    Pruning stops at a node still holding subscribers or children: removing
    'a/b/c' leaves 'a/b' subscribed and its nodes in place.
    """
    tree = tree_of(("a/b", "c1", 0), ("a/b/c", "c1", 1))
    assert node_count(tree) == 4
    assert tree.unsubscribe("a/b/c", "c1")
    assert node_count(tree) == 3
    assert tree.match("a/b") == {"c1": 0}
    assert tree.unsubscribe("a/b", "c1")
    assert node_count(tree) == 1


def test_cache_invalidated_by_changes() -> None:
    """
    A cached match result is dropped by every subscribe or unsubscribe that
    changes the tree: match, subscribe, match again sees the new
    subscriber; a QoS change and an unsubscribe are seen too.
    """
    tree = SubscriptionTree()
    assert tree.match("a/b") == {}
    tree.subscribe("a/+", "c1", 0)
    assert tree.match("a/b") == {"c1": 0}
    tree.subscribe("#", "c2", 1)
    assert tree.match("a/b") == {"c1": 0, "c2": 1}
    tree.subscribe("a/+", "c1", 2)
    assert tree.match("a/b") == {"c1": 2, "c2": 1}
    tree.unsubscribe("#", "c2")
    assert tree.match("a/b") == {"c1": 2}


def test_cache_reuses_and_bounds() -> None:
    """
    Repeated matches of one topic return the same (read-only) result
    object; the cache never holds more than 4096 topics, and very long
    topics are matched but not cached, so a publisher cycling topics
    cannot grow memory without bound (bad-inputs entry 21).
    """
    tree = tree_of(("#", "c1", 0))
    first = tree.match("a/b")
    assert tree.match("a/b") is first
    for index in range(10_000):
        assert tree.match(f"t/{index}") == {"c1": 0}
        assert len(tree._cache) <= 4096
    long_topic = "x" * 100_000
    assert tree.match(long_topic) == {"c1": 0}
    assert long_topic not in tree._cache


def test_cache_bounds_result_sizes() -> None:
    """
    With many subscribers on '#', every result is large; the cache bounds
    the total of cached subscriber entries, not just the number of topics.
    """
    tree = SubscriptionTree()
    for index in range(2000):
        tree.subscribe("#", f"c{index}", 0)
    for index in range(1000):
        assert len(tree.match(f"t/{index}")) == 2000
        assert sum(len(result) for result in tree._cache.values()) <= 1 << 18


_TOPIC_LEVELS = st.sampled_from(["", "$SYS", "a", "b"])
_TOPICS = st.lists(_TOPIC_LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)
_FILTERS = st.builds(
    lambda levels, hashed: "/".join([*levels, "#"] if hashed else levels),
    st.lists(st.sampled_from(["", "$SYS", "a", "b", "+"]), min_size=0, max_size=4),
    st.booleans(),
).filter(bool)
_ALL_SHORT_TOPICS = [
    "/".join(levels)
    for size in (1, 2, 3)
    for levels in itertools.product(["", "$SYS", "a", "b"], repeat=size)
    if any(levels) or size > 1
]
_SUBSCRIBERS = st.sampled_from(["c1", "c2", "c3"])
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), _FILTERS, _SUBSCRIBERS, st.integers(0, 2)),
        st.tuples(st.just("unsubscribe"), _FILTERS, _SUBSCRIBERS),
        st.tuples(st.just("match"), _TOPICS),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations=_OPERATIONS)
def test_matches_reference(operations: list[tuple[object, ...]]) -> None:
    """
    Against an obviously correct matcher over levels '', '$SYS', 'a', 'b',
    '+' and '#', any interleaving of subscribe, unsubscribe and match gives
    the same results (max QoS per subscriber [MQTT-3.3.5-1], the '$' rule
    [MQTT-4.7.2-1], 'a/#' matching 'a' [MQTT-4.7.1-2], '+' matching empty
    levels [MQTT-4.7.1-3], replacement [MQTT-3.8.4-3], cache invalidation),
    and unsubscribing everything leaves the empty trie.
    """
    tree = SubscriptionTree()
    model: dict[tuple[str, str], int] = {}
    for operation in operations:
        if operation[0] == "subscribe":
            _, topic_filter, subscriber, qos = operation
            assert isinstance(topic_filter, str) and isinstance(subscriber, str)
            assert isinstance(qos, int)
            validate_topic_filter(topic_filter)
            new = (topic_filter, subscriber) not in model
            assert tree.subscribe(topic_filter, subscriber, qos) is new
            model[topic_filter, subscriber] = qos
        elif operation[0] == "unsubscribe":
            _, topic_filter, subscriber = operation
            assert isinstance(topic_filter, str) and isinstance(subscriber, str)
            existed = model.pop((topic_filter, subscriber), None) is not None
            assert tree.unsubscribe(topic_filter, subscriber) is existed
        else:
            _, topic = operation
            assert isinstance(topic, str)
            validate_topic_name(topic)
            expected: dict[str, int] = {}
            for (topic_filter, subscriber), qos in model.items():
                if reference_match(topic_filter, topic):
                    expected[subscriber] = max(qos, expected.get(subscriber, -1))
            assert tree.match(topic) == expected
        assert len(tree) == len(model)
    for topic in _ALL_SHORT_TOPICS:
        expected = {}
        for (topic_filter, subscriber), qos in model.items():
            if reference_match(topic_filter, topic):
                expected[subscriber] = max(qos, expected.get(subscriber, -1))
        assert tree.match(topic) == expected
    for topic_filter, subscriber in list(model):
        assert tree.unsubscribe(topic_filter, subscriber)
    assert node_count(tree) == 1


@settings(max_examples=300, deadline=None)
@given(topic_filter=_FILTERS, topic=_TOPICS)
def test_filter_matches_reference(topic_filter: str, topic: str) -> None:
    """
    L{filter_matches}, for checking one filter, agrees with the reference
    matcher ('$' rule [MQTT-4.7.2-1], 'a/#' matching 'a' [MQTT-4.7.1-2],
    '+' matching empty levels [MQTT-4.7.1-3]).
    """
    assert filter_matches(topic_filter, topic) is reference_match(topic_filter, topic)


@settings(max_examples=200, deadline=None)
@given(
    operations=st.lists(
        st.tuples(_FILTERS, _SUBSCRIBERS, st.sampled_from([0, 1, 2, 4, 9, 0x205]), st.booleans()),
        max_size=30,
    )
)
def test_optioned_count(operations: list[tuple[str, str, int, bool]]) -> None:
    """
    L{SubscriptionTree.optioned} counts the subscriptions whose value is 4 or
    more (MQTT 5 options beyond the QoS) through any subscribes, changes and
    unsubscribes.
    """
    tree = SubscriptionTree()
    model: dict[tuple[str, str], int] = {}
    for topic_filter, subscriber, value, remove in operations:
        if remove:
            tree.unsubscribe(topic_filter, subscriber)
            model.pop((topic_filter, subscriber), None)
        else:
            tree.subscribe(topic_filter, subscriber, value)
            model[topic_filter, subscriber] = value
        assert tree.optioned == sum(value > 3 for value in model.values())
