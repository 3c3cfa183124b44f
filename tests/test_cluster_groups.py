"""
Virtual groups across a cluster's nodes (docs/cluster.md, "Virtual groups and other subscriber
selectors"): what the plugin decides on the publisher's node reaches clients wherever they are
connected, as one broker would.  Real nodes on one real redis-server, real paho clients.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests import e2e
from tests.clusternodes import Cluster3, Connect, Node, clients, cluster_nodes
from tests.redisserver import redis_servers

__all__ = ["clients", "cluster_nodes", "redis_servers"]


def withGroups(cluster: Cluster3, name: str, **options: str) -> Node:
    """Node C{name} with the virtual groups plugin as its selector (groups kept in Redis)."""
    return cluster.start(name, plugins={"virtual_groups": options})


def user(name: str) -> Any:
    return lambda paho: paho.username_pw_set(name)


def seesAll(nodes: tuple[Node, ...]) -> None:
    """Wait until each node sees every other one alive."""
    for node in nodes:
        others = {n.name for n in nodes if n is not node}
        e2e.wait_until(
            lambda node=node, others=others: node.call(  # type: ignore[misc]
                lambda: others <= node.cluster.membership.others.keys()
            ),
            f"node {node.name} to see the others",
        )


def test_directMessagesReachClientsOnOtherNodes(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A direct message C{$p2p/CLIENT/...} published on node A reaches its client on node B once,
    at the QoS it was published with (the direct topic grants QoS 2), and nobody else; one to
    a persistent session offline on node C is queued there [MQTT-3.1.2-5] and reaches its
    client when it comes back, even on another node (B), once.  Before, A dropped both: the
    client ids had no session on A.
    """
    a, b, c = (withGroups(cluster_nodes, name) for name in "abc")
    seesAll((a, b, c))
    away = clients(c.port, "away", clean=False)
    away.disconnect()
    bob = clients(b.port, "bob")
    other = clients(c.port, "other")
    alice = clients(a.port, "alice")
    alice.publish("$p2p/bob/chat", b"hello bob", 2)
    alice.publish("$p2p/bob/chat", b"again", 1)
    alice.publish("$p2p/away/chat", b"while away", 1)
    got = bob.wait_for(2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("$p2p/bob/chat", b"hello bob", 2),
        ("$p2p/bob/chat", b"again", 1),
    ]
    e2e.wait_until(
        lambda: c.call(lambda: len(c.broker.sessions["away"].pending or ())) == 1,
        "node C to queue the message for its offline session",
    )
    back = clients(b.port, "away", clean=False)
    assert back.session_present
    (queued,) = back.wait_for(1)
    assert (queued.topic, queued.payload, queued.qos) == ("$p2p/away/chat", b"while away", 1)
    time.sleep(0.3)
    assert [m.pending() for m in (bob, back, other, alice)] == [[], [], [], []]


def test_membersByUserNameAreFoundOnEveryNode(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A group whose members are user names (C{by = username}) reaches every session of those
    users on every node, once each, at the lower of the member's and the published QoS: bob's
    phone on B and laptop on C, dave's one session on B at QoS 1, not the publisher (echo is
    off) nor a client of another user; one with a topic template, under each member's own
    topic.  Before, only sessions on the publisher's node (A) were
    looked at, and nobody else got anything.
    """
    options = {
        "group.team": "alice, bob, dave:1",
        "group.team.by": "username",
        "group.crew": "alice, bob",
        "group.crew.by": "username",
        "group.crew.topic": "crew/{member}/{rest}",
    }
    a, b, c = (withGroups(cluster_nodes, name, **options) for name in "abc")
    seesAll((a, b, c))
    phone = clients(b.port, "bob-phone", setup=user("bob"))
    laptop = clients(c.port, "bob-laptop", setup=user("bob"))
    dave = clients(b.port, "dave-1", setup=user("dave"))
    stranger = clients(c.port, "eve-1", setup=user("eve"))
    alice = clients(a.port, "alice-1", setup=user("alice"))
    alice.publish("$group/team/chat", b"hello team", 2)
    for member, qos in ((phone, 2), (laptop, 2), (dave, 1)):
        (got,) = member.wait_for(1)
        assert (got.topic, got.payload, got.qos) == ("$group/team/chat", b"hello team", qos)
    alice.publish("$group/crew/now", b"go", 1)
    for device in (phone, laptop):
        (got,) = device.wait_for(1)
        assert (got.topic, got.payload, got.qos) == ("crew/bob/now", b"go", 1)
    time.sleep(0.3)
    assert [m.pending() for m in (phone, laptop, dave, stranger, alice)] == [[]] * 5


def test_inboxGroupReachesOnlineMembersOnEveryNodeOnce(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    A group with C{inbox = true}, its groups kept in Redis: a message published on A reaches
    at once its members connected to B and C (by client id, and by user name), once each, and
    no second copy comes when a member reconnects, on its own node or another.  (The Redis
    store keeps no inbox: a member without a session when the message is published never
    gets it, as docs/cluster.md says; the node logs so for each such group.)
    """
    options = {
        "group.room": "alice, bob, carol",
        "group.room.inbox": "true",
        "group.fans": "alice, bob",
        "group.fans.by": "username",
        "group.fans.inbox": "true",
    }
    a, b, c = (withGroups(cluster_nodes, name, **options) for name in "abc")
    seesAll((a, b, c))
    bob = clients(b.port, "bob", setup=user("bob"))
    carol = clients(c.port, "carol")
    alice = clients(a.port, "alice", setup=user("alice"))
    alice.publish("$group/room/chat", b"to the room", 1)
    alice.publish("$group/fans/chat", b"to the fans", 1)
    assert [m.payload for m in bob.wait_for(2)] == [b"to the room", b"to the fans"]
    assert [m.payload for m in carol.wait_for(1)] == [b"to the room"]
    bob.disconnect()
    carol.disconnect()
    again = (clients(c.port, "bob", setup=user("bob")), clients(b.port, "carol"))
    time.sleep(0.5)
    assert [m.pending() for m in (*again, alice)] == [[], [], []]


def test_directMessagesPassTheReceiveACLOfTheRecipientsNode(
    cluster_nodes: Cluster3, clients: Connect, tmp_path: Path
) -> None:
    """
    A direct message delivered on another node goes through the receive ACL there, under the
    topic it is delivered with (C{p2p_topic}): bob on B gets what the ACL lets him read
    (C{inbox/bob/ok/...}) and not the rest, published on A.
    """
    acl = tmp_path / "acl"
    acl.write_text("topic write $p2p/#\npattern read inbox/%c/ok/#\n")
    plugins = {
        "virtual_groups": {"p2p_topic": "inbox/{clientid}/{rest}"},
        "aclfile": {"file": str(acl)},
    }
    a, b = (cluster_nodes.start(name, plugins=plugins, acl=("aclfile",)) for name in "ab")
    seesAll((a, b))
    bob = clients(b.port, "bob")
    alice = clients(a.port, "alice")
    alice.publish("$p2p/bob/no/1", b"not for bob's eyes", 1)
    alice.publish("$p2p/bob/ok/2", b"fine", 1)
    (got,) = bob.wait_for(1)
    assert (got.topic, got.payload) == ("inbox/bob/ok/2", b"fine")
    time.sleep(0.3)
    assert bob.pending() == []
