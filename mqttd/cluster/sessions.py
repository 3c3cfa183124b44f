"""
The session side of a cluster node (docs/cluster.md, "Sessions"): the cluster-wide client id
registry in front of the node's L{SessionRegistry}, with persistent sessions in Redis through
the Redis store (L{mqttd.plugins.redis_store}).

A connecting client's id is claimed in Redis (one Lua script: the owner check, then the
session's fencing token becomes this node's run) before the registry attaches it.  The node
that held it is told on its handover channel to disconnect its client [MQTT-3.1.4-2] and let
the session go; whatever it still writes to the session is refused by the fence, and what it
still delivers to it is kept for the new owner (a stray).  When a node dies, the one survivor
that settles it (L{mqttd.cluster.service.Cluster.buried}) takes its run's persistent sessions
and wills (published there, once), and hands the QoS 1/2 messages still in the dead node's
stream to the sessions that were its.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mqttd.cluster.forwarding import streamKey
from mqttd.cluster.inbox import GROUP
from mqttd.cluster.redis import ConnectionError, RedisConnections, ResponseError
from mqttd.cluster.wire import WireError, decode, unpackBatch
from mqttd.codec.packets import ConnackCode, Connect
from mqttd.interfaces import Allow, IClientIdClaims
from mqttd.message import Message
from mqttd.plugin_loader import pluginPackage
from mqttd.store import StoredState
from mqttd.topics import SHARE_PREFIX, filter_matches

if TYPE_CHECKING:
    from mqttd.broker import Broker
    from mqttd.cluster.service import Cluster

# Entries of a dead node's stream read at once while handing them on.
DRAIN_BATCH = 512

# On a node's handover channel: another node took a client id (client id, the epoch the claim
# took it from, whether the session continues), left deliveries for one of this node's
# sessions (client id), or stopped and leaves its persistent sessions to this one (node, run).
_TAKEN, _STRAYS, _LEAVING = b"T", b"S", b"L"


def handoverChannel(node: str) -> str:
    """The channel on which other nodes tell C{node} about its sessions."""
    return f"mqttd:handover:{node}"


class ServerUnavailable(Exception):
    """Redis is unreachable: a persistent session cannot be claimed safely."""


@implementer(IClientIdClaims)
class ClusterSessions:
    """
    The client ids and persistent sessions of one cluster node.

    @ivar claimed: the client ids this node holds, each with the claim's epoch (L{None} for
        one it restored or adopted rather than claimed from a client).
    @ivar adopted: client ids of sessions adopted from dead nodes, for the log and tests.
    """

    log = Logger()

    def __init__(self, cluster: Cluster) -> None:
        """
        Make the node's Redis store (L{store}, the broker's) on connections of its own, whose
        subscriber listens on this node's handover channel; they connect when the broker
        restores the store.
        """
        self.cluster = cluster
        self.redis = RedisConnections(
            cluster.config.address,
            cluster.clock,
            [handoverChannel(cluster.name)],
            self.received,
            lambda: None,
            lambda: None,
        )
        # The store is a plugin, importable as mqttd.plugins from a checkout too.
        redisStore: Any = importlib.import_module(pluginPackage().__name__ + ".redis_store")
        self.store = redisStore.RedisStore(
            cluster.clock,
            self._connect,
            node=cluster.name,
            clustered=True,
            token=lambda: cluster.incarnation,
            disconnect=self._closed,
            groupPollInterval=cluster.config.heartbeat,
        )
        self.store.fenced = self._fenced
        self.claimed: dict[str, int | None] = {}
        self.adopted = 0
        # Client ids whose strays are being read: whether to read again when done.
        self._taking: dict[str, bool] = {}

    def _closed(self, commands: Any) -> Deferred[Any]:
        """
        The store wrote its last batch: this node stops.  Its persistent sessions, offline
        while it is down, would miss what is published for them meanwhile, since its routes go
        with it; one live node (the first by name) is asked to take them, as it would a dead
        node's, and their clients take them from there, wherever they connect.
        """
        others = sorted(self.cluster.membership.others)
        if not (others and self.redis.up):
            return self.redis.stop()
        data = _LEAVING + f"{self.cluster.name}\0{self.store.token}".encode()
        d: Deferred[Any] = commands.execute_command("PUBLISH", handoverChannel(others[0]), data)
        return d.addBoth(lambda _: self.redis.stop())

    def _connect(self) -> Any:
        self.redis.start()
        return self.redis.commands

    def attach(self, broker: Broker) -> None:
        """Serve C{broker}, built with L{store}: claims go through here from now on."""
        self.broker = broker
        self.registry = broker.registry
        self.cluster.buried.append(self._buried)
        self.registry.whenEnded(self._ended)
        broker.claims = self

    # Claims (IClientIdClaims)

    def claim(self, packet: Connect, allowed: Allow) -> Deferred[int | None]:
        clientId = packet.client_id
        if not self.redis.up:
            persistent = not packet.clean_session or bool(packet.properties.session_expiry_interval)
            if persistent or clientId in self.claimed:
                # Another node may hold it, or take it meanwhile: refused rather than given a
                # session two nodes would write (docs/cluster.md, "When Redis is down").
                return fail(ServerUnavailable(f"Redis unreachable; {clientId!r} not claimed"))
            # A clean session is served locally, as anything else during the outage.
            return succeed(None)
        identity = allowed.identity if allowed.identity is not None else packet.username
        refuse = self.broker.config.session_owner_conflict == "refuse"
        d = self.store.claimClient(clientId, identity or "", refuse)
        return d.addCallback(self._claimedClient, packet).addErrback(self._claimFailed, clientId)

    def _claimFailed(self, failure: Any, clientId: str) -> Any:
        if failure.check(ConnectionError):
            self.log.warn("{clientId} not claimed: Redis unreachable", clientId=clientId)
        else:
            self.log.failure("claiming {clientId}", failure, clientId=clientId)
        return failure

    def _claimedClient(self, claimed: Any, packet: Connect) -> int | None:
        clientId = packet.client_id
        if claimed.refusedBy is not None:
            self.log.warn(
                "refused {clientId}: its session belongs to {owner!r} (cluster-wide)",
                clientId=clientId,
                owner=claimed.refusedBy,
            )
            return ConnackCode.NOT_AUTHORIZED
        self.claimed[clientId] = claimed.epoch + 1
        moved = bool(claimed.fence) and claimed.fence != self.store.token
        continued = bool(claimed.sessions) and not packet.clean_session
        if moved:
            # Whatever this node still has of it is older than what Redis gave back.
            self.registry.handOver(clientId, continued)
        if claimed.sessions and clientId not in self.registry.sessions:
            # Its subscriptions become this node's routes (announced to the others) before the
            # node that held it is told to let it go, so that the others route to it here
            # before they stop routing to it there.
            self.registry.restore(self._state(claimed.sessions), self.broker.subscribing.reserved)
        if moved and claimed.node:
            self._tell(claimed.node, _TAKEN, clientId, str(claimed.epoch), str(int(continued)))
        # The caller attaches the session in this same turn, unless the connection went.
        self.cluster.clock.callLater(0, self._release, clientId)
        return None

    def _state(self, sessions: list[Any]) -> StoredState:
        return StoredState(sessions=sessions)

    def _ended(self, clientId: str) -> None:
        # A clean start ends a session and makes another within one turn: looked at after it.
        self.cluster.clock.callLater(0, self._release, clientId)

    def _release(self, clientId: str) -> None:
        # Also for a session this node restored rather than claimed; a client id another
        # node took meanwhile is not released, the fence refusing it.
        if clientId in self.registry.sessions or self.store.closed:
            # A node stopping ends its clean sessions after its store closed: their claims
            # stay until its next start clears them, or another node claims the client ids.
            return
        self.claimed.pop(clientId, None)
        self.store.release(clientId)

    # What other nodes say

    def received(self, channel: bytes, data: bytes) -> None:
        """A message on this node's handover channel."""
        kind, fields = data[:1], data[1:].split(b"\0")
        if kind == _LEAVING:
            node, run = fields[0].decode(), fields[1].decode()
            ensureDeferred(self._buried(node, run)).addErrback(self._failed)
            return
        clientId = fields[0].decode()
        if kind == _TAKEN:
            epoch, continued = int(fields[1]), fields[2] == b"1"
            # A word about an older claim (the client came back here since) changes nothing.
            if self.claimed.get(clientId, epoch) not in (epoch, None):
                return
            self._lost(clientId, continued, "taken over by a client on another node")
        elif kind == _STRAYS and clientId in self.registry.sessions:
            self._takeStrays(clientId)

    def _takeStrays(self, clientId: str) -> None:
        if clientId in self._taking:
            # Read again once the reading under way is done, so nothing is handed on twice.
            self._taking[clientId] = True
            return
        self._taking[clientId] = False
        d = self.store.takeStrays(clientId)
        d.addCallback(self._straysTaken, clientId).addErrback(self._failed)
        d.addBoth(self._tookStrays, clientId)

    def _tookStrays(self, ignored: object, clientId: str) -> None:
        if self._taking.pop(clientId, False):
            self._takeStrays(clientId)

    def _lost(self, clientId: str, continued: bool, why: str) -> None:
        self.claimed.pop(clientId, None)
        if self.registry.handOver(clientId, continued):
            self.log.info("{clientId}: session {why}", clientId=clientId, why=why)

    def _fenced(self, fenced: list[str], strays: list[tuple[str, str]]) -> None:
        for clientId in fenced:
            # Its handover word was lost (pub/sub delivers at most once): the fence tells.
            self._lost(clientId, True, "owned by another node (its writes were fenced off)")
        for clientId, node in strays:
            self._tell(node, _STRAYS, clientId)

    def _straysTaken(self, deliveries: list[tuple[Message, int, bool]], clientId: str) -> None:
        session = self.registry.sessions.get(clientId)
        if session is None or not deliveries:
            # Gone meanwhile: they wait in its queue in Redis for whoever claims it.
            return
        # Already at the end of its queue in Redis: joined to the end of the one here as
        # they are, not delivered anew, which would journal them twice.
        pending = session.pending
        if pending is None:
            pending = session.pending = deque()
        for message, qos, retain in deliveries:
            pending.append((message, qos, retain))
            session.queuedBytes += len(message.payload)
        if session.connection is not None:
            session.pump()

    def _tell(self, node: str, kind: bytes, *fields: str) -> None:
        data = kind + "\0".join(fields).encode()
        d = self.redis.commands.execute_command("PUBLISH", handoverChannel(node), data)
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        # Redis's loss is logged once by the cluster; a stray or a handover not told now is
        # found by the next claim of the session.
        if not failure.check(ConnectionError):
            self.log.failure("cluster sessions", failure)

    # A dead node

    async def _buried(self, node: str, incarnation: str) -> None:
        adopted = await self.store.adopt(node, incarnation)
        state = adopted.state
        for session in state.sessions:
            self.claimed[session.clientId] = None
        self.adopted += len(state.sessions)
        # Offline here until their clients come back, anywhere; the wills go now (or after
        # their delay, for a session kept here), once: adopt took them from Redis.
        self.registry.restore(state, self.broker.subscribing.reserved)
        self.log.info(
            "took {sessions} sessions and {wills} wills of dead node {node}",
            sessions=len(state.sessions),
            wills=len(state.wills),
            node=node,
        )
        await self._drain(node, {s.clientId for s in state.sessions}, adopted)

    async def _drain(self, node: str, here: set[str], adopted: Any) -> None:
        """
        Hand the QoS 1/2 messages left in the dead C{node}'s stream to the sessions that were
        its: those adopted here, and those taken by clients elsewhere before it died, for
        what was sent before they left (as strays, which their owners take).
        """
        commands = self.redis.commands
        key = streamKey(node)
        consumer = f"{self.cluster.name}:adopting:{node}"
        start = b"0-0"
        while True:
            try:
                # The entries the dead node read but never acknowledged, then the others.
                reply = await commands.execute_command(
                    "XAUTOCLAIM", key, GROUP, consumer, 0, start, "COUNT", DRAIN_BATCH
                )
            except ResponseError:
                return  # No stream, or no group: nothing was ever sent to it.
            entries = reply[1]
            if entries:
                await self._handOn(entries, here, adopted.moved)
                await self._settled(key, entries)
            start = reply[0]
            if start == b"0-0":
                break
        while True:
            reply = await commands.execute_command(
                "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", DRAIN_BATCH, "STREAMS", key, ">"
            )
            if not reply or not reply[0][1]:
                break
            entries = reply[0][1]
            await self._handOn(entries, here, adopted.moved)
            await self._settled(key, entries)

    async def _handOn(
        self,
        entries: list[Any],
        here: set[str],
        moved: Mapping[str, tuple[int, dict[str, int]]],
    ) -> None:
        sessions = self.registry.sessions
        for entryId, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {}
            data = values.get(b"m")
            if data is None:
                continue
            try:
                # An entry carries the batch of messages one node sent in one turn.
                messages = [decode(one).message for one in unpackBatch(data)]
            except WireError as e:
                self.log.error("a message in a dead node's stream is unreadable: {e}", e=e)
                continue
            sent = int(entryId.split(b"-")[0])
            targets = {c: sessions[c].subscriptions for c in here if c in sessions}
            for clientId, (left, subscriptions) in moved.items():
                # What was sent after it left reached it where it went.
                if sent < left:
                    targets.setdefault(clientId, subscriptions)
            now = self.cluster.clock.seconds()
            for message in messages:
                if message.expired(now):
                    continue
                for clientId, subscriptions in targets.items():
                    qos = min(_granted(subscriptions, message.topic), message.qos)
                    if not qos:
                        continue
                    if clientId in sessions:
                        self.broker.router.deliverTo(clientId, message, qos)
                    else:
                        # Not this node's: the store keeps it for the session's owner (a stray).
                        self.store.messageQueued(clientId, message, qos, False)
        await maybeDeferred(self.store.flush, True)

    async def _settled(self, key: str, entries: list[Any]) -> None:
        ids = [entryId for entryId, _ in entries]
        await self.redis.commands.execute_command("XACK", key, GROUP, *ids)
        await self.redis.commands.execute_command("XDEL", key, *ids)


def _granted(subscriptions: Mapping[str, int], topic: str) -> int:
    """The highest QoS of the ordinary subscriptions matching C{topic}; 0 for none."""
    best = 0
    for topicFilter, options in subscriptions.items():
        if not topicFilter.startswith(SHARE_PREFIX) and filter_matches(topicFilter, topic):
            best = max(best, options & 3)
    return best
