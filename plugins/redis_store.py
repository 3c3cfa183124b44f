"""
The Redis L{IMessageStore} (C{[store] plugin = redis}): persistent sessions, retained messages
and wills in a Redis server, so that a session outlives the node that held it and a cluster's
nodes (C{docs/cluster.md}) can hand it to one another.

Why this module is over 500 lines: L{RedisStore} is one writer.  Everything it does (the
journal's events, the group store's changes, the cluster's claims, adoptions and strays) must
reach Redis on its one connection in the broker's order, after whatever was recorded before
it, so each of them goes through the same numbered batch stream (C{_record} / C{_send}) and the
same resend-once rule; split into classes, each would need the stream's private state.  What
could leave did: the Lua scripts are in L{mqttd.plugins.redis_scripts}, the value encoding in
L{mqttd.plugins.redis_values}, and about a hundred of these lines are this docstring's keys.

The journal's events are recorded on the reactor thread and sent as one C{EVALSHA} of the
script C{APPLY} (L{mqttd.plugins.redis_scripts}) per batch, on one connection, so Redis applies
them in the broker's order and each batch as a whole (a Lua script is atomic, and Redis writes
its effects to the append-only file as one transaction).  In C{sync} mode a batch goes at the
end of the reactor turn that recorded it and L{RedisStore.flush} fires once Redis has answered
it; with C{appendfsync always} Redis answers only after the change is on disk, which is the
SQLite store's guarantee.  Batches are pipelined: the next goes before the one before has been
answered, Redis keeping their order; each is numbered, and one lost with its connection is sent
again, in order, and applied once.  Values are written as L{mqttd.plugins.redis_values} says.

Every session's key carries a fencing token, C{fence}: the run of the node that owns it
(L{RedisStore.token}, new for each process).  A write to a session is applied only while the
fence is this run's, checked in the same script, so a node that lost a session (taken over by
another node, or its owner thought dead) can never overwrite it.  A delivery to a session this
run no longer owns is kept for the session in Redis instead (a stray), so the node that owns
it now delivers it: a message acknowledged to its publisher is never dropped by the fence.

Options (C{[plugin:redis]}):
  - C{url}: C{redis://[:PASSWORD@]HOST[:PORT][/DB]}; default C{redis://127.0.0.1:6379/0}.
  - C{prefix}: what every key starts with; default C{mqttd:}.
  - C{node}: the name this broker's sessions and wills are kept under; default C{mqttd}.  A
    cluster's nodes each have their own (C{[cluster] node}).
  - C{durability}, C{flush_ms}: as for the SQLite store.

The keys, for a prefix C{P}, node C{N} and client identifier C{C} (C{docs/cluster.md} has
them with their owners and lifetimes):
  - C{Psession:C}, hash: the session's claim (C{fence}, C{node}) and, for a persistent session
    (C{p} = 1), C{subs} (JSON), C{owner}, C{ei} and C{ea} (Session Expiry Interval and
    deadline), C{seq} (orders the in-flight deliveries).
  - C{Pqueue:C}, list: queued deliveries, C{"QOS RETAIN MID"}, oldest first.
  - C{Pinflight:C}, hash: in-flight deliveries by packet identifier, C{"SEQ STATE QOS RETAIN
    MID"}.
  - C{Pawaiting:C}, hash: inbound QoS 2 packet identifiers awaiting PUBREL, to when they came.
  - C{Pmessage:MID}, hash: a message (C{body}, see L{redis_values.encodeMessage}) and how
    many deliveries reference it (C{refs}); deleted with its last reference.
  - C{Pstrays:C}, list, as the queue: deliveries another run made to the session after it
    lost it, for its owner to take.
  - C{Psessions:N}, set: the client identifiers whose sessions node C{N} owns.
  - C{Pmoved:RUN}, hash: the sessions other runs took from run C{RUN}, and when.
  - C{Papplied:RUN}, string: the number of run C{RUN}'s last batch applied.
  - C{Pwills:N}, hash: the wills of node C{N}'s open connections, by client identifier (in a
    cluster, C{N} is the node's run, L{RedisStore.token}).
  - C{Pgroups}, hash: virtual groups by name (L{dumpGroup}); C{Pgroups:changes}, a count
    every change adds one to, which each broker polls.
  - C{Pstore:retained}, hash: a single broker's retained messages by topic (a cluster keeps
    them in C{Pretained}, L{mqttd.cluster}'s).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.codec.packets import Will
from mqttd.durable import durabilityOptions
from mqttd.interfaces import (
    Group,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message
from mqttd.session import SessionState
from mqttd.store import StoredState

from .polled_groups import PolledGroups
from .redis_scripts import APPLY_SCRIPT, CLAIM_SCRIPT, CONNECT_SCRIPT, STRAYS_SCRIPT
from .redis_values import (
    claimedSessions,
    decodeMessage,
    dumpGroup,
    encodeMessage,
    encodeWill,
    loadGroup,
    readDeliveries,
    readMessages,
    readWills,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "mqttd:"
DEFAULT_NODE = "mqttd"


def _flag(value: bool) -> bytes:
    return b"1" if value else b"0"


# Seconds before the batches a lost connection left unanswered are sent again (they wait, in
# the connection's queue, for it to come back).
RETRY_DELAY = 0.1
# Seconds a closing store waits for Redis to answer what it was sent.
CLOSE_TIMEOUT = 5.0


class _Batch:
    """One EVALSHA of L{redis_scripts.APPLY}: its arguments and who waits for its answer."""

    __slots__ = ("args", "waiters")

    def __init__(self, args: list[Any], waiters: list[Deferred[None]]) -> None:
        self.args = args
        self.waiters = waiters


def _retried(failure: Failure) -> bool:
    """
    Whether a batch that failed so is sent again: a lost connection, one out of order, a
    Redis that lost the script or is still loading its data (restarted).
    """
    import txredisapi

    if failure.check(txredisapi.ConnectionError):
        return True
    # A Redis loading its append-only file after a restart answers LOADING for a while.
    return str(failure.value).startswith(("MQTTDGAP", "NOSCRIPT", "LOADING", "BUSY"))


@dataclass(frozen=True, slots=True)
class Adopted:
    """
    What a dead run left (L{RedisStore.adopt}).

    @ivar state: its persistent sessions, now this run's, and its wills.
    @ivar moved: the persistent sessions other runs took from it, by client id: when (in
        milliseconds, Redis's clock) and their subscriptions.
    """

    state: StoredState
    moved: dict[str, tuple[int, dict[str, int]]]


@dataclass(frozen=True, slots=True)
class Claimed:
    """
    What claiming a connecting client's id found (L{RedisStore.claimClient}).

    @ivar refusedBy: the identity whose session refused the claim, or L{None} if it was made.
    @ivar fence: the run that held the client id before, C{""} when none did.
    @ivar node: that run's node.
    @ivar epoch: how many claims the client id had seen before this one; the run that lost it
        is told, so that it ignores a late word about an older claim.
    @ivar sessions: the persistent session claimed with it, if there is one.
    """

    refusedBy: str | None
    fence: str = ""
    node: str = ""
    epoch: int = 0
    sessions: list[SessionState] = field(default_factory=list)


def connect(url: str) -> Any:
    """
    A txredisapi connection to C{url} that reconnects by itself, speaking bytes (payloads are
    binary); imported here so that nothing Redis-related is loaded without a Redis store.
    """
    import txredisapi

    parts = urlsplit(url)
    db = parts.path.strip("/")
    return txredisapi.lazyConnection(
        parts.hostname or "127.0.0.1",
        parts.port or 6379,
        dbid=int(db) if db else None,
        password=unquote(parts.password) if parts.password else None,
        charset=None,
        convertNumbers=False,
    )


def parseURL(url: str) -> str:
    """
    Check a C{redis://} URL.

    @raise PluginConfigError: naming C{url}, when it is not one.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises for a port that is not a number
    except ValueError as e:
        raise PluginConfigError("url", f"{url!r}: {e}") from None
    db = parts.path.strip("/")
    if parts.scheme != "redis" or not parts.hostname or (db and not db.isdigit()):
        raise PluginConfigError("url", f"expected redis://HOST[:PORT][/DB], got {url!r}")
    return url


@implementer(IMessageStore, IGroupStore)
class RedisStore(PolledGroups):
    """
    L{IMessageStore} in Redis.

    @ivar token: this run's fencing token: the C{fence} of every session it owns.
    @ivar fenced: called with the client ids of sessions whose writes were refused because
        another run owns them now, and the C{(client id, owner node)} of those given a stray
        delivery; L{None} to only log.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        *,
        prefix: str = DEFAULT_PREFIX,
        node: str = DEFAULT_NODE,
        sync: bool = True,
        flushInterval: float = 0.05,
        clustered: bool = False,
        token: Callable[[], str] | None = None,
        disconnect: Callable[[Any], Deferred[Any]] | None = None,
        groupPollInterval: float = 1.0,
    ) -> None:
        """
        @param connect: makes the txredisapi connection (L{connect}), at L{restore}: the
            broker's start, after twistd's fork into the background.
        @param clustered: whether this is a cluster node, whose session registry claims each
            session before saving it (L{claimClient}), whose retained messages the cluster
            keeps, and whose last run's wills a survivor takes (L{adopt}); otherwise this
            broker creates the sessions it saves and keeps everything here.
        @param token: gives this run's fencing token: a cluster node's incarnation, which
            changes when the others buried it during a pause; by default one drawn here.
        @param disconnect: closes the connection, at L{close}; by default its C{disconnect}.
        @param groupPollInterval: seconds between looks for virtual groups other brokers
            changed.
        """
        self._reactor = reactor
        self._connect = connect
        self.redis: Any = None
        self.prefix = prefix
        self.node = node
        if token is None:
            drawn = f"{node}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
            token = lambda: drawn  # noqa: E731
        self._token = token
        self.clustered = clustered
        # Set by close, after which nothing is recorded (the IMessageStore contract).
        self.closed = False
        self._disconnect = disconnect or (lambda redis: redis.disconnect())
        # Virtual groups (IGroupStore): read at restore, then every groupPollInterval seconds
        # once watched, when the count of changes moved.
        self._groups: dict[str, Group] = {}
        self._groupChanges = b""
        self._initGroups(reactor, groupPollInterval, self._pollGroups)
        self._create = b"0" if clustered else b"1"
        self._sync = sync
        self._flushInterval = flushInterval
        self.fenced: Callable[[list[str], list[tuple[str, str]]], None] | None = None
        self._events: list[Any] = []
        # Messages whose body the batch being recorded carries: each goes once per batch.
        self._bodies: set[str] = set()
        self._nextId = 0
        self._idBase = int.from_bytes(os.urandom(8), "big") << 40
        self._timer: IDelayedCall | None = None
        # Waiting for the batch being recorded; the batches sent and not yet answered, oldest
        # first, each with its waiters.
        self._waiters: list[Deferred[None]] = []
        self._sent: deque[_Batch] = deque()
        self._seq = 0
        # The run whose count the batches follow: a new one (a rejoined node) starts its own.
        self._counted = ""
        # After a lost connection: when the batches not answered are sent again.
        self._retry: IDelayedCall | None = None
        # Batched: a batch came due while the one before was still unanswered.
        self._behind = False

    @property
    def token(self) -> str:
        """This run's fencing token: the C{fence} of every session it owns."""
        return self._token()

    def _header(self) -> list[Any]:
        return [self._token(), self.node, self.prefix]

    # Batches

    def _record(self, *event: Any) -> None:
        self._events.extend(event)
        if self._timer is None:
            self._timer = self._reactor.callLater(
                0 if self._sync else self._flushInterval, self._send
            )

    def _send(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._events:
            return
        self._behind = bool(self._sent)
        events, self._events = self._events, []
        self._bodies = set()
        waiters, self._waiters = self._waiters, []
        self._seq += 1
        token = self._token()
        starts = token != self._counted
        self._counted = token
        header = [token, self.node, self.prefix, self._create, str(self._seq), _flag(starts)]
        batch = _Batch([*header, *events], waiters)
        self._sent.append(batch)
        if self._retry is None:
            # (While a retry is due, it goes with the batches before it.)
            self._write(batch)

    def _write(self, batch: _Batch) -> None:
        APPLY_SCRIPT.run(self._connection(), batch.args).addBoth(self._answered, batch)

    def _answered(self, result: Any, batch: _Batch) -> None:
        if batch not in self._sent:
            return  # Answered already: this was a copy sent again.
        if isinstance(result, Failure) and _retried(result):
            # The connection was lost with the batch on it (Redis may or may not have applied
            # it), or an earlier one was: every batch not answered goes again, in order, once
            # the connection is back; the script applies each once.
            if self._retry is None:
                self._retry = self._reactor.callLater(RETRY_DELAY, self._writeAgain)
            return
        # Redis answers in order: this is the oldest batch not answered.
        self._sent.remove(batch)
        if not self._sent:
            self._behind = False
        waiters = batch.waiters
        if isinstance(result, Failure):
            self.log.failure("mqttd's Redis store could not write", result)
            # Not applied, and never sent again: the batches after it start the count anew
            # rather than wait for it.
            self._counted = ""
        else:
            fenced = [cid.decode() for cid in result[0]]
            pairs = result[1]
            strays = [(pairs[j].decode(), pairs[j + 1].decode()) for j in range(0, len(pairs), 2)]
            if fenced or strays:
                if self.fenced is not None:
                    self.fenced(fenced, strays)
                else:
                    self.log.warn(
                        "sessions owned by another broker were not written: {fenced}",
                        fenced=fenced,
                    )
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _abandon(self, done: Deferred[None]) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.log.error(
            "mqttd's Redis store stopped with {batches} batches Redis never answered",
            batches=len(self._sent),
        )
        self._sent.clear()
        done.callback(None)

    def _writeAgain(self) -> None:
        self._retry = None
        redis = self._connection()
        # (A Redis restarted meanwhile has forgotten the script.)
        APPLY_SCRIPT.load(redis).addErrback(lambda _: None)
        for batch in list(self._sent):
            self._write(batch)

    def _messageId(self, message: Message) -> str:
        if message.storeId is None:
            # Unique across the cluster without asking Redis: a random number for this run and
            # a counter below it.
            self._nextId += 1
            message.storeId = self._idBase + self._nextId
        mid = str(message.storeId)
        if mid not in self._bodies:
            self._bodies.add(mid)
            self._record(b"M", mid, encodeMessage(message))
        return mid

    # IMessageStore

    def _connection(self) -> Any:
        # Made at first use, which is the broker's start (restore), with the journal's script
        # loaded ahead of anything else on it.
        if self.redis is None:
            self.redis = self._connect()
            APPLY_SCRIPT.load(self.redis).addErrback(lambda _: None)
        return self.redis

    def restore(self) -> Deferred[StoredState]:
        # What was recorded before the start (groups of the configuration) goes first.
        self._send()
        groups = self._readGroups().addCallback(self._groupsRead, self._groupWrites)
        claimed = CLAIM_SCRIPT.runWhole(self._connection(), [*self._header(), b"node", self.node])
        if self.clustered:
            # The cluster restores its retained messages itself, and the last run's wills go
            # with that run's death (adopt).
            both: Deferred[list[Any]] = gatherResults([claimed, groups], consumeErrors=True)
            return both.addCallback(
                lambda replies: StoredState(sessions=claimedSessions(*replies[0][:2]))
            ).addErrback(_firstError)
        retained = self._connection().execute_command("HGETALL", self.prefix + "store:retained")
        wills = self._connection().execute_command("HGETALL", f"{self.prefix}wills:{self.node}")

        def restored(replies: list[Any]) -> StoredState:
            claim, retainedReply, willsReply, _ = replies
            return StoredState(
                retained=[
                    decodeMessage(retainedReply[j + 1]) for j in range(0, len(retainedReply), 2)
                ],
                sessions=claimedSessions(*claim[:2]),
                wills=readWills(willsReply),
            )

        d: Deferred[list[Any]] = gatherResults(
            [claimed, retained, wills, groups], consumeErrors=True
        )
        return d.addCallback(restored).addErrback(_firstError)

    def claim(self, clientIds: Iterable[str]) -> Deferred[list[SessionState]]:
        """
        Claim the sessions of C{clientIds} for this run (see L{redis_scripts.CLAIM}), after
        every event recorded so far; fires with the persistent ones' state.
        """
        self._send()
        d = CLAIM_SCRIPT.runWhole(self._connection(), [*self._header(), b"client", *clientIds])
        return d.addCallback(lambda reply: claimedSessions(*reply[:2]))

    def adopt(self, node: str, run: str) -> Deferred[Adopted]:
        """
        Claim the persistent sessions the dead run C{run} of C{node} still owned, and take its
        wills, which no other caller then gets.
        """
        self._send()
        d = CLAIM_SCRIPT.runWhole(self._connection(), [*self._header(), b"dead", node, run])

        def adopted(reply: Sequence[Any]) -> Adopted:
            moved = reply[3]
            return Adopted(
                StoredState(sessions=claimedSessions(*reply[:2]), wills=readWills(reply[2])),
                {
                    moved[j].decode(): (int(moved[j + 1]), json.loads(moved[j + 2]))
                    for j in range(0, len(moved), 3)
                },
            )

        return d.addCallback(adopted)

    def claimClient(self, clientId: str, identity: str, refuse: bool) -> Deferred[Claimed]:
        """
        Claim C{clientId} for a client of C{identity} connecting here
        (L{redis_scripts.CONNECT}), after every event recorded so far, unless its session
        belongs to another identity and C{refuse}.
        """
        self._send()
        d = CONNECT_SCRIPT.runWhole(
            self._connection(), [*self._header(), clientId, identity, _flag(refuse)]
        )

        def claimed(reply: Sequence[Any]) -> Claimed:
            if reply[0] == b"refused":
                return Claimed(refusedBy=reply[1].decode())
            _, fence, node, epoch, _, rawSessions, rawBodies = reply
            return Claimed(
                None,
                fence.decode(),
                node.decode(),
                int(epoch),
                claimedSessions(rawSessions, rawBodies),
            )

        return d.addCallback(claimed)

    def takeStrays(self, clientId: str) -> Deferred[list[tuple[Message, int, bool]]]:
        """
        Take the deliveries other runs left for C{clientId}'s session (see
        L{redis_scripts.STRAYS}), now at the end of its queue in Redis, for the broker to add
        to the end of its own.
        """
        self._send()
        d = STRAYS_SCRIPT.runWhole(self._connection(), [*self._header(), clientId])
        return d.addCallback(lambda reply: readDeliveries(reply[0], readMessages(reply[1])))

    def release(self, clientId: str) -> None:
        """
        This node no longer holds C{clientId}: its claim goes, unless a persistent session
        keeps it.
        """
        self._record(b"X", clientId)

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        if self._sync or exactlyOnce:
            if self._events:
                d: Deferred[None] = Deferred()
                self._waiters.append(d)
                if not self._sync:
                    # QoS 2 waits for its step's write; it need not also wait out the interval.
                    self._send()
                return d
            if self._sent:
                d = Deferred()
                self._sent[-1].waiters.append(d)
                return d
            return None
        if self._behind and self._sent:
            # Batched, and Redis has not answered a batch within an interval: the publisher
            # waits (and is not read) until it has, so a crash loses at most that much.
            d = Deferred()
            self._sent[-1].waiters.append(d)
            return d
        return None

    def close(self) -> Deferred[None]:
        self.closed = True
        self._stopGroups()
        self._send()
        done: Deferred[None] = Deferred()
        if self._sent:
            self._sent[-1].waiters.append(done)
            # A Redis that does not come back must not hold the broker's stop for ever.
            late = self._reactor.callLater(CLOSE_TIMEOUT, self._abandon, done)
            done.addBoth(lambda result: late.cancel() if late.active() else None)
        else:
            done.callback(None)

        def disconnect(result: object) -> object:
            if self.redis is None:
                return result
            d: Deferred[object] = self._disconnect(self.redis)
            return d.addBoth(lambda _: result)

        return done.addBoth(disconnect)

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        self._record(b"S", clientId, json.dumps(dict(subscriptions), separators=(",", ":")))

    def sessionDeleted(self, clientId: str) -> None:
        self._record(b"D", clientId)

    def sessionOwned(self, clientId: str, owner: str) -> None:
        self._record(b"O", clientId, owner)

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        self._record(b"E", clientId, str(interval), "" if expiresAt is None else repr(expiresAt))

    def messageQueued(self, clientId: str, message: Message, qos: int, retain: bool) -> None:
        mid = self._messageId(message)
        self._record(b"Q", clientId, f"{qos} {int(retain)} {mid}", mid)

    def messageSent(
        self,
        clientId: str,
        packetId: int,
        message: Message,
        qos: int,
        retain: bool,
        queued: bool,
    ) -> None:
        mid = self._messageId(message)
        state = b"1" if qos == 1 else b"2"
        self._record(
            b"P", clientId, str(packetId), state, str(qos), _flag(retain), mid, _flag(queued)
        )

    def messageReleased(self, clientId: str, packetId: int) -> None:
        self._record(b"R", clientId, str(packetId))

    def messageAcknowledged(self, clientId: str, packetId: int) -> None:
        self._record(b"A", clientId, str(packetId))

    def qos2Received(self, clientId: str, packetId: int, when: float) -> None:
        self._record(b"2", clientId, str(packetId), repr(when))

    def qos2Released(self, clientId: str, packetId: int) -> None:
        self._record(b"3", clientId, str(packetId))

    def willSet(self, clientId: str, will: Will) -> None:
        self._record(b"W", clientId, encodeWill(will))

    def willCleared(self, clientId: str) -> None:
        self._record(b"w", clientId)

    # IGroupStore (IGroupSource: PolledGroups)

    def save(self, group: Group) -> Deferred[None]:
        self._groups[group.name] = group
        return self._groupWritten(b"G", group.name, dumpGroup(group))

    def delete(self, name: str) -> Deferred[None]:
        # Written even for a group not known here: another broker may have just made it.
        self._groups.pop(name, None)
        return self._groupWritten(b"g", name)

    def _groupWritten(self, *event: Any) -> Deferred[None]:
        self._record(*event)
        self._groupsRecorded()
        # Fires with the batch's answer: whoever changed the group is answered once Redis has
        # it (sent at the end of the turn, never before the broker's start).
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _readGroups(self) -> Deferred[list[Any]]:
        # After what this broker recorded: the groups read are never older than its own.
        self._send()
        redis = self._connection()
        return gatherResults(
            [
                redis.execute_command("GET", self.prefix + "groups:changes"),
                redis.execute_command("HGETALL", self.prefix + "groups"),
            ],
            consumeErrors=True,
        )

    def _pollGroups(self) -> Deferred[None]:
        writes = self._groupWrites
        d = self._connection().execute_command("GET", self.prefix + "groups:changes")

        def counted(changes: bytes | None) -> Deferred[None] | None:
            if (changes or b"") == self._groupChanges:
                return None
            return self._readGroups().addCallback(self._groupsRead, writes)

        return d.addCallback(counted).addErrback(self._pollFailed)

    def _groupsRead(self, replies: list[Any], writes: int) -> None:
        changes, flat = replies
        if writes != self._groupWrites:
            # This broker changed a group while they were read: the next poll reads again.
            return
        self._groupChanges = changes or b""
        groups = {}
        for j in range(0, len(flat), 2):
            name = flat[j].decode()
            groups[name] = loadGroup(name, flat[j + 1])
        self._groupsReadBack(groups)

    def _pollFailed(self, failure: Failure) -> None:
        # Retried at the next poll; the groups in memory keep routing meanwhile.
        self.log.failure("cannot read the virtual groups in Redis", failure)

    def retainedSet(self, message: Message) -> None:
        if not self.clustered:
            self._record(b"T", message.topic, encodeMessage(message))

    def retainedDeleted(self, topic: str) -> None:
        if not self.clustered:
            self._record(b"t", topic)


def _firstError(failure: Failure) -> Failure:
    # gatherResults wraps the failure that stopped it; the operator needs the one inside.
    error = failure.value
    if isinstance(error, FirstError):
        inner: Failure = error.subFailure
        return inner
    return failure


@implementer(IPlugin, IPluginFactory)
class RedisStoreFactory:
    """Builds L{RedisStore} from C{[plugin:redis]}."""

    name = "redis"

    def build(self, options: Mapping[str, str], context: PluginContext) -> RedisStore:
        sync, flushInterval = durabilityOptions(options, frozenset({"url", "prefix", "node"}))
        url = parseURL(options.get("url", DEFAULT_URL).strip())
        prefix = options.get("prefix", DEFAULT_PREFIX).strip()
        node = options.get("node", DEFAULT_NODE).strip()
        if not node or any(c.isspace() for c in node):
            raise PluginConfigError("node", f"expected a name without spaces, got {node!r}")
        return RedisStore(
            context.reactor,
            lambda: connect(url),
            prefix=prefix,
            node=node,
            sync=sync,
            flushInterval=flushInterval,
        )


redis = RedisStoreFactory()
