"""
Three real mqttd nodes on one real redis-server, real paho clients (docs/cluster.md): messages
cross nodes once, at the right QoS, in order, only to nodes that want them; retained messages,
wildcard and shared subscriptions are cluster-wide.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mqttd.message import Message
from tests import e2e
from tests.clusternodes import Cluster3, Connect, clients, cluster_nodes
from tests.redisserver import redis_servers

__all__ = ["clients", "cluster_nodes", "redis_servers"]


def test_publishOnOneNodeReachesTheOthersAtEachQoS(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    Subscribers on B and C at QoS 0, 1 and 2 receive every message published on A once, at
    the lower of the published and the granted QoS [MQTT-3.3.5-1], each topic's messages of
    one QoS in the order published [MQTT-4.6.0-6]; a subscriber on A itself too.  (QoS 0
    crosses by pub/sub and QoS 1/2 by stream, so the order between QoS levels is not kept,
    as the spec allows.)
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    subscribers = []
    for node in (a, b, c):
        for granted in (0, 1, 2):
            sub = clients(node.port, f"sub-{node.name}-{granted}")
            assert sub.subscribe("q/#", granted) == granted
            subscribers.append((sub, granted))
    for node in (b, c):
        a.waitKnows(node, "q/#")
    publisher = clients(a.port, "pub")
    sent = []
    for i in range(30):
        qos = i % 3
        payload = f"{i}".encode()
        publisher.publish(f"q/{qos}", payload, qos)
        sent.append((payload, qos))
    for sub, granted in subscribers:
        got = sub.wait_for(len(sent))
        for qos in (0, 1, 2):
            assert [(m.payload, m.qos) for m in got if m.topic == f"q/{qos}"] == [
                (p, min(q, granted)) for p, q in sent if q == qos
            ], f"{sub.client_id} at QoS {qos}"
    for sub, _ in subscribers:
        assert sub.pending() == [], "a message was delivered twice"


def _commandCalls(port: int) -> dict[str, int]:
    """How many times the Redis server on C{port} ran each command (C{INFO commandstats})."""
    with socket.create_connection((e2e.HOST, port), e2e.TIMEOUT) as s:
        s.sendall(b"INFO commandstats\r\n")
        reply = b""
        # A bulk string: "$LENGTH\r\n" then the text and "\r\n".
        while b"\r\n" not in reply or len(reply) < reply.index(b"\r\n") + 2 + int(
            reply[1 : reply.index(b"\r\n")]
        ):
            reply += s.recv(65536)
    calls = {}
    for line in reply.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, stats = line[len("cmdstat_") :].split(":", 1)
            calls[name] = int(stats.split(",")[0].removeprefix("calls="))
    return calls


def test_messagesOfOneTurnToOneNodeGoAsOneCommand(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    The QoS 1 messages a node sends another within one reactor turn go as one XADD, its QoS 0
    messages as one PUBLISH (docs/cluster.md), and each arrives once, in the order published
    [MQTT-4.6.0-6].
    """
    a, b = (cluster_nodes.start(n) for n in "ab")
    sub = clients(b.port, "sub")
    sub.subscribe("turn/#", 1)
    a.waitKnows(b, "turn/#")
    port = cluster_nodes.redis.port
    before = _commandCalls(port)

    def publishInOneTurn() -> None:
        for i in range(10):
            a.broker.router.route(Message("turn/1", b"one %d" % i, 1))
            a.broker.router.route(Message("turn/0", b"zero %d" % i, 0))

    a.call(publishInOneTurn)
    got = sub.wait_for(20)
    assert [m.payload for m in got if m.topic == "turn/1"] == [b"one %d" % i for i in range(10)]
    assert [m.payload for m in got if m.topic == "turn/0"] == [b"zero %d" % i for i in range(10)]
    e2e.wait_until(lambda: b.call(lambda: b.cluster.inbox.received) == 10, "B's ten QoS 1")
    after = _commandCalls(port)
    assert after.get("xadd", 0) - before.get("xadd", 0) == 1
    assert after.get("publish", 0) - before.get("publish", 0) == 1
    assert sub.pending() == []


