"""
Sessions across a cluster's nodes (docs/cluster.md, "Sessions"): the client id registry is
cluster-wide and fenced, persistent sessions live in Redis so that a client resumes on any
node, and the wills of a dead node's clients are published once.  Real nodes on one real
redis-server (C{appendfsync always}), real paho clients.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from zope.interface.verify import verifyObject

from mqttd.interfaces import IClientIdClaims
from tests import e2e
from tests.clusternodes import (
    Cluster3,
    Connect,
    Process,
    StartNode,
    clients,
    cluster_nodes,
    twistd_node,
)
from tests.e2e import MQTTv5, WillSpec
from tests.redisserver import redis_servers
from tests.test_redisserver import command

__all__ = ["clients", "cluster_nodes", "redis_servers", "twistd_node"]


SESSION_TAKEN_OVER = 0x8E


def persistent(seconds: int = 300) -> Properties:
    """MQTT 5 CONNECT properties of a session kept C{seconds} after its connection."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = seconds
    return properties


def user(name: str) -> Any:
    return lambda paho: paho.username_pw_set(name)


def test_takeoverAcrossNodes(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A client id is one session across the cluster.  Messages queued for an offline persistent
    session on node A reach its client when it connects to node B, which resumes the session
    (Session Present [MQTT-3.2.2-2]); the same client id connecting back to A while online on
    B takes it over: B sends DISCONNECT 0x8E and closes that connection [MQTT-3.1.4-2,
    MQTT-3.1.4-3], and only one node holds the session at a time.
    """
    a, b = cluster_nodes.start("a"), cluster_nodes.start("b")
    assert verifyObject(IClientIdClaims, a.broker.claims)
    phone = clients(a.port, "phone", clean=False, protocol=MQTTv5, properties=persistent())
    phone.subscribe("inbox/#", 1)
    phone.disconnect()
    publisher = clients(a.port, "pub")
    for n in range(3):
        publisher.publish(f"inbox/{n}", b"%d" % n, 1)

    onB = clients(b.port, "phone", clean=False, protocol=MQTTv5, properties=persistent())
    assert onB.session_present
    assert sorted(m.payload for m in onB.wait_for(3)) == [b"0", b"1", b"2"]
    assert a.call(lambda: "phone" not in a.broker.sessions)

    backOnA = clients(a.port, "phone", clean=False, protocol=MQTTv5, properties=persistent())
    assert backOnA.session_present
    assert onB.disconnected.wait(e2e.TIMEOUT)
    assert onB.disconnect_reason == SESSION_TAKEN_OVER
    e2e.wait_until(lambda: b.call(lambda: "phone" not in b.broker.sessions), "B to let go")
    # The session moved with its subscription: a message published on B reaches A's client
    # (after, maybe, a QoS 1 message B's client acknowledged as the session left B: sent again,
    # as at least once allows [MQTT-4.4.0-1]).
    b.waitKnows(a, "inbox/#")
    clients(b.port, "pub2").publish("inbox/after", b"after", 1)
    got: list[bytes] = []
    while b"after" not in got:
        got.extend(m.payload for m in backOnA.wait_for(1))
    assert set(got) <= {b"0", b"1", b"2", b"after"}


def test_ownerHoldsAcrossNodes(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A persistent session belongs to the identity that created it, cluster-wide: bob
    connecting to node B with the client id of alice's session on node A is refused (CONNACK
    5 at 3.1.1), and alice's session on A is untouched, still holding what was queued for it.
    """
    a, b = cluster_nodes.start("a"), cluster_nodes.start("b")
    alice = clients(a.port, "alice-phone", clean=False, setup=user("alice"))
    alice.subscribe("alice/#", 1)
    alice.disconnect()
    clients(a.port, "pub").publish("alice/secret", b"for alice", 1)
    try:
        clients(b.port, "alice-phone", clean=False, setup=user("bob"))
    except AssertionError as e:
        # paho reports 3.1.1's "not authorised" (5) as its 5.0 counterpart.
        assert "CONNACK return code 135" in str(e)
    else:
        raise AssertionError("bob took alice's session")
    assert a.call(lambda: "alice-phone" in a.broker.sessions)
    again = clients(b.port, "alice-phone", clean=False, setup=user("alice"))
    assert again.session_present
    assert [m.payload for m in again.wait_for(1)] == [b"for alice"]


def killed(process: Process) -> None:
    process.kill()
    process.wait()


def test_persistentSessionResumesAfterItsNodeIsKilled(
    cluster_nodes: Cluster3, clients: Connect, twistd_node: StartNode
) -> None:
    """
    A persistent session held by node A (a real process) resumes on node B after A is killed
    with SIGKILL (Redis with C{appendfsync always}): every QoS 1 and QoS 2 message B
    acknowledged to its publisher reaches the client, those published while the session was
    offline on A before the kill and those published after A died, which waited in A's stream
    for the session wherever it went [MQTT-3.1.2-5, MQTT-4.3.2-2, MQTT-4.3.3-2].
    """
    b = cluster_nodes.start("b")
    process, port = twistd_node(cluster_nodes.redis, "a")
    durable = clients(port, "durable", clean=False)
    durable.subscribe("orders/#", 1)
    durable.subscribe("bills/#", 2)
    durable.disconnect()
    e2e.wait_until(
        lambda: b.call(lambda: "bills/#" in b.cluster.routes.filters("a")), "B to learn A's routes"
    )
    publisher = clients(b.port, "pub")
    sent = set()
    for n in range(5):
        publisher.publish(f"orders/{n}", b"order %d" % n, 1)
        publisher.publish(f"bills/{n}", b"bill %d" % n, 2)
        sent |= {b"order %d" % n, b"bill %d" % n}
    killed(process)
    for n in range(5, 10):
        publisher.publish(f"orders/{n}", b"order %d" % n, 1)
        publisher.publish(f"bills/{n}", b"bill %d" % n, 2)
        sent |= {b"order %d" % n, b"bill %d" % n}
    back = clients(b.port, "durable", clean=False)
    assert back.session_present
    got: set[bytes] = set()
    while got != sent:
        got.update(m.payload for m in back.wait_for(1))
        assert got <= sent


def test_willsOfAKilledNodeArePublishedOnce(
    cluster_nodes: Cluster3, clients: Connect, twistd_node: StartNode
) -> None:
    """
    The wills of the clients of a node killed with SIGKILL are published once, by the one
    surviving node that settles the dead node [MQTT-3.1.2-8]: watchers on two other nodes each
    receive each will once, and the dead run's wills are gone from Redis.
    """
    b, c = cluster_nodes.start("b"), cluster_nodes.start("c")
    watchers = [clients(node.port, f"watch-{node.name}") for node in (b, c)]
    for watcher in watchers:
        watcher.subscribe("wills/#", 1)
    b.waitKnows(c, "wills/#")
    c.waitKnows(b, "wills/#")
    process, port = twistd_node(cluster_nodes.redis, "a")
    e2e.wait_until(
        lambda: b.call(lambda: "wills/#" in b.cluster.routes.filters("c")), "routes settled"
    )
    names = ["w0", "w1", "w2"]
    for name in names:
        clients(port, name, clean=name != "w2", will=WillSpec(f"wills/{name}", b"gone", 1))
    assert command(cluster_nodes.redis.port, "EXISTS", "mqttd:sessions:a") == b":1\r\n"
    killed(process)
    for watcher in watchers:
        assert sorted(m.topic for m in watcher.wait_for(3)) == [f"wills/{n}" for n in names]
    e2e.wait_until(
        lambda: command(cluster_nodes.redis.port, "KEYS", "mqttd:wills:*") == b"*0\r\n",
        "the dead run's wills taken",
    )
    # Published once: nothing follows once the one settling node has taken them.
    time.sleep(0.5)
    assert [w.pending() for w in watchers] == [[], []]


def test_groupMessagesReachMembersOnEveryNode(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A virtual group is one group across the cluster: its membership lives in Redis, so a
    member added through one node is known to the others, and a message published to the group
    on any node reaches its members wherever they are connected, once each.
    """
    groups = {"group.team": "alice:1, bob:1, carol:1"}
    a, b, c = (cluster_nodes.start(name, plugins={"virtual_groups": groups}) for name in "abc")
    alice, bob, carol = (
        clients(node.port, member) for node, member in ((a, "alice"), (b, "bob"), (c, "carol"))
    )
    alice.publish("$group/team/chat", b"hello", 1)
    for member in (bob, carol):
        (got,) = member.wait_for(1)
        assert (got.topic, got.payload) == ("$group/team/chat", b"hello")

    # Each node's store is its virtual groups' store too.
    storeA: Any = a.broker.store
    storeC: Any = c.broker.store
    team = a.call(lambda: storeA.group("team"))
    a.call(lambda: storeA.save(replace(team, members={**team.members, "dave": 1})))
    e2e.wait_until(
        lambda: "dave" in c.call(lambda: storeC.group("team").members),
        "node C to learn that dave joined",
    )
    dave = clients(c.port, "dave")
    dave.publish("$group/team/chat", b"from dave", 1)
    for member in (alice, bob, carol):
        (got,) = member.wait_for(1)
        assert got.payload == b"from dave", member.client_id
    time.sleep(0.3)
    assert [m.pending() for m in (alice, bob, carol, dave)] == [[], [], [], []]


def test_persistentConnectRefusedWhileRedisIsDown(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    While Redis is unreachable a node cannot know who holds a client id: a persistent
    session's connect is refused with CONNACK 3 (server unavailable) rather than given a
    session another node may hold, while a new clean session is served locally; once Redis is
    back, the persistent connect is accepted again.
    """
    a = cluster_nodes.start("a")
    cluster_nodes.redis.stop()
    sessions: Any = a.broker.claims
    e2e.wait_until(lambda: not a.call(lambda: sessions.redis.up), "node A to lose Redis")
    try:
        clients(a.port, "durable", clean=False)
    except AssertionError as e:
        # paho reports 3.1.1's "server unavailable" (3) as its 5.0 counterpart.
        assert "CONNACK return code 136" in str(e)
    else:
        raise AssertionError("a persistent session was given while Redis was down")
    local = clients(a.port, "passing-by")
    local.subscribe("here/#", 0)
    cluster_nodes.redis.start()
    e2e.wait_until(lambda: a.call(lambda: sessions.redis.up), "node A to reach Redis again")
    assert not clients(a.port, "durable", clean=False).session_present


def test_fencedNodeHandsOnWhatItStillDelivers(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    If the word that a session was taken never reaches its old node (pub/sub delivers at most
    once; a paused node hears nothing), the fence still holds: the old node's next write to
    the session is refused in Redis, so it lets the session go and closes its client's
    connection with 0x8E [MQTT-3.1.4-3], and the QoS 1 message it was delivering, already
    acknowledged to its publisher, reaches the client on the new node instead of being lost.
    """
    a, b = cluster_nodes.start("a"), cluster_nodes.start("b")
    old = clients(a.port, "phone", clean=False, protocol=MQTTv5, properties=persistent())
    old.subscribe("t/#", 1)
    b.waitKnows(a, "t/#")
    # From now on node A hears nothing on pub/sub: neither its handover channel nor the
    # cluster's route events, so it keeps routing to its stale session and to it alone.
    deaf: Any = a.broker.claims
    for connections in (deaf.redis, a.cluster.redis):
        connections._subscriber.received = lambda channel, data: None
    new = clients(b.port, "phone", clean=False, protocol=MQTTv5, properties=persistent())
    assert new.session_present
    assert a.call(lambda: "phone" in a.broker.sessions)
    # Published on A, where the stale session still is, before A knows better.
    clients(a.port, "pub").publish("t/x", b"acknowledged", 1)
    (got,) = new.wait_for(1)
    assert got.payload == b"acknowledged"
    assert old.disconnected.wait(e2e.TIMEOUT)
    assert old.disconnect_reason == SESSION_TAKEN_OVER
    assert a.call(lambda: "phone" not in a.broker.sessions)


def test_stoppedNodeLeavesItsSessionsToAnother(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A node stopped cleanly (a rolling restart) hands its offline persistent sessions to a live
    node, which takes over their routes: a QoS 1 message published while the node is down is
    queued for the session [MQTT-3.1.2-5] and reaches its client when it reconnects anywhere.
    """
    a, b = cluster_nodes.start("a"), cluster_nodes.start("b")
    sub = clients(a.port, "sleeper", clean=False)
    sub.subscribe("news/#", 1)
    sub.disconnect()
    e2e.wait_until(lambda: a.call(lambda: "b" in a.cluster.membership.others), "A to see B")
    a.stop()
    e2e.wait_until(lambda: b.call(lambda: "sleeper" in b.broker.sessions), "B to take it")
    clients(b.port, "pub").publish("news/1", b"while a was down", 1)
    back = clients(b.port, "sleeper", clean=False)
    assert back.session_present
    assert [m.payload for m in back.wait_for(1)] == [b"while a was down"]
