"""
The cluster's failure model (docs/cluster.md): a node that dies is settled once by one
survivor; a killed node restarted under its name delivers what was acknowledged for it; Redis
restarted under load loses no acknowledged QoS 1 message.
"""

from __future__ import annotations

import threading
import time

from tests import e2e
from tests.clusternodes import Cluster3, Connect, StartNode, clients, cluster_nodes, twistd_node
from tests.redisserver import RedisServer, redis_servers
from tests.test_redisserver import command
from tests.test_twistd import freePort

__all__ = ["clients", "cluster_nodes", "redis_servers", "twistd_node"]


def redisKeys(redis: RedisServer, pattern: str) -> bytes:
    return command(redis.port, "KEYS", pattern)


def test_deadNodeIsSettledOnceBySurvivor(cluster_nodes: Cluster3) -> None:
    """
    A node that stops beating is dead to the others after node_timeout: they drop its routes
    (a message for its topics goes nowhere), and exactly one survivor claims its cleanup,
    deleting its route set and its membership.
    """
    a, b, c = (cluster_nodes.start(n) for n in "abc")
    sub = e2e.Client(c.port, "on-c")
    sub.subscribe("z/#", 1)
    a.waitKnows(c, "z/#")
    b.waitKnows(c, "z/#")
    incarnation = c.cluster.incarnation
    sub.close()
    c.crash()
    for node in (a, b):
        e2e.wait_until(
            lambda node=node: not node.knows(c, "z/#"),  # type: ignore[misc]
            f"{node.name} to drop C's routes",
        )
    e2e.wait_until(
        lambda: b"mqttd:cleanup:c:" in redisKeys(cluster_nodes.redis, "mqttd:cleanup:*"),
        "the cleanup claim",
    )
    claims = redisKeys(cluster_nodes.redis, "mqttd:cleanup:*")
    assert claims.count(b"mqttd:cleanup:c:" + incarnation.encode()) == 1
    winner = command(cluster_nodes.redis.port, "GET", f"mqttd:cleanup:c:{incarnation}")
    assert winner in (b"$1\r\na\r\n", b"$1\r\nb\r\n")
    e2e.wait_until(
        lambda: redisKeys(cluster_nodes.redis, f"mqttd:routes:c:{incarnation}") == b"*0\r\n",
        "C's route set deleted",
    )
    assert command(cluster_nodes.redis.port, "HEXISTS", "mqttd:nodes", "c") == b":0\r\n"
    sent = a.call(lambda: a.cluster.forwarder.sent)
    e2e.Client(a.port, "pub").publish("z/1", b"lost", 1)
    assert a.call(lambda: a.cluster.forwarder.sent) == sent


# Node C keeps its sessions in its own SQLite file, so what it acknowledged outlives it.
SQLITE_NODE = {
    "sections": "[store]\nplugin = sqlite\n[plugin:sqlite]\npath = node.db\ndurability = sync\n",
    "heartbeat": 0.5,
    "nodeTimeout": 30,
}


def test_killedNodeRestartedDeliversWhatWasAcknowledged(
    cluster_nodes: Cluster3,
    twistd_node: StartNode,
) -> None:
    """
    Messages acknowledged to their publisher on A while node C (a real process) was killed
    with SIGKILL wait in C's stream; C restarted under its name hands them to its restored
    persistent session, whose client gets every one.
    """
    a = cluster_nodes.start("a", node_timeout=30.0)
    port = freePort()
    process, _ = twistd_node(cluster_nodes.redis, "c", port, **SQLITE_NODE)
    sub = e2e.Client(port, "durable", clean=False)
    sub.subscribe("orders/#", 1)
    e2e.wait_until(
        lambda: a.call(lambda: "orders/#" in a.cluster.routes.filters("c")), "A to learn C's route"
    )
    sub.close()
    process.kill()
    process.wait()
    publisher = e2e.Client(a.port, "pub")
    for i in range(10):
        publisher.publish(f"orders/{i}", b"%d" % i, 1)
    twistd_node(cluster_nodes.redis, "c", port, **SQLITE_NODE)
    back = e2e.Client(port, "durable", clean=False)
    assert back.session_present
    got = back.wait_for(10, timeout=15)
    assert sorted(int(m.payload) for m in got) == list(range(10))


