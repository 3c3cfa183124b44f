"""
C{$SYS} in a cluster: each node's own tree stays under C{$SYS/broker/...} for its own clients
(as mosquitto's, and as a lone mqttd's), and is mirrored, retained cluster-wide, under
C{$SYS/brokers/{node}/...}; one node (the first by name among the live ones) publishes the
cluster's totals under C{$SYS/cluster/...}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mqttd.message import Message

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.cluster.service import Cluster

OWN_PREFIX = "$SYS/broker/"
NODES_PREFIX = "$SYS/brokers/"
CLUSTER_PREFIX = "$SYS/cluster/"
# The per-node figures that add up to a cluster total.
TOTALS = (
    "clients/connected",
    "clients/total",
    "messages/received",
    "messages/sent",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "subscriptions/count",
    "bytes/received",
    "bytes/sent",
)


class ClusterSys:
    """Mirrors this node's C{$SYS} tree and, when its turn, publishes the cluster's totals."""

    log = Logger()

    def __init__(self, cluster: Cluster, broker: Broker) -> None:
        self.cluster = cluster
        self.broker = broker
        self._published: dict[str, bytes] = {}
        self._loop: LoopingCall | None = None

    @property
    def prefix(self) -> str:
        """Where this node's mirror lives."""
        return f"{NODES_PREFIX}{self.cluster.name}/"

    def start(self) -> None:
        interval = self.broker.config.sys_interval
        if not interval:
            return
        # What the broker published before the cluster started (its version, its start).
        for message in self.cluster.retained.matching(OWN_PREFIX + "#"):
            self.mirrored(message)
        self._loop = LoopingCall(self.publishTotals)
        self._loop.clock = self.broker.clock
        self._loop.start(interval, now=False).addErrback(
            lambda f: self.log.failure("cluster $SYS totals stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def mirrored(self, message: Message) -> None:
        """This node published C{message} in its own C{$SYS/broker/} tree: mirror it."""
        self._publish(self.prefix + message.topic[len(OWN_PREFIX) :], message.payload)

    def forget(self, node: str) -> None:
        """C{node} is gone: its mirror is cleared, cluster-wide."""
        retained = self.cluster.retained
        for message in retained.matching(f"{NODES_PREFIX}{node}/#"):
            retained.delete(message.topic)

    def publishTotals(self) -> None:
        """The first live node by name adds up every node's mirror."""
        cluster = self.cluster
        nodes = sorted({cluster.name, *cluster.membership.others})
        if nodes[0] != cluster.name:
            self._published.clear()
            return
        retained = cluster.retained
        self._publish(CLUSTER_PREFIX + "nodes", str(len(nodes)).encode())
        for figure in TOTALS:
            total = 0
            for node in nodes:
                kept = retained.get(f"{NODES_PREFIX}{node}/{figure}")
                if kept is not None and kept.payload.isdigit():
                    total += int(kept.payload)
            self._publish(CLUSTER_PREFIX + figure, str(total).encode())

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._published.get(topic) == payload:
            return
        self._published[topic] = payload
        broker = self.broker
        if broker.config.retain_available:
            # Set rather than routed retained, which would also write the store each interval.
            broker.retained.set(topic, Message(topic, payload, 0, True))
        broker.route(Message(topic, payload, 0, False))
