"""
A cluster node: its identity (name and incarnation), its Redis connections, its heartbeat, and
the replication of routes and retained messages it takes part in; L{ClusterService} runs it
as a child of the broker's service (docs/cluster.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.cluster.config import ClusterConfig
from mqttd.cluster.forwarding import Forwarder, channel0
from mqttd.cluster.inbox import Inbox
from mqttd.cluster.membership import NODES, Membership, aliveKey, cleanupKey
from mqttd.cluster.redis import ConnectionError, RedisConnections
from mqttd.cluster.retained import ClusterRetained
from mqttd.cluster.router import ClusterRouter
from mqttd.cluster.routes import RemoteRoutes
from mqttd.cluster.sys import ClusterSys
from mqttd.cluster.wire import WireError, decode, encode, unpackBatch
from mqttd.message import Message

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.service import BrokerService

EVENTS = "mqttd:events"
RETAINED = "mqttd:retained"
# A buried incarnation's claim is kept long enough that no survivor ever buries it twice.
CLEANUP_SECONDS = 86400

# Route, membership and retained events on EVENTS: a kind byte, then NUL-separated fields.
_ADDED, _REMOVED, _JOINED, _LEFT, _RETAINED, _CLEARED = b"+", b"-", b"J", b"L", b"R", b"D"

# HDEL of a node's field only if it still names the incarnation being removed: the node may
# have started again meanwhile.
_FORGET_INCARNATION = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then"
    " return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)


def routesKey(node: str, incarnation: str) -> str:
    """The set of topic filters C{node}'s incarnation C{incarnation} has subscribers to."""
    return f"mqttd:routes:{node}:{incarnation}"


def _incarnation() -> int:
    # 63 bits: it travels as an unsigned 64-bit number and reads back as a Redis integer.
    return random.getrandbits(63) or 1


