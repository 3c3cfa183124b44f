"""
Tests for L{mqttd.retain}: the retained-message trie.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.retain import RetainedMessages, _Node
from mqttd.topics import validate_topic_filter, validate_topic_name
from tests.test_topics import reference_match


def node_count(store: RetainedMessages[str]) -> int:
    """
    Count the nodes of C{store}'s trie, the root included.
    """
    count = 0
    stack: list[_Node[str]] = [store._root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


def store_of(*topics: str) -> RetainedMessages[str]:
    """
    Retain, for each of C{topics}, a message that is the topic itself.
    """
    store: RetainedMessages[str] = RetainedMessages()
    for topic in topics:
        store.set(topic, topic)
    return store


def test_set_get_delete() -> None:
    """
    One message per topic: setting again replaces it without changing the
    count, deleting reports whether something was retained, and topics
    that differ only by case or a leading '/' are distinct [MQTT-4.7.3-4].
    """
    store: RetainedMessages[str] = RetainedMessages()
    assert len(store) == 0
    assert store.get("a/b") is None
    store.set("a/b", "first")
    store.set("a/b", "second")
    store.set("/a/b", "slash")
    store.set("A/b", "upper")
    assert len(store) == 3
    assert store.get("a/b") == "second"
    assert store.get("/a/b") == "slash"
    assert store.get("a") is None
    assert store.get("a/b/c") is None
    assert store.delete("a") is False
    assert store.delete("a/b/c") is False
    assert store.delete("a/b") is True
    assert store.delete("a/b") is False
    assert store.get("a/b") is None
    assert len(store) == 2


def test_stores_any_message() -> None:
    """
    The class only stores: an empty payload or even C{None} is kept as
    given, since deciding that a zero-length payload deletes
    [MQTT-3.3.1-10] is the broker's job.
    """
    store: RetainedMessages[bytes | None] = RetainedMessages()
    store.set("a", b"")
    store.set("b", None)
    assert len(store) == 2
    assert store.get("a") == b""
    assert sorted(store.matching("+"), key=repr) == [None, b""]
    assert store.delete("b") is True
    assert len(store) == 1


def test_delete_prunes() -> None:
    """
    Deleting removes nodes left empty but keeps nodes still holding a
    message or children, so the trie returns to its empty state after
    churn.
    """
    store = store_of("a/b/c", "a/b", "a//", "/", "x/y/z")
    assert store.delete("a/b/c")
    assert store.get("a/b") == "a/b"
    assert store.delete("x/y/z")
    assert node_count(store) == 7
    for topic in ["a/b", "a//", "/"]:
        assert store.delete(topic)
    assert len(store) == 0
    assert node_count(store) == 1


def test_spec_examples() -> None:
    """
    Section 4.7's examples applied to retained messages: 'sport/tennis/
    player1/#' returns 'sport/tennis/player1' and below [MQTT-4.7.1-2],
    'sport/+' returns 'sport/' but not 'sport', '/finance' is returned by
    '+/+' and '/+' but not '+' [MQTT-4.7.1-3].
    """
    store = store_of(
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "/finance",
    )
    assert Counter(store.matching("sport/tennis/player1/#")) == Counter(
        [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ]
    )
    assert Counter(store.matching("sport/tennis/+")) == Counter(
        ["sport/tennis/player1", "sport/tennis/player2"]
    )
    assert store.matching("sport/+") == ["sport/"]
    assert "sport" in store.matching("sport/#")
    assert len(store.matching("#")) == len(store)
    assert Counter(store.matching("+/+")) == Counter(["/finance", "sport/"])
    assert store.matching("/+") == ["/finance"]
    assert store.matching("+") == ["sport"]
    assert store.matching("sport/+/player1") == ["sport/tennis/player1"]
    assert store.matching("finance") == []


def test_dollar_topics() -> None:
    """
    Bad-inputs entry 24: a filter starting with '#' or '+' never returns
    retained '$SYS' topics [MQTT-4.7.2-1]; '$SYS/#' returns them,
    '$SYS' itself included [MQTT-4.7.1-2].
    """
    store = store_of("$SYS", "$SYS/broker/load", "$other", "a/$SYS", "a")
    assert Counter(store.matching("#")) == Counter(["a/$SYS", "a"])
    assert store.matching("+") == ["a"]
    assert Counter(store.matching("+/#")) == Counter(["a/$SYS", "a"])
    assert store.matching("+/broker/load") == []
    assert Counter(store.matching("$SYS/#")) == Counter(["$SYS", "$SYS/broker/load"])
    assert store.matching("$SYS/+/load") == ["$SYS/broker/load"]
    assert store.matching("$other") == ["$other"]


def test_ten_thousand_levels() -> None:
    """
    Bad-inputs entry 21: a retained message on a 10,000-level topic (with
    the level cap raised) is stored, found by '#', by '+' at every level
    and by its parent's '#', and deleted, without RecursionError.
    """
    depth = 10_000
    topic = "/".join(["a"] * depth)
    validate_topic_name(topic, max_levels=depth)
    store = store_of(topic, "b")
    assert store.get(topic) == topic
    assert Counter(store.matching("#")) == Counter([topic, "b"])
    assert store.matching("/".join(["+"] * depth)) == [topic]
    assert store.matching(topic + "/#") == [topic]
    assert store.matching("/".join(["a"] * (depth - 1)) + "/#") == [topic]
    assert store.matching(topic) == [topic]
    assert store.delete(topic)
    assert node_count(store) == 2


_TOPIC_LEVELS = st.sampled_from(["", "$SYS", "a", "b"])
_TOPICS = st.lists(_TOPIC_LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)
_FILTER_LEVELS = ["", "$SYS", "a", "b", "+"]
_ALL_SHORT_FILTERS = [
    "/".join(levels + tail)
    for size in (0, 1, 2, 3)
    for levels in map(list, itertools.product(_FILTER_LEVELS, repeat=size))
    for tail in ([], ["#"])
    if levels + tail and "/".join(levels + tail)
]
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _TOPICS),
        st.tuples(st.just("delete"), _TOPICS),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations=_OPERATIONS)
def test_matches_reference(operations: list[tuple[str, str]]) -> None:
    """
    Against an obviously correct matcher over levels '', '$SYS', 'a', 'b',
    '+' and '#', after any sequence of set and delete every filter of up to
    three levels (with or without a trailing '#') returns exactly the
    matching retained messages (the '$' rule [MQTT-4.7.2-1], 'a/#'
    returning 'a' [MQTT-4.7.1-2], '+' matching empty levels
    [MQTT-4.7.1-3]), and deleting everything leaves the empty trie.
    """
    store: RetainedMessages[str] = RetainedMessages()
    model: dict[str, str] = {}
    for serial, (action, topic) in enumerate(operations):
        validate_topic_name(topic)
        if action == "set":
            message = f"{topic}#{serial}"
            store.set(topic, message)
            model[topic] = message
        else:
            assert store.delete(topic) is (model.pop(topic, None) is not None)
        assert len(store) == len(model)
    for topic_filter in _ALL_SHORT_FILTERS:
        validate_topic_filter(topic_filter)
        expected = [
            message for topic, message in model.items() if reference_match(topic_filter, topic)
        ]
        assert Counter(store.matching(topic_filter)) == Counter(expected)
    for topic, message in model.items():
        assert store.get(topic) == message
    for topic in list(model):
        assert store.delete(topic)
    assert node_count(store) == 1