def test_redisRestartedUnderLoad(cluster_nodes: Cluster3) -> None:
    """
    Redis killed (SIGKILL) and restarted from its append-only file while a publisher on A
    streams QoS 1 messages to a subscriber on B: every message A acknowledged reaches B, the
    acknowledgements waiting while Redis was away.
    """
    a, b = (cluster_nodes.start(n) for n in "ab")
    sub = e2e.Client(b.port, "sub")
    sub.subscribe("load/#", 1)
    a.waitKnows(b, "load/#")
    publisher = e2e.Client(a.port, "pub", setup=lambda p: p.max_inflight_messages_set(20))
    acknowledged: set[int] = set()
    lock = threading.Lock()

    def published(client: object, userdata: object, mid: int, rc: object, props: object) -> None:
        with lock:
            acknowledged.add(mid)

    publisher.paho.on_publish = published
    count = 300
    mids = {}
    for i in range(count):
        info = publisher.paho.publish(f"load/{i}", b"%d" % i, 1)
        mids[info.mid] = i
        if i == count // 3:
            cluster_nodes.redis.stop(kill=True)
            time.sleep(0.3)
            cluster_nodes.redis.start()
    e2e.wait_until(lambda: len(acknowledged) == count, "every PUBACK", timeout=30)
    got = sub.wait_for(count, timeout=30)
    received = {int(m.payload) for m in got}
    assert received == {mids[mid] for mid in acknowledged}
    # The outage did happen under A's feet, with messages in flight to Redis.
    assert a.call(lambda: a.cluster.outages) >= 1


def test_redisDownHoldsWithinABoundThenRefuses(cluster_nodes: Cluster3, clients: Connect) -> None:
    """
    While Redis is down a node still serves its own clients; a QoS 0 message for another node
    is dropped and counted; QoS 1 messages for another node are held without PUBACK up to
    max_pending, past which the publisher is disconnected unacknowledged; when Redis is back
    the held messages reach the other node and their publishers get their PUBACKs.
    """
    a = cluster_nodes.start("a", max_pending=2)
    b = cluster_nodes.start("b")
    remote = clients(b.port, "remote")
    remote.subscribe("d/#", 1)
    local = clients(a.port, "local")
    local.subscribe("d/#", 1)
    a.waitKnows(b, "d/#")
    cluster_nodes.redis.stop(kill=True)
    e2e.wait_until(lambda: not a.call(lambda: a.cluster.redis.up), "A to see Redis gone")
    publishers = [clients(a.port, f"p{i}") for i in range(3)]
    held = [p.paho.publish("d/held", b"%d" % i, 1) for i, p in enumerate(publishers[:2])]
    assert sorted(m.payload for m in local.wait_for(2)) == [b"0", b"1"]
    e2e.wait_until(lambda: a.call(lambda: a.cluster.forwarder.holding) == 2, "two held")
    assert not any(info.is_published() for info in held)
    publishers[2].paho.publish("d/refused", b"2", 1)
    assert publishers[2].disconnected.wait(e2e.TIMEOUT), "the third publisher was not refused"
    local.paho.publish("d/zero", b"z", 0)
    assert [m.payload for m in local.wait_for(2)] == [b"2", b"z"]
    assert a.call(lambda: (a.cluster.forwarder.refused, a.cluster.forwarder.dropped)) == (1, 1)
    cluster_nodes.redis.start()
    for info in held:
        info.wait_for_publish(15)
        assert info.is_published()
    assert sorted(m.payload for m in remote.wait_for(2, timeout=15)) == [b"0", b"1"]
    assert remote.pending() == []