class Cluster:
    """
    This node's part in the cluster.

    @ivar routes: the other nodes' routes.
    @ivar forwarder: what this node sends other nodes and Redis, in order.
    @ivar retained: the retained messages, cluster-wide.
    @ivar outages: how many times Redis became unreachable.
    @ivar buried: called with a dead node's name and incarnation by the one surviving node
        that settles it, after its routes are gone (the session side adds its wills here).
    """

    log = Logger()

    def __init__(self, config: ClusterConfig, clock: IReactorTime, name: str | None = None) -> None:
        self.config = config
        self.clock = clock
        self.name = name or config.node
        self.origin = _incarnation()
        self.redis = RedisConnections(
            config.address,
            clock,
            [EVENTS, channel0(self.name)],
            self._received,
            self._subscribed,
            self._lost,
        )
        self.routes = RemoteRoutes()
        self.forwarder = Forwarder(self.redis, config.max_pending)
        self.retained = ClusterRetained()
        self.membership = Membership(
            self.redis, self.name, config.node_timeout, clock, self._joined, self._died
        )
        self.membership.incarnation = self.incarnation
        self.inbox = Inbox(self.redis, self.name, self._inboxReceived, clock)
        self.buried: list[Callable[[str, str], Any]] = []
        self.router: ClusterRouter | None = None
        self.broker: Broker | None = None
        self._sys: ClusterSys | None = None
        self._sequence = 0
        # The last sequence number seen from each sending incarnation, to drop an entry
        # a sender wrote twice (its connection broke before Redis's answer came).
        self._lastSeen: dict[int, int] = {}
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._waiting: list[Deferred[None]] = []
        self._synced = False
        self._outage = False
        self.outages = 0
        self.running = False

    @property
    def incarnation(self) -> str:
        return str(self.origin)

    def buildRouter(self, *args: Any, **kwargs: Any) -> ClusterRouter:
        """Build the broker's route table (the L{mqttd.broker.Broker}'s C{router})."""
        router = ClusterRouter(*args, **kwargs)
        router.retained = self.retained
        router.cluster = self
        self.router = router
        return router

    @property
    def sys(self) -> ClusterSys:
        """This node's C{$SYS} mirror and the cluster's totals, once started."""
        assert self._sys is not None
        return self._sys

    def sysPublished(self, message: Message) -> None:
        """The broker published C{message} in its own C{$SYS/broker/} tree."""
        if self._sys is not None:
            self._sys.mirrored(message)

    # Life cycle

    def start(self, broker: Broker) -> None:
        """Connect and join: the broker has restored its store."""
        assert self.router is not None
        self.broker = broker
        broker.nodeName = self.name
        self._sys = ClusterSys(self, broker)
        self.running = True
        self.retained.writer = self._retainedChanged
        self.redis.start()
        self.inbox.start()
        self.sys.start()

    def serve(self, broker: Broker, parent: BrokerService) -> ClusterService:
        """
        Run as the first child of the broker's service, whose listeners accept once this node
        has joined, or after C{node_timeout} without Redis (then serving local clients, as
        during any outage of Redis).
        """
        service = ClusterService(self, broker)
        service.setServiceParent(parent)
        parent.beforeAccepting.append(self._joinedOrLate)
        return service

    def whenReady(self) -> Deferred[None]:
        """Fires once the node has read the cluster's routes and retained messages."""
        if self._synced:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _joinedOrLate(self) -> Deferred[None]:
        ready = self.whenReady()
        if not ready.called:
            late = self.clock.callLater(self.config.node_timeout, ready.callback, None)
            ready.addBoth(lambda result: late.cancel() if late.active() else None)
        return ready

    async def stop(self) -> None:
        """Leave the cluster cleanly: routes and heartbeat gone, then the connections."""
        self.running = False
        if self._heartbeat.running:
            self._heartbeat.stop()
        self.sys.stop()
        self.sys.forget(self.name)
        self.retained.writer = None
        inbox = self.inbox.stop()
        if self.redis.up:
            commands = self.redis.commands
            try:
                # What was held for Redis first, so that nothing acknowledged is left behind.
                self.forwarder.flush()
                waiting = self.forwarder.whenWritten()
                if waiting is not None:
                    await waiting
                await commands.execute_command("DEL", routesKey(self.name, self.incarnation))
                await commands.execute_command(
                    "EVAL", _FORGET_INCARNATION, 1, NODES, self.name, self.incarnation
                )
                await commands.execute_command("DEL", aliveKey(self.name))
                await commands.execute_command("PUBLISH", EVENTS, self._event(_LEFT))
            except ConnectionError:
                self.log.warn("cluster node {node} left without telling Redis", node=self.name)
        await self.redis.stop()
        if inbox is not None:
            await inbox

    # Redis connection events

    def _subscribed(self) -> None:
        # (Re)subscribed: events may have been missed, so everything is read again.
        ensureDeferred(self._sync()).addErrback(self._syncFailed)

    def _syncFailed(self, failure: Failure) -> None:
        if not failure.check(ConnectionError):
            self.log.failure("cluster node {node} could not synchronise", failure, node=self.name)

    def _lost(self) -> None:
        self.membership.reachable(False)
        if self.running and not self._outage:
            self._outage = True
            self.outages += 1
            self.log.error(
                "cluster node {node}: Redis at {redis} unreachable; serving local clients,"
                " holding messages for other nodes (at most {bound})",
                node=self.name,
                redis=self.config.redis,
                bound=self.config.max_pending,
            )

    async def _sync(self) -> None:
        commands = self.redis.commands
        assert self.router is not None
        previous = await commands.execute_command("HGET", NODES, self.name)
        if previous is not None and previous.decode() != self.incarnation:
            # This node's previous life (killed, restarted within node_timeout) is settled
            # now, by the node itself, rather than left for the others to find.
            await self._bury(self.name, previous.decode())
        key = routesKey(self.name, self.incarnation)
        await commands.execute_command("DEL", key)
        filters = list(self.router.localFilters)
        if filters:
            await commands.execute_command("SADD", key, *filters)
        self.membership.reachable(True)
        if await self.membership.beat():
            await self._rejoin()
            return
        for node, incarnation in list(self.membership.others.items()):
            await self._readRoutes(node, incarnation)
        flat = await commands.execute_command("HGETALL", RETAINED)
        retained: dict[str, Message] = {}
        for i in range(0, len(flat), 2):
            try:
                retained[flat[i].decode()] = decode(flat[i + 1]).message
            except (WireError, UnicodeDecodeError) as e:
                self.log.error("retained message {topic!r} unreadable: {e}", topic=flat[i], e=e)
        self.retained.load(retained)
        await commands.execute_command("PUBLISH", EVENTS, self._event(_JOINED))
        self.forwarder.resume()
        if self._outage:
            self._outage = False
            self.log.info(
                "cluster node {node}: Redis reachable again; {held} held messages sent",
                node=self.name,
                held=self.forwarder.holding,
            )
        if not self._heartbeat.running and self.running:
            self._heartbeat.start(self.config.heartbeat, now=False)
        if not self._synced:
            self._synced = True
            self.log.info(
                "cluster node {node} joined: {others} other nodes, {retained} retained messages",
                node=self.name,
                others=len(self.membership.others),
                retained=len(retained),
            )
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)

    async def _rejoin(self) -> None:
        # Buried by the others after a pause: a new incarnation, with this node's routes.
        old = self.incarnation
        self.origin = _incarnation()
        self.membership.incarnation = self.incarnation
        self.log.warn(
            "cluster node {node}: incarnation {old} was declared dead; joining as {new}",
            node=self.name,
            old=old,
            new=self.incarnation,
        )
        await self._sync()

    def _beat(self) -> Deferred[None]:
        d = ensureDeferred(self._beatOnce())
        # A heartbeat that failed is retried at the next; the connection's loss is logged.
        return d.addErrback(self._syncFailed)

    async def _beatOnce(self) -> None:
        if not self.redis.up:
            return
        if await self.membership.beat():
            await self._rejoin()

    # Membership

    def _joined(self, node: str, incarnation: str) -> None:
        ensureDeferred(self._readRoutes(node, incarnation)).addErrback(self._syncFailed)

    async def _readRoutes(self, node: str, incarnation: str) -> None:
        members = await self.redis.commands.execute_command(
            "SMEMBERS", routesKey(node, incarnation)
        )
        if self.membership.others.get(node) == incarnation:
            self.routes.replace(node, [m.decode() for m in members])

    def _died(self, node: str, incarnation: str) -> None:
        self.routes.drop(node)
        ensureDeferred(self._bury(node, incarnation)).addErrback(self._syncFailed)

    async def _bury(self, node: str, incarnation: str) -> None:
        commands = self.redis.commands
        won = await commands.execute_command(
            "SET", cleanupKey(node, incarnation), self.name, "NX", "EX", CLEANUP_SECONDS
        )
        if not won:
            return
        self.log.warn(
            "cluster node {node} (incarnation {incarnation}) is dead; {me} settles it",
            node=node,
            incarnation=incarnation,
            me=self.name,
        )
        await commands.execute_command("DEL", routesKey(node, incarnation))
        await commands.execute_command("EVAL", _FORGET_INCARNATION, 1, NODES, node, incarnation)
        if node != self.name:
            self.sys.forget(node)
        for hook in self.buried:
            try:
                await maybeDeferred(hook, node, incarnation)
            except Exception:
                self.log.failure("settling dead node {node}", node=node)

    # Routes

    def routeAdded(self, topicFilter: str) -> None:
        """The first of this node's sessions subscribed to C{topicFilter}."""
        self._routeChanged("SADD", _ADDED, topicFilter)

    def routeRemoved(self, topicFilter: str) -> None:
        """The last of this node's sessions holding C{topicFilter} let it go."""
        self._routeChanged("SREM", _REMOVED, topicFilter)

    def _routeChanged(self, command: str, kind: bytes, topicFilter: str) -> None:
        # Not held while Redis is down: the whole set is written again on reconnecting.
        if not (self.running and self.redis.up):
            return
        commands = self.redis.commands
        key = routesKey(self.name, self.incarnation)
        commands.execute_command(command, key, topicFilter).addErrback(self._ignoreLoss)
        commands.execute_command("PUBLISH", EVENTS, self._event(kind, topicFilter)).addErrback(
            self._ignoreLoss
        )

    def _ignoreLoss(self, failure: Failure) -> None:
        failure.trap(ConnectionError)

    def _event(self, kind: bytes, *fields: str) -> bytes:
        return kind + "\0".join((self.name, self.incarnation, *fields)).encode()

    # Messages

    def forward(
        self,
        node: str,
        message: Message,
        ordinary: bool,
        groups: tuple[str, ...],
        selected: Mapping[str, int] | None = None,
        reselect: bool = False,
    ) -> None:
        """Send C{message} to C{node}: by its channel at QoS 0, else by its stream."""
        self._sequence += 1
        data = encode(message, ordinary, groups, self.origin, self._sequence, selected, reselect)
        if message.qos:
            self.forwarder.add(node, data)
        else:
            self.forwarder.publish0(node, data)

    def _retainedChanged(self, topic: str, message: Message | None) -> None:
        if message is None:
            self.forwarder.write(
                [("HDEL", RETAINED, topic), ("PUBLISH", EVENTS, _CLEARED + topic.encode())]
            )
            return
        data = encode(message, False, (), self.origin, 0)
        self.forwarder.write(
            [("HSET", RETAINED, topic, data), ("PUBLISH", EVENTS, _RETAINED + data)]
        )

    def _received(self, channel: bytes, data: bytes) -> None:
        if channel == EVENTS.encode():
            self._eventReceived(data)
            return
        try:
            messages = unpackBatch(data)
        except WireError as e:
            self.log.error("QoS 0 messages from another node are unreadable: {e}", e=e)
            return
        for message in messages:
            self._deliver(message)

    def _deliver(self, data: bytes) -> None:
        try:
            forwarded = decode(data)
        except WireError as e:
            self.log.error("a message from another node is unreadable: {e}", e=e)
            return
        if forwarded.message.qos:
            last = self._lastSeen.get(forwarded.origin, 0)
            if forwarded.sequence <= last:
                return
            self._lastSeen[forwarded.origin] = forwarded.sequence
        assert self.router is not None
        message = forwarded.message
        if message.expired(self.clock.seconds()):
            return
        self.router.deliverForwarded(
            message, forwarded.ordinary, forwarded.groups, forwarded.selected, forwarded.reselect
        )

    def _inboxReceived(self, entries: list[bytes]) -> Deferred[Any] | None:
        for data in entries:
            self._deliver(data)
        assert self.broker is not None
        # The sessions' store holds what they queued before the entries are acknowledged.
        return maybeDeferred(self.broker.store.flush, True)

    def _eventReceived(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == _RETAINED:
            try:
                message = decode(body).message
            except WireError as e:
                self.log.error("a retained message from another node is unreadable: {e}", e=e)
                return
            self.retained.apply(message.topic, message)
            return
        if kind == _CLEARED:
            self.retained.apply(body.decode(), None)
            return
        fields = body.decode().split("\0")
        node, incarnation = fields[0], fields[1]
        if node == self.name:
            return
        if kind == _ADDED:
            self.routes.add(node, fields[2])
        elif kind == _REMOVED:
            self.routes.remove(node, fields[2])
        elif kind == _JOINED:
            if self.membership.others.get(node) != incarnation:
                if node in self.membership.others:
                    self.routes.drop(node)
                self.membership.others[node] = incarnation
            ensureDeferred(self._readRoutes(node, incarnation)).addErrback(self._syncFailed)
        elif kind == _LEFT:
            self.membership.left(node, incarnation)
            self.routes.drop(node)


class ClusterService(Service):
    """Runs a L{Cluster} node alongside its broker: joins on start, leaves on stop."""

    def __init__(self, cluster: Cluster, broker: Broker) -> None:
        self.cluster = cluster
        self.broker = broker
        self.setName("cluster")

    def startService(self) -> None:
        super().startService()
        self.cluster.start(self.broker)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self.cluster.stop())