def test_messagesGoOnlyToNodesWithAMatch(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A message is sent only to the nodes with a matching subscription: C, subscribed to
    another topic, receives nothing from Redis for it; B receives one copy, however many of
    its filters and subscribers match.
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    b1 = clients(b.port, "b1")
    b2 = clients(b.port, "b2")
    b1.subscribe("x/#", 1)
    b2.subscribe("x/+", 1)
    b2.subscribe("x/1", 1)
    clients(c.port, "c1").subscribe("y/#", 1)
    a.waitKnows(b, "x/#", "x/+", "x/1")
    a.waitKnows(c, "y/#")
    publisher = clients(a.port, "pub")
    for i in range(5):
        publisher.publish("x/1", b"%d" % i, 1)
    assert [m.payload for m in b1.wait_for(5)] == [b"0", b"1", b"2", b"3", b"4"]
    # b2 has two matching filters: one copy each time [MQTT-3.3.4-2].
    assert len(b2.wait_for(5)) == 5
    assert a.call(lambda: a.cluster.forwarder.sent) == 5
    e2e.wait_until(lambda: b.call(lambda: b.cluster.inbox.received) == 5, "B's five entries")
    assert c.call(lambda: c.cluster.inbox.received) == 0
    assert b2.pending() == []


def test_retainedSetOnAIsSeenOnC(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    A retained message published on A is sent to a new subscriber on C with RETAIN set
    [MQTT-3.3.1-6]; an empty retained payload on B clears it everywhere [MQTT-3.3.1-10].
    A node started afterwards reads it from Redis.
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    clients(a.port, "pub").publish("state/door", b"open", 1, retain=True)
    e2e.wait_until(
        lambda: c.call(lambda: c.cluster.retained.get("state/door")) is not None,
        "C to learn the retained message",
    )
    sub = clients(c.port, "c-sub")
    sub.subscribe("state/+", 1)
    (got,) = sub.wait_for(1)
    assert (got.topic, got.payload, got.qos, got.retain) == ("state/door", b"open", 1, True)
    late = cluster_nodes.start("d")
    kept = late.call(lambda: late.cluster.retained.get("state/door"))
    assert kept is not None and kept.payload == b"open"
    clients(b.port, "clear").publish("state/door", b"", 1, retain=True)
    for node in (a, c, late):
        e2e.wait_until(
            lambda node=node: (
                node.call(lambda: node.cluster.retained.get("state/door"))  # type: ignore[misc]
                is None
            ),
            f"{node.name} to forget the retained message",
        )
    again = clients(c.port, "c-sub2")
    again.subscribe("state/#", 1)
    assert again.pending() == []


def test_wildcardsAcrossNodes(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    Wildcard filters held on other nodes match as they would locally, and C{+} / C{#} at the
    first level do not match a C{$} topic [MQTT-4.7.2-1].
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    plus = clients(b.port, "plus")
    plus.subscribe("sensors/+/temp", 1)
    hash_ = clients(c.port, "hash")
    hash_.subscribe("#", 1)
    a.waitKnows(b, "sensors/+/temp")
    a.waitKnows(c, "#")
    publisher = clients(a.port, "pub")
    publisher.publish("sensors/k1/temp", b"21", 1)
    publisher.publish("sensors/k1/humidity", b"40", 1)
    publisher.publish("$internal/x", b"no", 1)
    assert [(m.topic, m.payload) for m in plus.wait_for(1)] == [("sensors/k1/temp", b"21")]
    got = hash_.wait_for(2)
    assert [m.topic for m in got] == ["sensors/k1/temp", "sensors/k1/humidity"]
    publisher.publish("sensors/k2/temp", b"22", 1)
    assert plus.wait_for(1)[0].payload == b"22"
    assert hash_.wait_for(1)[0].payload == b"22"
    assert plus.pending() == [] and hash_.pending() == []


def test_sharedSubscriptionOneDeliveryAcrossTheCluster(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    A shared subscription with members on B and C gets each message published on A once,
    spread over both nodes [MQTT-4.8.2-3]; a member's ordinary subscription on C still gets
    every message.
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    members = [
        clients(b.port, "m-b1"),
        clients(b.port, "m-b2"),
        clients(c.port, "m-c1"),
    ]
    for member in members:
        assert member.subscribe("$share/g/jobs/#", 1) == 1
    watcher = clients(c.port, "watcher")
    watcher.subscribe("jobs/#", 0)
    a.waitKnows(b, "$share/g/jobs/#")
    a.waitKnows(c, "$share/g/jobs/#", "jobs/#")
    publisher = clients(a.port, "pub")
    count = 40
    for i in range(count):
        publisher.publish(f"jobs/{i}", b"%d" % i, 1)
    assert len(watcher.wait_for(count)) == count
    e2e.wait_until(
        lambda: sum(m.messages.qsize() for m in members) >= count, "the group's deliveries"
    )
    received = [m.pending() for m in members]
    payloads = sorted(int(r.payload) for got in received for r in got)
    assert payloads == list(range(count)), "each message exactly once in the group"
    onB = len(received[0]) + len(received[1])
    onC = len(received[2])
    # The publisher's node takes B and C in turn.
    assert (onB, onC) == (count // 2, count // 2)


def test_sharedSubscriptionWithALocalMember(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    With members on the publisher's node and on another, the group still gets each message
    once, the publisher's node serving its turns itself.
    """
    a, b = (cluster_nodes.start(n) for n in "ab")
    local = clients(a.port, "m-a")
    remote = clients(b.port, "m-b")
    local.subscribe("$share/g/t", 1)
    remote.subscribe("$share/g/t", 1)
    a.waitKnows(b, "$share/g/t")
    publisher = clients(a.port, "pub")
    for i in range(10):
        publisher.publish("t", b"%d" % i, 1)
    e2e.wait_until(lambda: local.messages.qsize() + remote.messages.qsize() >= 10, "ten deliveries")
    got = local.pending() + remote.pending()
    assert sorted(int(m.payload) for m in got) == list(range(10))
    assert len(got) == 10


def test_forwardedMessageServesOnlyTheGroupsItNames(
    cluster_nodes: Cluster3, clients: Connect
) -> None:
    """
    A node serves, of a message another node forwards, only the shared subscriptions it was
    named for: group h has its one member on B, group g a member on A and one on B.  Every
    message published on A goes to B for h; g, whose turn alternates between A and B, still
    gets each message once, so B never serves g for a message A served g itself.
    """
    a, b = (cluster_nodes.start(n) for n in "ab")
    gLocal = clients(a.port, "g-a")
    gRemote = clients(b.port, "g-b")
    hRemote = clients(b.port, "h-b")
    gLocal.subscribe("$share/g/t", 1)
    gRemote.subscribe("$share/g/t", 1)
    hRemote.subscribe("$share/h/t", 1)
    a.waitKnows(b, "$share/g/t", "$share/h/t")
    publisher = clients(a.port, "pub")
    for i in range(10):
        publisher.publish("t", b"%d" % i, 1)
    assert sorted(int(m.payload) for m in hRemote.wait_for(10)) == list(range(10))
    e2e.wait_until(lambda: gLocal.messages.qsize() + gRemote.messages.qsize() >= 10, "g's ten")
    # A second copy B sent for g would come with h's: long before this.
    time.sleep(0.3)
    got = gLocal.pending() + gRemote.pending()
    assert sorted(int(m.payload) for m in got) == list(range(10))


def test_sysPerNodeAndClusterTotals(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    Each node mirrors its C{$SYS/broker/} tree under C{$SYS/brokers/{node}/}, live and
    retained cluster-wide, and the first node by name publishes the cluster's totals under
    C{$SYS/cluster/}; a node's own tree is not sent to the others.
    """
    a = cluster_nodes.start("a", sys_interval=0.2)
    b = cluster_nodes.start("b", sys_interval=0.2)
    clients(a.port, "on-a-1")
    clients(a.port, "on-a-2")
    watcher = clients(b.port, "watcher")
    watcher.subscribe("$SYS/brokers/a/clients/connected", 0)
    watcher.subscribe("$SYS/cluster/clients/connected", 0)

    def latest(topic: str) -> bytes | None:
        kept = b.call(lambda: b.cluster.retained.get(topic))
        return None if kept is None else bytes(kept.payload)

    e2e.wait_until(lambda: latest("$SYS/brokers/a/clients/connected") == b"2", "A's mirror")
    e2e.wait_until(lambda: latest("$SYS/cluster/clients/connected") == b"3", "the totals")
    assert latest("$SYS/cluster/nodes") == b"2"
    assert latest("$SYS/brokers/b/clients/connected") == b"1"
    topics = {m.topic for m in watcher.wait_for(2)}
    assert topics <= {"$SYS/brokers/a/clients/connected", "$SYS/cluster/clients/connected"}
    # A's own $SYS/broker/ tree stays A's: B's copy has B's figures only.
    assert latest("$SYS/broker/clients/connected") == b"1"


def test_virtualGroupMembersSpreadOverNodes(
    cluster_nodes: Cluster3, clients: Connect, tmp_path: Path
) -> None:
    """
    A virtual group's message published on A reaches each member once wherever it is
    connected (A, B, C), at the lower of its QoS and the message's, under the group's topic
    template when it has one; the publisher (no echo) gets none of it.
    """

    def groups(node: str) -> dict[str, dict[str, str]]:
        return {
            "virtual_groups": {
                "path": str(tmp_path / f"groups-{node}.db"),
                "group.team": "pub, m-a, m-b, m-c:1",
                "group.crew": "pub, m-b, m-c",
                "group.crew.topic": "crew/{rest}",
            }
        }

    a, b, c = (cluster_nodes.start(n, plugins=groups(n)) for n in "abc")
    members = {"m-a": clients(a.port, "m-a"), "m-b": clients(b.port, "m-b")}
    members["m-c"] = clients(c.port, "m-c")
    e2e.wait_until(
        lambda: a.call(lambda: len(a.cluster.membership.others)) == 2, "A to know B and C"
    )
    publisher = clients(a.port, "pub")
    publisher.publish("$group/team/hello", b"hi", 1)
    publisher.publish("$group/crew/now", b"go", 2)
    expected = {
        "m-a": [("$group/team/hello", b"hi", 1)],
        "m-b": [("$group/team/hello", b"hi", 1), ("crew/now", b"go", 2)],
        "m-c": [("$group/team/hello", b"hi", 1), ("crew/now", b"go", 2)],
    }
    for name, member in members.items():
        got = member.wait_for(len(expected[name]))
        assert [(m.topic, m.payload, m.qos) for m in got] == expected[name], name
    for member in (*members.values(), publisher):
        assert member.pending() == []
