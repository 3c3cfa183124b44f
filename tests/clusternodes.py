"""
Cluster nodes for the tests: real mqttd nodes built as C{twistd mqttd} builds them
(L{makeBrokerService} from a configuration with a C{[cluster]} section), each listening on an
ephemeral port of 127.0.0.1, all in the tests' reactor thread and sharing one real
redis-server (L{tests.redisserver}).  Each node's service is started and stopped by the test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from mqttd.cluster.config import ClusterConfig, parseRedisURL
from mqttd.cluster.service import Cluster, ClusterService
from mqttd.config import BrokerConfig, Config, ListenerConfig
from mqttd.service import BrokerService, ListenerService, makeBrokerService
from tests import e2e
from tests.redisserver import RedisServer, Start
from tests.test_twistd import freePort, startTwistd

# Short, so that a test sees a node die in about a second.
HEARTBEAT = 0.2
NODE_TIMEOUT = 1.0


class Node:
    """One running node: its service, the parts a test inspects, and its port."""

    def __init__(self, service: BrokerService) -> None:
        self.service = service
        self.broker = service.broker
        cluster = next(s for s in service if isinstance(s, ClusterService)).cluster
        self.cluster: Cluster = cluster
        self.name = cluster.name
        listener = next(s for s in service if isinstance(s, ListenerService))
        self._listener = listener
        self.port = 0

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        return e2e.in_reactor(f, *args)

    def knows(self, other: Node, topicFilter: str) -> bool:
        """Whether this node's copy of the routes has C{other} holding C{topicFilter}."""
        return bool(self.call(lambda: topicFilter in self.cluster.routes.filters(other.name)))

    def waitKnows(self, other: Node, *topicFilters: str) -> None:
        for topicFilter in topicFilters:
            e2e.wait_until(
                lambda topicFilter=topicFilter: self.knows(other, topicFilter),  # type: ignore[misc]
                f"{self.name} to learn {other.name}'s route {topicFilter!r}",
            )

    def crash(self) -> None:
        """
        Stop as a killed process would: no goodbye to Redis, the heartbeat just stops, its
        connections and its clients' connections drop.
        """

        def crash() -> Deferred[Any]:
            cluster = self.cluster
            cluster.running = False
            if cluster._heartbeat.running:
                cluster._heartbeat.stop()
            cluster.inbox.stop()
            d = cluster.redis.stop()
            d.addCallback(lambda _: self._listener.stopService())
            for session in list(self.broker.sessions.values()):
                if session.connection is not None:
                    session.connection.transport.abortConnection()  # type: ignore[attr-defined]
            return d

        self.call(crash)

    def stop(self) -> None:
        """Stop the node; a stop that does not end within the tests' timeout fails, not hangs."""
        if self.service.running:
            self.call(
                lambda: maybeDeferred(self.service.stopService).addTimeout(e2e.TIMEOUT, e2e.reactor)
            )


class Cluster3:
    """Starts nodes on one Redis; stops every node still running at teardown."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.nodes: list[Node] = []

    def start(
        self,
        name: str,
        sys_interval: float = 0,
        plugins: Mapping[str, Mapping[str, str]] | None = None,
        acl: tuple[str, ...] = (),
        **cluster: Any,
    ) -> Node:
        """
        Start node C{name} with C{cluster} keys; C{plugins} are C{[plugin:NAME]} sections,
        each of which also joins the subscriber selectors' chain unless C{acl} (the
        C{[acl] chain}) names it.
        """
        settings = ClusterConfig(
            redis=self.redis.url,
            address=parseRedisURL(self.redis.url),
            node=name,
            heartbeat=HEARTBEAT,
            node_timeout=NODE_TIMEOUT,
        )
        config = Config(
            broker=BrokerConfig(sys_interval=sys_interval),
            listeners=(
                ListenerConfig(
                    name="mqtt", endpoint=f"tcp:0:interface={e2e.HOST}", allow_anonymous=True
                ),
            ),
            cluster=replace(settings, **cluster),
            pluginSections=dict(plugins or {}),
            selectorChain=tuple(p for p in plugins or () if p not in acl),
            aclChain=acl,
        )

        def build() -> Node:
            service = makeBrokerService(config, e2e.reactor)
            service.startService()
            return Node(service)

        node: Node = e2e.in_reactor(build)
        self.nodes.append(node)

        def accepting() -> bool:
            port = node._listener.port
            return bool(node.cluster._synced and port is not None and node._listener.running)

        e2e.wait_until(lambda: node.call(accepting), f"node {name} to join")
        node.port = node.call(lambda: node._listener.port.getHost().port)  # type: ignore[union-attr]
        return node

    def stopAll(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def cluster_nodes(twisted_reactor: None, redis_servers: Start) -> Iterator[Cluster3]:
    """Nodes on one fresh redis-server; fails the test if a node logged an unexpected error."""
    e2e.REACTOR.takeErrors()
    nodes = Cluster3(redis_servers())
    yield nodes
    nodes.stopAll()
    errors = [e for e in e2e.REACTOR.takeErrors() if not _expected(e)]
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


Connect = Callable[..., e2e.Client]


@pytest.fixture
def clients() -> Iterator[Connect]:
    """C{clients(port, clientId, **Client options)}: paho clients, all closed at teardown."""
    made: list[e2e.Client] = []

    def connect(port: int, clientId: str, **kwargs: Any) -> e2e.Client:
        client = e2e.Client(port, clientId, **kwargs)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def _expected(error: str) -> bool:
    # A test that stops Redis causes these on purpose.
    return "Redis at" in error and "unreachable" in error


Process = subprocess.Popen[bytes]


# twistd_node's start(redis, name, port=None, *, heartbeat, nodeTimeout, sections).
StartNode = Callable[..., tuple[Process, int]]


@pytest.fixture
def twistd_node(tmp_path: Path) -> Iterator[StartNode]:
    """
    Starts C{twistd mqttd} cluster nodes, real processes a test can kill with SIGKILL, on
    C{port} (a free one if L{None}) with the ini C{sections} added (none: the nodes' sessions
    live in the cluster's Redis); returns the process and its port once it listens.  Kills any
    left at teardown.
    """
    processes: list[Process] = []

    def start(
        redis: RedisServer,
        name: str,
        port: int | None = None,
        *,
        heartbeat: float = HEARTBEAT,
        nodeTimeout: float = NODE_TIMEOUT,
        sections: str = "",
    ) -> tuple[Process, int]:
        port = port or freePort()
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        config = directory / "mqttd.ini"
        config.write_text(
            f"[listener:mqtt]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            f"allow_anonymous = true\n{sections}"
            f"[cluster]\nredis = {redis.url}\nnode = {name}\nheartbeat = {heartbeat}\n"
            f"node_timeout = {nodeTimeout}\n"
        )
        process = startTwistd(directory, config, port)
        processes.append(process)
        return process, port

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
