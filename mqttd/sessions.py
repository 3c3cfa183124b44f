"""
The session registry: which sessions exist and who owns each client id.

It creates, resumes, takes over, expires and ends sessions, runs the Will
Delay and Session Expiry timers, and keeps who each session's client is.
It routes nothing itself: wills and presence events go to the L{Router} it
is given, and the ACL is asked through the L{Policy}.  The protocol's
packets after CONNECT are the broker's, not its.

Over 500 lines, for a reason: a session's life is one state machine (attach,
take over, resume, lose the connection, expire, delayed will, restore) whose
steps share the same tables and timers; split, each half would have to
reach into the other's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from .codec.packets import ConnackCode, Connect, ProtocolLevel, ReasonCode, Will
from .config import BrokerConfig, ListenerConfig
from .interfaces import (
    Action,
    Allow,
    ClientInfo,
    IClientConnection,
    IMessageStore,
    ISessionRegistry,
)
from .message import Message
from .observers import Observers
from .policy import Policy, aclFilter
from .router import Router
from .session import SESSION_NEVER_EXPIRES, Session, SessionContext
from .stats import Stats
from .store import StoredState
from .sys import presenceMessage
from .timeouts import Timeout, Timeouts


@implementer(ISessionRegistry)
class SessionRegistry:
    """
    Every live session, connected or (persistent) offline.

    @ivar sessions: the sessions by client identifier.
    @ivar clients: who each session's client was when it last connected,
        for the authorizers; absent for a session restored from the store
        until its client comes back.
    @ivar clientIdsByUsername: user name (as in L{clients}) to the client
        identifiers of the sessions it has.
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        clock: IReactorTime,
        store: IMessageStore,
        journal: IMessageStore | None,
        stats: Stats,
        policy: Policy,
        router: Router,
        observing: Observers,
        sessions: dict[str, Session],
        clients: dict[str, ClientInfo],
        clientIdsByUsername: dict[str, set[str]],
    ) -> None:
        """
        @param journal: what persistent sessions journal their QoS 1/2 state
            to, or L{None} for them to keep it in themselves alone.
        @param sessions: the table to keep the sessions in, which the router
            reads; likewise C{clients} and C{clientIdsByUsername}.
        """
        self.config = config
        self.clock = clock
        self.store = store
        self.journal = journal
        self.stats = stats
        self.policy = policy
        self.router = router
        self.observing = observing
        self.sessions = sessions
        self.clients = clients
        self.clientIdsByUsername = clientIdsByUsername
        # What every session shares (see SessionContext).
        self._sessionContext = SessionContext(
            stats,
            maxAwaitingRel=config.max_awaiting_rel,
            awaitRelTimeout=config.await_rel_timeout,
            now=clock.seconds,
        )
        # Called with the ClientInfo once a client's session is resumed (CONNACK written, waiting
        # deliveries re-sent), and once its connection is gone: see whenConnected.
        self._connectedCallbacks: list[Any] = []
        self._disconnectedCallbacks: list[Any] = []
        # Called with the client id of every session that ends (see whenEnded).
        self._endedCallbacks: list[Callable[[str], None]] = []
        # Connections whose sessions wait on the receive ACL before resuming (see resume).
        self._resuming: dict[str, IClientConnection] = {}
        # MQTT 5: the offline sessions that expire, and the wills waiting out their delay.  The
        # expiries share one reactor timer (mqttd.timeouts): a DelayedCall each was ~0.3 KB of
        # every offline session, and a cancelled one stayed in the reactor's heap.
        self._expiries: dict[str, Timeout] = {}
        self._expiryTimeouts = Timeouts(clock)
        # One bound method for all of them, rather than one made per expiry set.
        self._expire = self._sessionExpired
        self._delayedWills: dict[str, tuple[IDelayedCall, Will, ClientInfo | None]] = {}

    def restore(self, state: StoredState, reserved: Callable[[str], bool]) -> None:
        """
        Recreate the persistent sessions of C{state} (with their expiry
        timers and subscriptions) and settle the wills of the connections
        that were open when the broker last stopped.

        @param reserved: whether a filter is reserved for the server; a
            restored subscription to one is dropped.
        """
        now = self.clock.seconds()
        for sessionState in state.sessions:
            clientId = sessionState.clientId
            session = self._newSession(clientId, cleanSession=False)
            session.restore(sessionState)
            lost = [f for f in session.subscriptions if reserved(f)]
            if lost:
                # Granted before the server reserved these topics: no client may hold them.
                for topicFilter in lost:
                    del session.subscriptions[topicFilter]
                self.store.sessionSaved(clientId, session.subscriptions)
                self.log.warn(
                    "{clientId} lost {filters}: topics reserved for the server",
                    clientId=clientId,
                    filters=lost,
                )
            for topicFilter, qos in session.subscriptions.items():
                self.router.addSubscription(topicFilter, clientId, qos)
            interval = session.expiryInterval = sessionState.expiryInterval
            if interval != SESSION_NEVER_EXPIRES:
                # A client connected at the crash lost its connection at the restart.
                expiresAt = sessionState.expiresAt
                if expiresAt is None:
                    expiresAt = now + interval
                    self.store.sessionExpiry(clientId, interval, expiresAt)
                # [MQTT-3.1.2-23]; a session past its deadline ends in the reactor's first turn.
                self._expiries[clientId] = self._expiryTimeouts.set(
                    max(0.0, expiresAt - now), self._expire, session
                )
        for clientId, will in state.wills.items():
            delay = will.properties.will_delay_interval
            if delay and clientId in self.sessions:
                # The crash counts as the connection's loss at the restart: the will waits its
                # whole delay from now, or less if the session ends first [MQTT-3.1.2-8].  The
                # store keeps no deadline for it, so one whose delay was already running at the
                # crash waits again in full: late, never before its client could have come back.
                timer = self.clock.callLater(delay, self._willDelayElapsed, clientId)
                self._delayedWills[clientId] = (timer, will, None)
            else:
                self.router.publishWill(will)
                self.store.willCleared(clientId)

    def stop(self) -> None:
        """
        Detach every connection as if its network had failed, publishing its
        will (as mosquitto does at shutdown); wills still waiting out their
        delay go now, and no session expires any more.
        """
        for session in list(self.sessions.values()):
            conn = session.connection
            if conn is not None:
                self.connectionLost(session, conn, graceful=False, reason="broker shutting down")
                conn.close("broker shutting down", ReasonCode.SERVER_SHUTTING_DOWN)
        for clientId in list(self._delayedWills):
            self._endWillDelay(clientId, publish=True)
        for timeout in self._expiries.values():
            self._expiryTimeouts.cancel(timeout)
        self._expiries.clear()

    # Connections

    def attach(
        self,
        conn: IClientConnection,
        packet: Connect,
        listener: ListenerConfig,
        allowed: Allow,
        address: str,
        clientId: str,
        expiryInterval: int,
        will: Will | None,
    ) -> tuple[int, Session | None, bool]:
        """
        Attach C{clientId}'s session to C{conn}, whose CONNECT the broker
        admitted: create it, or continue it [MQTT-3.2.2-2], taking it over
        from an older connection [MQTT-3.1.4-2]; unless it belongs to another
        identity and C{session_owner_conflict} is C{refuse}.

        @param allowed: the authenticators' answer, naming the identity.
        @param expiryInterval: how long the session outlives the connection.
        @param will: the will to keep (L{None} for none, or one refused).
        @return: C{(returnCode, session, sessionPresent)} as L{Broker.connect}.
        """
        config = self.config
        username = allowed.identity if allowed.identity is not None else packet.username
        # Anonymous clients share the identity "": their sessions are theirs as a group.
        owner = username if username is not None else ""
        existing = self.sessions.get(clientId)
        if existing is not None:
            # The string the session and the registry's keys hold: the CONNECT's copy would
            # be kept as well by the client record, for every reconnection of a client.
            clientId = existing.clientId
        if existing is not None and existing.owner is not None and existing.owner != owner:
            if config.session_owner_conflict == "refuse":
                self.log.warn(
                    "refused {clientId} from {address}: its session belongs to {owner!r},"
                    " not {identity!r}",
                    clientId=clientId,
                    address=address,
                    owner=existing.owner,
                    identity=owner,
                )
                return ConnackCode.NOT_AUTHORIZED, None, False
            self.log.warn(
                "{identity!r} from {address} took client id {clientId}: the session of"
                " {owner!r} is discarded",
                clientId=clientId,
                address=address,
                owner=existing.owner,
                identity=owner,
            )
            # Nothing of it is inherited: its connection goes as for a takeover, then the
            # session itself.
            self._detach(existing, continued=False)
            self._discardSession(existing)
            existing = None
        continued = existing is not None and not (packet.clean_session or existing.cleanSession)
        if existing is not None:
            self._detach(existing, continued)

        sessionPresent = False
        if existing is not None and not continued:
            # [MQTT-3.1.2-6]: a clean session's state is never reused.
            self._discardSession(existing)
            existing = None
        if existing is None:
            session = self._newSession(clientId, expiryInterval == 0)
            session.owner = owner
            if expiryInterval:
                self.store.sessionSaved(clientId, session.subscriptions)
                self.store.sessionOwned(clientId, owner)
        else:
            session = existing
            sessionPresent = True  # [MQTT-3.2.2-2]
            if session.owner is None:
                # Restored from a store that kept no owner: the first identity back claims it.
                self.log.info(
                    "{clientId}'s session had no recorded owner; it now belongs to {owner!r}",
                    clientId=clientId,
                    owner=owner,
                )
                session.owner = owner
                if not session.cleanSession:
                    self.store.sessionOwned(clientId, owner)
            self._cancelExpiry(clientId)
            # Back before its will's delay ran out: the will is not sent [MQTT-3.1.3-9].
            self._endWillDelay(clientId, publish=False)
        if not session.cleanSession and (
            expiryInterval != SESSION_NEVER_EXPIRES
            or session.expiryInterval != SESSION_NEVER_EXPIRES
        ):
            # A 3.1.1 persistent session, never expiring as the store assumes, costs no write.
            self.store.sessionExpiry(clientId, expiryInterval, None)
        session.expiryInterval = expiryInterval
        session.will = will
        if will is not None:
            # Kept even for clean sessions: after a crash, the restarted broker
            # publishes it as the connection's loss demands [MQTT-3.1.2-8].
            self.store.willSet(clientId, will)
        client = ClientInfo(clientId, username, address, listener.name)
        self._forgetClient(clientId)
        self.clients[clientId] = client
        if username is not None:
            self.clientIdsByUsername.setdefault(username, set()).add(clientId)
        self.policy.forget(clientId)
        stats = self.stats
        stats.connects += 1
        if len(self.sessions) > stats.clientsMaximum:
            stats.clientsMaximum = len(self.sessions)
        if self.config.presence_events:
            self._presence(
                "connected", clientId, packet.protocol_level, clean_start=packet.clean_session
            )
        if self.observing.chain:
            self.observing.notify("clientConnected", client)
        if sessionPresent and self.policy.authorizers:
            self._recheck(session, client)
        return ConnackCode.ACCEPTED, session, sessionPresent

    def _detach(self, existing: Session, continued: bool) -> None:
        """
        [MQTT-3.1.4-2]: a new connection for C{existing}'s client id; the
        older connection goes, its will published unless the new connection
        continues the session (at 5.0: and the will was to wait for a
        reconnection [MQTT-3.1.3-9]).
        """
        clientId = existing.clientId
        old = existing.connection
        if old is None:
            old = self._resuming.pop(clientId, None)
            if old is None:
                return
        if self.config.presence_events:
            self._presence(
                "disconnected",
                clientId,
                old.protocolLevel,
                reason="session taken over by a new connection",
                graceful=False,
            )
        will = existing.will
        existing.connection = None
        existing.will = None
        if will is not None:
            if not continued or (
                old.protocolLevel == ProtocolLevel.MQTT_5
                and not will.properties.will_delay_interval
            ):
                self.router.publishWill(will, self.clients.get(clientId))
            self.store.willCleared(clientId)
        # [MQTT-3.1.4-3]
        old.close("session taken over by a new connection", ReasonCode.SESSION_TAKEN_OVER)

    def whenStored(self, session: Session, conn: IClientConnection) -> Deferred[bool] | None:
        """
        Whether C{conn}'s CONNACK must wait for the store: a persistent session's CONNACK
        is written once what the store was told of it is committed (in C{sync} mode; in
        C{batched} mode only while the writer is behind), so that a crash cannot forget a
        session whose client was told it exists (Session Present on its next connection
        [MQTT-3.2.2-2]).  A new session waits for its record; a continued one for its expiry
        or a takeover's changes, or a commit already under way that may hold them.

        @return: L{None} to answer at once; or a L{Deferred} firing with C{True} once the
            session is durable if C{conn} is still its connection, C{False} if C{conn} was
            taken over or lost meanwhile (L{connectionLost} and L{attach} settle it as for a
            connection whose session is being resumed), failing if the store could not write.
        """
        if session.cleanSession:
            return None
        durable = self.store.flush()
        if durable is None:
            return None
        clientId = session.clientId
        self._resuming[clientId] = conn

        def stored(_: None) -> bool:
            if self._resuming.get(clientId) is not conn:
                return False
            del self._resuming[clientId]
            return True

        return durable.addCallback(stored)

    def resume(self, session: Session, conn: IClientConnection) -> Deferred[None] | None:
        """
        Attach C{conn}, whose CONNACK was written, to its C{session}
        (L{Session.resume}): first every delivery waiting in the session
        passes the receive ACL as it stands now, since the rules (a reload)
        or the rights of the identity may have changed while the client was
        away; those denied are dropped and counted.

        @return: L{None}, or a L{Deferred} firing once an authorizer's
            Deferred answers are in and the session is resumed; until then
            the session takes deliveries as an offline one does.
        """
        client = self.clients.get(session.clientId)
        if (
            not self.policy.authorizers
            or client is None
            or not (session.inflight or session.pending)
        ):
            session.resume(conn)
            self._resumed(session)
            return None
        topics = {out.message.topic for out in session.inflight.values()}
        topics.update(message.topic for message, _, _ in session.pending or ())
        decisions = {topic: self.policy.decide(client, Action.RECEIVE, topic) for topic in topics}
        if not any(isinstance(d, Deferred) for d in decisions.values()):
            self._resumeDecided(decisions, session, conn)  # type: ignore[arg-type]
            return None
        self._resuming[session.clientId] = conn
        names = list(decisions)
        waiting = [d if isinstance(d, Deferred) else succeed(d) for d in decisions.values()]

        def decided(answers: list[bool]) -> None:
            if self._resuming.get(session.clientId) is not conn:
                return  # Gone, or taken over, meanwhile.
            del self._resuming[session.clientId]
            self._resumeDecided(dict(zip(names, answers, strict=True)), session, conn)

        return gatherResults(waiting).addCallback(decided)

    def _resumeDecided(
        self, allowed: Mapping[str, bool], session: Session, conn: IClientConnection
    ) -> None:
        dropped = session.withhold(lambda message: not allowed[message.topic])
        if dropped:
            self.log.info(
                "{clientId}: {count} waiting messages dropped on resume: the ACL denies them",
                clientId=session.clientId,
                count=dropped,
            )
        session.resume(conn)
        self._resumed(session)

    def _resumed(self, session: Session) -> None:
        client = self.clients.get(session.clientId)
        if client is None or not self._connectedCallbacks:
            return
        for callback in self._connectedCallbacks:
            try:
                callback(client)
            except Exception:
                self.log.failure("connected callback {callback!r} failed", callback=callback)

    def whenConnected(self, connected: Any, disconnected: Any) -> None:
        """
        Have C{connected(client)} called with the L{ClientInfo} of every
        client whose session has been resumed (CONNACK written, waiting
        deliveries re-sent), so that a plugin can deliver to it what it kept
        meanwhile, and C{disconnected(client)} once its connection is gone.
        """
        self._connectedCallbacks.append(connected)
        self._disconnectedCallbacks.append(disconnected)

    def _recheck(self, session: Session, client: ClientInfo) -> None:
        """
        A persistent session resumes: drop the subscriptions its client may
        no longer hold (the rules or the user may have changed since).
        """
        for topicFilter in list(session.subscriptions):
            decision = self.policy.decide(client, Action.SUBSCRIBE, aclFilter(topicFilter))
            if isinstance(decision, Deferred):
                decision.addCallback(self._recheckedSubscription, session, topicFilter)
            else:
                self._recheckedSubscription(decision, session, topicFilter)

    def _recheckedSubscription(self, allowed: bool, session: Session, topicFilter: str) -> None:
        if not allowed and session.subscriptions.pop(topicFilter, None) is not None:
            self.router.removeSubscription(topicFilter, session.clientId)
            if not session.cleanSession:
                self.store.sessionSaved(session.clientId, session.subscriptions)
            self.log.info(
                "{clientId} lost its subscription to {topicFilter}: the ACL denies it",
                clientId=session.clientId,
                topicFilter=topicFilter,
            )

    def connectionLost(
        self,
        session: Session,
        conn: IClientConnection,
        graceful: bool,
        reason: str = "connection lost",
    ) -> None:
        """
        C{conn}, attached to C{session}, is gone.  Publish the will unless the
        client sent DISCONNECT [MQTT-3.1.2-8, MQTT-3.1.2-10], after its Will
        Delay Interval if the session outlives the connection; end a clean
        session (Session Expiry Interval 0), keep a persistent one until its
        Session Expiry Interval has passed.

        @param reason: why the connection ended, for the presence event.
        """
        if session.connection is not conn:
            if self._resuming.get(session.clientId) is not conn:
                # Taken over: connect() already settled this connection's will.
                return
            del self._resuming[session.clientId]
        session.connection = None
        will = session.will
        session.will = None
        if self.config.presence_events:
            self._presence(
                "disconnected",
                session.clientId,
                conn.protocolLevel,
                reason=reason,
                graceful=graceful,
            )
        client = self.clients.get(session.clientId)
        if self.observing.chain and client is not None:
            self.observing.notify("clientDisconnected", client, graceful)
        if client is not None:
            for callback in self._disconnectedCallbacks:
                try:
                    callback(client)
                except Exception:
                    self.log.failure("disconnected callback {callback!r} failed", callback=callback)
        ends = session.cleanSession or session.expiryInterval == 0
        if will is not None:
            delay = will.properties.will_delay_interval
            if graceful:
                self.store.willCleared(session.clientId)
            elif delay and not ends:
                # Published when the delay runs out, or sooner if the session ends
                # [MQTT-3.1.2-8]; the store keeps it meanwhile, for a restart.
                timer = self.clock.callLater(delay, self._willDelayElapsed, session.clientId)
                self._delayedWills[session.clientId] = (timer, will, client)
            else:
                self.router.publishWill(will, client)
                self.store.willCleared(session.clientId)
        if ends:
            self._discardSession(session)
            return
        interval = session.expiryInterval
        expiresAt = None
        if interval != SESSION_NEVER_EXPIRES:
            # [MQTT-3.1.2-23]: kept for the interval, then ended.
            self._expiries[session.clientId] = self._expiryTimeouts.set(
                interval, self._expire, session
            )
            expiresAt = self.clock.seconds() + interval
        if expiresAt is not None or conn.protocolLevel == ProtocolLevel.MQTT_5:
            # The deadline survives a restart; a 5.0 DISCONNECT may have changed the interval.
            self.store.sessionExpiry(session.clientId, interval, expiresAt)

    def _presence(self, event: str, clientId: str, protocolLevel: int, **extra: object) -> None:
        """
        Publish C{clientId}'s presence event C{event}, as the broker's own
        message: the ACL's receive check decides who gets it.
        """
        client = self.clients.get(clientId)
        body = {
            "clientid": clientId,
            "username": client.username if client is not None else None,
            "address": client.address if client is not None else None,
            "listener": client.listener if client is not None else None,
            "protocol_level": int(protocolLevel),
            **extra,
            "timestamp": round(self.clock.seconds(), 3),
        }
        self.router.route(presenceMessage(clientId, event, body))

    def _sessionExpired(self, session: Session) -> None:
        del self._expiries[session.clientId]
        self.stats.clientsExpired += 1
        self.log.info("{clientId}'s session expired", clientId=session.clientId)
        self._discardSession(session)

    def _cancelExpiry(self, clientId: str) -> None:
        timeout = self._expiries.pop(clientId, None)
        if timeout is not None:
            self._expiryTimeouts.cancel(timeout)

    def _willDelayElapsed(self, clientId: str) -> None:
        _, will, client = self._delayedWills.pop(clientId)
        self.router.publishWill(will, client)
        self.store.willCleared(clientId)

    def _endWillDelay(self, clientId: str, publish: bool) -> None:
        """Settle a will still waiting out its Will Delay Interval, if there is one."""
        entry = self._delayedWills.pop(clientId, None)
        if entry is None:
            return
        timer, will, client = entry
        timer.cancel()
        if publish:
            self.router.publishWill(will, client)
        self.store.willCleared(clientId)

    def _newSession(self, clientId: str, cleanSession: bool) -> Session:
        config = self.config
        context = self._sessionContext
        # Observers may come after the registry: each new session brings the shared context
        # up to date.
        context.acknowledged = self._acknowledged if self.observing.chain else None
        session = Session(
            clientId,
            cleanSession,
            context,
            maxInflight=config.max_inflight,
            maxQueued=config.max_queued_messages,
            maxQueuedBytes=config.max_queued_bytes,
        )
        if not cleanSession:
            session.journal = self.journal
        self.sessions[clientId] = session
        return session

    def _acknowledged(self, clientId: str, message: Message, qos: int) -> None:
        self.observing.notify("messageAcknowledged", clientId, message, qos)

    def handOver(self, clientId: str, continued: bool) -> bool:
        """
        Another cluster node took C{clientId}'s session (L{mqttd.cluster.sessions}): its
        connection here goes as for a takeover [MQTT-3.1.4-2, MQTT-3.1.4-3], its will published
        unless the new connection continues the session, and the session is forgotten here
        without a word to the store, which the new owner writes now.

        @return: whether this node had the session.
        """
        session = self.sessions.get(clientId)
        if session is None:
            return False
        self._detach(session, continued)
        self._endWillDelay(clientId, publish=not continued)
        self._discardSession(session, stored=False)
        return True

    def whenEnded(self, ended: Callable[[str], None]) -> None:
        """Have C{ended(clientId)} called whenever a session ends here (or is handed over)."""
        self._endedCallbacks.append(ended)

    def _discardSession(self, session: Session, stored: bool = True) -> None:
        for topicFilter in session.subscriptions:
            self.router.removeSubscription(topicFilter, session.clientId)
        clientId = session.clientId
        del self.sessions[clientId]
        self._cancelExpiry(clientId)
        # The session ends before its will's delay ran out: the will goes now [MQTT-3.1.2-8].
        self._endWillDelay(clientId, publish=True)
        self._forgetClient(clientId)
        self.policy.forget(clientId)
        self.router.forget(clientId)
        self._resuming.pop(clientId, None)
        if stored and not session.cleanSession:
            self.store.sessionDeleted(session.clientId)
        for ended in self._endedCallbacks:
            ended(clientId)

    def _forgetClient(self, clientId: str) -> None:
        client = self.clients.pop(clientId, None)
        if client is not None and client.username is not None:
            clientIds = self.clientIdsByUsername.get(client.username)
            if clientIds is not None:
                clientIds.discard(clientId)
                if not clientIds:
                    del self.clientIdsByUsername[client.username]

    # Management

    def kick(self, clientId: str) -> bool:
        """
        Disconnect C{clientId}'s client as if its network had failed (its will
        is published), a 5.0 client being told DISCONNECT 0x98 first; a clean
        session ends, a persistent one stays.

        @return: whether the client was connected.
        """
        session = self.sessions.get(clientId)
        conn = session.connection if session is not None else None
        if session is None or conn is None:
            return False
        reason = "disconnected by an administrator"
        self.connectionLost(session, conn, graceful=False, reason=reason)
        conn.close(reason, ReasonCode.ADMINISTRATIVE_ACTION)
        return True

    def endSession(self, clientId: str) -> bool:
        """
        End C{clientId}'s session, disconnecting its client first if it is
        connected.

        @return: whether there was a session.
        """
        self.kick(clientId)
        session = self.sessions.get(clientId)
        if session is None:
            return False
        self._discardSession(session)
        return True
