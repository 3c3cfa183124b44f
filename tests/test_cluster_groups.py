"""
Virtual groups across a cluster's nodes (docs/cluster.md, "Virtual groups and other subscriber
selectors"): what the plugin decides on the publisher's node reaches clients wherever they are
connected, as one broker would.  Real nodes on one real redis-server, real paho clients.
"""

from __future__ import annotations

import time
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
