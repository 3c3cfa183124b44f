"""
The broker core: sessions, routing, retained messages and wills.

It knows clients only through L{IClientConnection} and durable state only
through L{IMessageStore}; nothing here touches a socket.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .codec.packets import (
    SUBACK_FAILURE,
    ConnackCode,
    Connect,
    ProtocolLevel,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from .codec.properties import NO_PROPERTIES
from .config import BrokerConfig, ListenerConfig
from .interfaces import (
    Action,
    Allow,
    AuthDecision,
    ClientInfo,
    Credentials,
    IAuthenticator,
    IAuthorizer,
    IBrokerObserver,
    IClientConnection,
    IEnhancedAuthenticator,
    IMessageStore,
    ISubscriberSelector,
)
from .logsummary import RepeatSummary
from .message import Message, PropertiedMessage
from .observers import Observers
from .policy import Decision, Policy, aclFilter
from .router import (
    QOS_BITS,
    Router,
)
from .session import SESSION_NEVER_EXPIRES, Session, SessionError
from .stats import (
    ACL_PUBLISH,
    ACL_SUBSCRIBE,
    DROP_PUBLISH_DENIED,
    DROP_SIZE_LIMIT,
    DROP_SYS_TOPIC,
    DROP_WILL_DENIED,
    Stats,
)
from .store import MemoryStore, StoredState
from .sys import SysTree, presenceMessage
from .topics import (
    SHARE_PREFIX,
    InvalidTopic,
    validate_topic_filter,
)

if TYPE_CHECKING:
    from .bridge.bridge import Bridge
    from .sn.gateway import MQTTSNGateway

# Highest keepalive a client can ask for; a max_keepalive below it also refuses keepalive 0
# from a 3.x client, which would otherwise switch the limit off, if allow_zero_keepalive is off.
KEEPALIVE_UNLIMITED = 65535
# Topics only the server writes and no client may subscribe to, whatever the ACL says: virtual
# groups' and direct messages' fan-out, and control requests (plugins may reserve more).
RESERVED_PREFIXES = ("$group/", "$p2p/", "$CONTROL/")
# Requests to the server itself: a 5.0 publish there is answered Success though nobody subscribes.
CONTROL_PREFIX = "$CONTROL/"


class Broker:
    """
    Routes messages between sessions.

    @ivar sessions: every live session, connected or (persistent) offline,
        by client identifier.
    @ivar clients: who each session's client was when it last connected,
        for the authorizers; absent for a session restored from the store
        until its client comes back.
    @ivar clientIdsByUsername: user name (as in L{clients}) to the client
        identifiers of the sessions it has, so that a plugin addressing
        users finds their sessions without walking every client.
    @ivar authenticators: the chain for listeners without their own.
    @ivar listenerAuthenticators: listener name to that listener's chain.
    @ivar authorizers: the ACL chain; empty means everything is allowed and
        nothing is asked.
    @ivar bridges: the running bridges to other brokers (L{mqttd.bridge}) by
        name, each a client of this broker, listed for $SYS and metrics.
    @ivar gateways: the listening MQTT-SN gateways (L{mqttd.sn}) by listener
        name, listed for metrics.
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        clock: IReactorTime,
        store: IMessageStore | None = None,
        *,
        authenticators: Sequence[IAuthenticator] = (),
        listenerAuthenticators: Mapping[str, Sequence[IAuthenticator]] | None = None,
        authorizers: Sequence[IAuthorizer] = (),
        selectors: Sequence[ISubscriberSelector] = (),
        observers: Sequence[IBrokerObserver] = (),
    ) -> None:
        self.config = config
        self.clock = clock
        # For $SYS/broker/uptime and the metrics.
        self.startedAt = clock.seconds()
        self.store: IMessageStore = store if store is not None else MemoryStore()
        # What persistent sessions journal their QoS 1/2 state to.  Without a store given, the
        # broker's own MemoryStore is one nothing reads back (only this process could restore
        # from it), so sessions keep that state in themselves alone rather than twice.
        self.journal: IMessageStore | None = store
        self.sessions: dict[str, Session] = {}
        self.stats = Stats()
        self.clients: dict[str, ClientInfo] = {}
        self.clientIdsByUsername: dict[str, set[str]] = {}
        # Lines repeated by one address (refusals, failed logins) are summarised through this.
        self.repeats = RepeatSummary(clock)
        self.policy = Policy(
            self.clients,
            self.repeats,
            authenticators=authenticators,
            listenerAuthenticators=listenerAuthenticators,
            authorizers=authorizers,
        )
        self.observing = Observers(observers)
        self.router = Router(
            config,
            clock,
            self.store,
            self.stats,
            self.policy,
            self.observing,
            self.sessions,
            self.clients,
            selectors,
        )
        # The router's tables, under the names plugins and $SYS know them by.
        self.subscriptions = self.router.subscriptions
        self.shared = self.router.shared
        self.retained = self.router.retained
        self.bridges: dict[str, Bridge] = {}
        self.gateways: dict[str, MQTTSNGateway] = {}
        # Filters starting with these are refused to every client (SUBACK 0x80 / 0x87).
        self.reservedPrefixes: tuple[str, ...] = RESERVED_PREFIXES
        # Called with the ClientInfo once a client's session is resumed (CONNACK written, waiting
        # deliveries re-sent), and once its connection is gone: see whenConnected.
        self._connectedCallbacks: list[Any] = []
        self._disconnectedCallbacks: list[Any] = []
        # Connections whose sessions wait on the receive ACL before resuming (see resume).
        self._resuming: dict[str, IClientConnection] = {}
        # MQTT 5: the offline sessions that expire, and the wills waiting out their delay.
        self._expiries: dict[str, IDelayedCall] = {}
        self._delayedWills: dict[str, tuple[IDelayedCall, Will, ClientInfo | None]] = {}
        # Publishes $SYS once the store is restored, if sys_interval says so.
        self.sysTree: SysTree | None = None
        # Network connections open over all MQTT listeners, for [broker] max_connections.
        self.openConnections = 0

    # Life cycle

    def start(self) -> Deferred[None]:
        """
        Restore retained messages and persistent sessions from the store,
        then publish the wills of connections that were open when the broker
        last stopped: their clients never disconnected, so as far as the
        spec is concerned their network connections failed [MQTT-3.1.2-8].
        """
        return maybeDeferred(self.store.restore).addCallback(self._restored)

    def _restored(self, state: StoredState) -> None:
        now = self.clock.seconds()
        for message in state.retained:
            self.retained.set(message.topic, message)
        for sessionState in state.sessions:
            clientId = sessionState.clientId
            session = self._newSession(clientId, cleanSession=False)
            session.restore(sessionState)
            reserved = [f for f in session.subscriptions if self._reserved(f)]
            if reserved:
                # Granted before the server reserved these topics: no client may hold them.
                for topicFilter in reserved:
                    del session.subscriptions[topicFilter]
                self.store.sessionSaved(clientId, session.subscriptions)
                self.log.warn(
                    "{clientId} lost {filters}: topics reserved for the server",
                    clientId=clientId,
                    filters=reserved,
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
                self._expiries[clientId] = self.clock.callLater(
                    max(0.0, expiresAt - now), self._sessionExpired, session
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
                self.publishWill(will)
                self.store.willCleared(clientId)
        self.log.info(
            "Restored {retained} retained messages and {sessions} sessions;"
            " {wills} wills of connections open at the last stop are published or delayed",
            retained=len(self.retained),
            sessions=len(self.sessions),
            wills=len(state.wills),
        )
        if self.config.sys_interval:
            self.sysTree = SysTree(self, self.config.sys_interval)
            self.sysTree.start()

    def stop(self) -> Deferred[None]:
        """
        Detach every connection as if its network had failed, publishing its
        will (as mosquitto does at shutdown), then close the store.

        @return: a L{Deferred} firing once the store has everything on disk.
        """
        if self.sysTree is not None:
            self.sysTree.stop()
            self.sysTree = None
        for session in list(self.sessions.values()):
            conn = session.connection
            if conn is not None:
                self.connectionLost(session, conn, graceful=False, reason="broker shutting down")
                conn.close("broker shutting down", ReasonCode.SERVER_SHUTTING_DOWN)
        for clientId in list(self._delayedWills):
            self._endWillDelay(clientId, publish=True)
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
        return maybeDeferred(self.store.close)

    # Connections

    def authenticate(
        self,
        packet: Connect,
        listener: ListenerConfig,
        address: str,
        certificateName: str | None = None,
    ) -> AuthDecision | Deferred[AuthDecision]:
        """See L{Policy.authenticate}."""
        return self.policy.authenticate(packet, listener, address, certificateName)

    def credentials(
        self,
        packet: Connect,
        listener: ListenerConfig,
        address: str,
        certificateName: str | None = None,
    ) -> Credentials:
        """See L{Policy.credentials}."""
        return self.policy.credentials(packet, listener, address, certificateName)

    def enhancedAuthenticator(
        self, listener: ListenerConfig, method: str
    ) -> IEnhancedAuthenticator | None:
        """See L{Policy.enhancedAuthenticator}."""
        return self.policy.enhancedAuthenticator(listener, method)

    @property
    def authenticators(self) -> tuple[IAuthenticator, ...]:
        """The chain for listeners without their own (L{Policy.authenticators})."""
        return self.policy.authenticators

    @authenticators.setter
    def authenticators(self, chain: Sequence[IAuthenticator]) -> None:
        self.policy.authenticators = tuple(chain)

    @property
    def listenerAuthenticators(self) -> dict[str, tuple[IAuthenticator, ...]]:
        """Listener name to that listener's chain (L{Policy.listenerAuthenticators})."""
        return self.policy.listenerAuthenticators

    @listenerAuthenticators.setter
    def listenerAuthenticators(self, chains: Mapping[str, Sequence[IAuthenticator]]) -> None:
        self.policy.listenerAuthenticators = {name: tuple(c) for name, c in chains.items()}

    @property
    def authorizers(self) -> tuple[IAuthorizer, ...]:
        """The ACL chain (L{Policy.authorizers})."""
        return self.policy.authorizers

    @authorizers.setter
    def authorizers(self, chain: Sequence[IAuthorizer]) -> None:
        self.policy.authorizers = tuple(chain)

    @property
    def observers(self) -> tuple[IBrokerObserver, ...]:
        """The observers told of what happens (L{Observers.chain})."""
        return self.observing.chain

    @observers.setter
    def observers(self, chain: Sequence[IBrokerObserver]) -> None:
        self.observing.chain = tuple(chain)

    @property
    def selectors(self) -> tuple[ISubscriberSelector, ...]:
        """The plugins adding recipients to each message (L{Router.selectors})."""
        return self.router.selectors

    @selectors.setter
    def selectors(self, chain: Sequence[ISubscriberSelector]) -> None:
        self.router.selectors = tuple(chain)

    def connect(
        self,
        conn: IClientConnection,
        packet: Connect,
        listener: ListenerConfig,
        allowed: Allow,
        address: str = "",
    ) -> tuple[int, Session | None, bool]:
        """
        Decide a CONNECT that L{authenticate} allowed and, if accepted,
        attach a session to C{conn}.

        @param allowed: the authenticators' answer, naming the identity the
            authorizers will see.
        @return: C{(returnCode, session, sessionPresent)}; C{session} is
            C{None} unless C{returnCode} is C{ConnackCode.ACCEPTED}: refused
            (5) when the client id's session belongs to another identity and
            C{session_owner_conflict} is C{refuse}.  The caller writes
            CONNACK, then calls L{resume}.
        """
        config = self.config
        clientId = packet.client_id
        level5 = packet.protocol_level == ProtocolLevel.MQTT_5
        if not clientId:
            # 5.0 assigns an identifier whatever Clean Start says [MQTT-3.1.3-6].
            if not (packet.clean_session or level5) or not config.allow_zero_length_clientid:
                # [MQTT-3.1.3-8]
                return ConnackCode.IDENTIFIER_REJECTED, None, False
            # [MQTT-3.1.3-6]
            clientId = "auto-" + uuid.uuid4().hex
        if self.bridges and any(
            bridge.config.local_client_id == clientId and bridge.localConnection is not conn
            for bridge in self.bridges.values()
        ):
            # A bridge's own session: a client taking it over would cut the bridge.
            return ConnackCode.IDENTIFIER_REJECTED, None, False
        if level5:
            if packet.will is not None and packet.will.retain and not config.retain_available:
                # [MQTT-3.2.2-13]
                return ReasonCode.RETAIN_NOT_SUPPORTED, None, False
            # At 5.0 Clean Start only says whether to resume; how long the session outlives the
            # connection is the Session Expiry Interval, absent meaning 0 (section 3.1.2.11.2).
            expiryInterval = packet.properties.session_expiry_interval or 0
        else:
            keepalive = packet.keepalive
            if keepalive > config.max_keepalive or (
                keepalive == 0
                and config.max_keepalive < KEEPALIVE_UNLIMITED
                and not config.allow_zero_keepalive
            ):
                # MQTT 3.1.1 cannot tell a client to use another keepalive, so the
                # connection is refused, as mosquitto does; 5.0 gets a Server Keep Alive.
                return ConnackCode.IDENTIFIER_REJECTED, None, False
            expiryInterval = 0 if packet.clean_session else SESSION_NEVER_EXPIRES

        will = packet.will
        if will is not None and will.topic.startswith("$"):
            # $ topics are the server's: a will there could plant a retained $SYS message or
            # speak in a group in the client's name after it is gone.  The connection is still
            # accepted, as bridges (mosquitto's notifications) set such wills.
            self.log.info(
                "{clientId}'s will on {topic}, a server topic, will never be published",
                clientId=clientId,
                topic=will.topic,
            )
            will = None
        username = allowed.identity if allowed.identity is not None else packet.username
        # Anonymous clients share the identity "": their sessions are theirs as a group.
        owner = username if username is not None else ""
        existing = self.sessions.get(clientId)
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
                self.publishWill(will, self.clients.get(clientId))
            self.store.willCleared(clientId)
        # [MQTT-3.1.4-3]
        old.close("session taken over by a new connection", ReasonCode.SESSION_TAKEN_OVER)

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

    def deliverTo(self, clientId: str, message: Message, qos: int) -> bool:
        """See L{Router.deliverTo}."""
        return self.router.deliverTo(clientId, message, qos)

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
                self.publishWill(will, client)
                self.store.willCleared(session.clientId)
        if ends:
            self._discardSession(session)
            return
        interval = session.expiryInterval
        expiresAt = None
        if interval != SESSION_NEVER_EXPIRES:
            # [MQTT-3.1.2-23]: kept for the interval, then ended.
            self._expiries[session.clientId] = self.clock.callLater(
                interval, self._sessionExpired, session
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
        self.route(presenceMessage(clientId, event, body))

    def _sessionExpired(self, session: Session) -> None:
        del self._expiries[session.clientId]
        self.stats.clientsExpired += 1
        self.log.info("{clientId}'s session expired", clientId=session.clientId)
        self._discardSession(session)

    def _cancelExpiry(self, clientId: str) -> None:
        timer = self._expiries.pop(clientId, None)
        if timer is not None:
            timer.cancel()

    def _willDelayElapsed(self, clientId: str) -> None:
        _, will, client = self._delayedWills.pop(clientId)
        self.publishWill(will, client)
        self.store.willCleared(clientId)

    def _endWillDelay(self, clientId: str, publish: bool) -> None:
        """Settle a will still waiting out its Will Delay Interval, if there is one."""
        entry = self._delayedWills.pop(clientId, None)
        if entry is None:
            return
        timer, will, client = entry
        timer.cancel()
        if publish:
            self.publishWill(will, client)
        self.store.willCleared(clientId)

    def _newSession(self, clientId: str, cleanSession: bool) -> Session:
        config = self.config
        session = Session(
            clientId,
            cleanSession,
            maxInflight=config.max_inflight,
            maxQueued=config.max_queued_messages,
            maxQueuedBytes=config.max_queued_bytes,
            maxAwaitingRel=config.max_awaiting_rel,
            awaitRelTimeout=config.await_rel_timeout,
            stats=self.stats,
        )
        if not cleanSession:
            session.journal = self.journal
        if self.observing.chain:
            session.acknowledged = self._acknowledged
        session.now = self.clock.seconds
        self.sessions[clientId] = session
        return session

    def _acknowledged(self, clientId: str, message: Message, qos: int) -> None:
        self.observing.notify("messageAcknowledged", clientId, message, qos)

    def _discardSession(self, session: Session) -> None:
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
        if not session.cleanSession:
            self.store.sessionDeleted(session.clientId)

    def _forgetClient(self, clientId: str) -> None:
        client = self.clients.pop(clientId, None)
        if client is not None and client.username is not None:
            clientIds = self.clientIdsByUsername.get(client.username)
            if clientIds is not None:
                clientIds.discard(clientId)
                if not clientIds:
                    del self.clientIdsByUsername[client.username]

    # Messages

    def publishReceived(self, session: Session, packet: Publish) -> Deferred[None] | None:
        """
        Route an inbound PUBLISH and acknowledge it: exactly once for QoS 2,
        by routing on first receipt and answering resends with PUBREC only
        [MQTT-4.3.3-2].

        @return: C{None} when done, or a L{Deferred} firing when done; the
            protocol holds the client's later packets until then.
        @raise SessionError: the client broke a session limit.
        """
        conn = session.connection
        qos = packet.qos
        stats = self.stats
        stats.publishReceived[qos] += 1
        stats.publishPayloadReceived[qos] += len(packet.payload)
        if qos == 2:
            assert packet.packet_id is not None
            if not session.qos2Received(packet.packet_id, self.clock.seconds()):
                if conn is not None:
                    conn.sendPacket(Pubrec(packet.packet_id))
                return None
        if not self._acceptable(packet):
            return self._acknowledge(session, packet)
        # No client's message is ever retained under a $ topic: those are the server's.
        retain = packet.retain and not packet.topic.startswith("$")
        if packet.properties is NO_PROPERTIES:
            message = Message(packet.topic, packet.payload, qos, retain)
        else:
            message = PropertiedMessage(
                packet.topic,
                packet.payload,
                qos,
                retain,
                packet.properties,
                self.clock.seconds(),
            )
        message.publisherId = session.clientId
        if not self.policy.authorizers:
            # The publisher is looked up only for those told of it.
            publisher = (
                self.clients.get(session.clientId)
                if self.observing.chain or self.selectors
                else None
            )
            if self.observing.chain:
                self.observing.notify("messagePublished", publisher, message)
            matched = self.route(message, publisher)
            if not qos:
                return None
            return self._acknowledge(session, packet, self._receipt(session, packet, matched))
        client = self.clients[session.clientId]
        decision = self.policy.decide(client, Action.PUBLISH, packet.topic)
        if isinstance(decision, Deferred):
            return decision.addCallback(self._publishDecided, session, packet, message, client)
        return self._publishDecided(decision, session, packet, message, client)

    def _publishDecided(
        self, allowed: bool, session: Session, packet: Publish, message: Message, client: ClientInfo
    ) -> Deferred[None] | None:
        if allowed:
            if self.observing.chain:
                self.observing.notify("messagePublished", client, message)
            matched = self.route(message, client)
            return self._acknowledge(session, packet, self._receipt(session, packet, matched))
        else:
            # As mosquitto: acknowledged, so the client does not resend it forever, but dropped.
            self.stats.drop(DROP_PUBLISH_DENIED)
            self.stats.aclDenied[ACL_PUBLISH] += 1
            self.policy.logDenied(client.clientId, "publish to", message.topic)
            if self.observing.chain:
                self.observing.notify("messageDropped", client.clientId, message, "publish denied")
            conn = session.connection
            if conn is not None and conn.protocolLevel == ProtocolLevel.MQTT_5 and packet.qos:
                # A 5.0 client is told: 0x87 in PUBACK or PUBREC.  After a PUBREC of 0x80 or
                # more the identifier is free, its next PUBLISH a new message [MQTT-4.3.3-9].
                if packet.qos == 2:
                    session.pubrelReceived(packet.packet_id)  # type: ignore[arg-type]
                return self._acknowledge(session, packet, ReasonCode.NOT_AUTHORIZED)
        return self._acknowledge(session, packet)

    def _acknowledge(
        self, session: Session, packet: Publish, reasonCode: int = ReasonCode.SUCCESS
    ) -> Deferred[None] | None:
        conn = session.connection
        if conn is not None and packet.qos:
            assert packet.packet_id is not None
            ack = (
                Puback(packet.packet_id, reasonCode)
                if packet.qos == 1
                else Pubrec(packet.packet_id, reasonCode)
            )
            # Acknowledged only once the store holds what routing changed, so
            # a crash cannot lose a message its publisher was told was taken.
            return self._whenDurable(packet.qos == 2, conn.sendPacket, ack)
        return None

    def _whenDurable(
        self, exactlyOnce: bool, answer: Callable[..., None], *args: object
    ) -> Deferred[None] | None:
        """
        Call C{answer(*args)} once the store has made what it was told so
        far as durable as it promises (see L{IMessageStore.flush}).

        @param exactlyOnce: the answer is a step of a QoS 2 exchange, which
            waits for the disk in every durability mode; a store writing in
            batches then answers later without holding the client's next
            packets, so QoS 2 keeps its pace through the in-flight window.
        @return: a L{Deferred} holding the client's later packets until it
            fires, or L{None}.
        """
        store = self.store
        held = store.flush()
        if held is not None:
            held.addCallback(self._flushed, self.clock.seconds())
            return held.addCallback(lambda _: answer(*args))
        if exactlyOnce:
            durable = store.flush(True)
            if durable is not None:
                # A failed write was logged by the store; the client's resend will retry.
                durable.addCallback(lambda _: answer(*args)).addErrback(lambda _: None)
                return None
        answer(*args)
        return None

    def _receipt(self, session: Session, packet: Publish, matched: bool) -> int:
        # An MQTT 5 receipt: 0x10 when the message reached no subscriber and no selected
        # recipient; a control request is the server's to take, so it is a Success.
        conn = session.connection
        if (
            matched
            or conn is None
            or conn.protocolLevel != ProtocolLevel.MQTT_5
            or packet.topic.startswith(CONTROL_PREFIX)
        ):
            return ReasonCode.SUCCESS
        return ReasonCode.NO_MATCHING_SUBSCRIBERS

    def _flushed(self, result: None, requested: float) -> None:
        self.stats.storeFlush.observe(self.clock.seconds() - requested)
        return result

    def _acceptable(self, packet: Publish) -> bool:
        config = self.config
        topic = packet.topic
        if topic.count("/") >= config.max_topic_levels:
            raise SessionError(
                f"topic has more than {config.max_topic_levels} levels",
                ReasonCode.TOPIC_NAME_INVALID,
            )
        if topic.startswith("$SYS"):
            # The broker alone writes $SYS; the QoS flow still completes so the
            # client does not retry forever.
            self.stats.drop(DROP_SYS_TOPIC)
            return False
        if config.message_size_limit and len(packet.payload) > config.message_size_limit:
            self.stats.drop(DROP_SIZE_LIMIT)
            return False
        return True

    def pubrelReceived(self, session: Session, packetId: int) -> Deferred[None] | None:
        """
        Release an inbound QoS 2 message; always answered [MQTT-4.3.3-1],
        once the release is durable: a client may reuse the identifier after
        PUBCOMP, and a restored broker still holding it would drop the new
        message as a resend.
        """
        session.pubrelReceived(packetId)
        if session.journal is None:
            self._sendPubcomp(session, packetId)
            return None
        return self._whenDurable(True, self._sendPubcomp, session, packetId)

    def _sendPubcomp(self, session: Session, packetId: int) -> None:
        if session.connection is not None:
            session.connection.sendPacket(Pubcomp(packetId))

    def pubrecReceived(
        self, session: Session, packetId: int, reasonCode: int = ReasonCode.SUCCESS
    ) -> Deferred[None] | None:
        """
        A QoS 2 delivery was received; answer PUBREL once that is durable,
        so a restored broker never re-sends a PUBLISH the client may already
        have released to its application [MQTT-4.3.3-1].  A 5.0 client's
        refusal (a reason code of 0x80 or more) ends the delivery instead.
        """
        if reasonCode >= ReasonCode.UNSPECIFIED_ERROR:
            session.pubrecRefused(packetId)
            return None
        session.pubrecReceived(packetId)
        if session.journal is None:
            session.sendPubrel(packetId)
            return None
        return self._whenDurable(True, session.sendPubrel, packetId)

    def route(self, message: Message, publisher: ClientInfo | None = None) -> bool:
        """See L{Router.route}."""
        return self.router.route(message, publisher)

    def publishWill(self, will: Will, client: ClientInfo | None = None) -> None:
        """
        Publish a Last Will as if its client had sent it, so the publish ACL
        applies to it when C{client} is known.  A will on a C{$} topic (kept
        by a store from before such CONNECTs were refused) is dropped.
        """
        if will.topic.startswith("$"):
            self.stats.drop(DROP_WILL_DENIED)
            self.log.warn("a will on {topic}, a server topic, is dropped", topic=will.topic)
            return
        message: Message
        if will.properties is NO_PROPERTIES:
            message = Message(will.topic, will.payload, will.qos, will.retain)
        else:
            message = PropertiedMessage(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                will.properties,
                self.clock.seconds(),
            )
        if not self.policy.authorizers or client is None:
            self.route(message, client)
            return
        decision = self.policy.decide(client, Action.PUBLISH, will.topic)
        if isinstance(decision, Deferred):
            decision.addCallback(self._willDecided, message, client)
        else:
            self._willDecided(decision, message, client)

    def _willDecided(self, allowed: bool, message: Message, client: ClientInfo) -> None:
        if allowed:
            self.route(message, client)
        else:
            self.stats.drop(DROP_WILL_DENIED)
            self.stats.aclDenied[ACL_PUBLISH] += 1
            self.policy.logDenied(client.clientId, "will to", message.topic)
            if self.observing.chain:
                self.observing.notify("messageDropped", client.clientId, message, "will denied")

    # Authorisation

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Decision:
        """
        The ACL chain's answer for C{client} (C{True} when no authorizer is configured), cached
        as every answer is: for a gateway that checks messages arriving outside a session
        (MQTT-SN's QoS -1).
        """
        return self.policy.authorize(client, action, topic)

    def setWill(self, session: Session, will: Will | None) -> None:
        """
        Replace (or with L{None} remove) the will of C{session}'s live connection, as an
        MQTT-SN client's WILLTOPICUPD and WILLMSGUPD do; the store keeps it for a restart.
        """
        session.will = will
        if will is None:
            self.store.willCleared(session.clientId)
        else:
            self.store.willSet(session.clientId, will)

    def authorizationChanged(self) -> None:
        """The authorizers' rules changed (a reload): see L{Policy.changed}."""
        self.policy.changed()

    # Subscriptions

    def subscribe(self, session: Session, packet: Subscribe) -> Deferred[None] | None:
        """
        Add or replace subscriptions [MQTT-3.8.4-3], answer SUBACK with one
        code per filter (0x80 for an invalid filter or one the ACL denies)
        [MQTT-3.8.4-5], then send the retained messages they match with
        RETAIN=1 [MQTT-3.3.1-8].

        @return: L{None}, or a L{Deferred} firing once an authorizer's
            Deferred answers are in and SUBACK is written.
        """
        maxLevels = self.config.max_topic_levels
        client = self.clients.get(session.clientId) if self.policy.authorizers else None
        decisions: list[Decision] = []
        for topicFilter, _ in packet.subscriptions:
            try:
                validate_topic_filter(topicFilter, maxLevels)
            except InvalidTopic:
                decisions.append(False)
                continue
            if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
                decisions.append(False)
                continue
            if self._reserved(topicFilter):
                # Whatever the ACL says: no client reads the server's fan-out topics.
                decisions.append(False)
                continue
            if client is None:
                decisions.append(True)
            else:
                decisions.append(
                    self.policy.decide(client, Action.SUBSCRIBE, aclFilter(topicFilter))
                )
        if any(isinstance(d, Deferred) for d in decisions):
            waiting = [d if isinstance(d, Deferred) else succeed(d) for d in decisions]
            return gatherResults(waiting).addCallback(self._subscribeDecided, session, packet)
        self._subscribeDecided(decisions, session, packet)  # type: ignore[arg-type]
        return None

    def _subscribeDecided(
        self, allowed: Sequence[bool], session: Session, packet: Subscribe
    ) -> None:
        if self.sessions.get(session.clientId) is not session:
            # Taken over or ended while an authorizer was answering.
            return
        conn = session.connection
        level5 = conn is not None and conn.protocolLevel == ProtocolLevel.MQTT_5
        codes = []
        granted = []
        # A 5.0 SUBSCRIBE's Subscription Identifier names each of its subscriptions; kept above
        # the options byte, so the one int the tree and the store hold per subscription has it.
        identifiers = packet.properties.subscription_identifiers
        identifier = identifiers[0] << 8 if identifiers else 0
        if identifier:
            session.identified = True
        for (topicFilter, requested), ok in zip(packet.subscriptions, allowed, strict=True):
            options = requested | identifier
            if not ok:
                failure = self._subscribeFailure(topicFilter)
                if failure == ReasonCode.NOT_AUTHORIZED:
                    self.stats.aclDenied[ACL_SUBSCRIBE] += 1
                    self.policy.logDenied(session.clientId, "subscribe to", topicFilter)
                codes.append(failure if level5 else SUBACK_FAILURE)
                continue
            new = topicFilter not in session.subscriptions
            self.router.addSubscription(topicFilter, session.clientId, options)
            session.subscriptions[topicFilter] = options
            codes.append(options & QOS_BITS)
            granted.append((topicFilter, options, new))
        durable = None
        if granted and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
            # Granted once the subscription is as durable as the store promises, and before
            # the retained messages it brings, which the session holds behind it.
            durable = self.store.flush()
        if conn is not None:
            session.hold(durable, conn.sendPacket, Suback(packet.packet_id, codes))
        client = self.clients.get(session.clientId)
        if self.observing.chain and client is not None:
            for topicFilter, options, _ in granted:
                self.observing.notify("subscribed", client, topicFilter, options & QOS_BITS)
        for topicFilter, options, new in granted:
            self.router.sendRetained(session, topicFilter, options, new)

    def unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        """
        Remove subscriptions; UNSUBACK always follows [MQTT-3.10.4-5], at 5.0
        with a reason code for each filter [MQTT-3.11.3-1].
        """
        removed = []
        codes: list[int] = []
        for topicFilter in packet.topic_filters:
            if session.subscriptions.pop(topicFilter, None) is not None:
                self.router.removeSubscription(topicFilter, session.clientId)
                removed.append(topicFilter)
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        if removed and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
        client = self.clients.get(session.clientId)
        if self.observing.chain and client is not None:
            for topicFilter in removed:
                self.observing.notify("unsubscribed", client, topicFilter)
        conn = session.connection
        if conn is not None:
            level5 = conn.protocolLevel == ProtocolLevel.MQTT_5
            conn.sendPacket(Unsuback(packet.packet_id, codes if level5 else []))

    # Management: what an operator does through the HTTP API or mqttd ctl

    def publish(self, message: Message) -> None:
        """
        Publish C{message} on the operator's behalf: the observers are told
        (with no client), then it is routed like any client's message.
        """
        self.stats.messagesReceived += 1
        if self.observing.chain:
            self.observing.notify("messagePublished", None, message)
        self.route(message)

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

    def subscribeFor(self, clientId: str, topicFilter: str, qos: int) -> bool:
        """
        Subscribe C{clientId}'s session to C{topicFilter} at C{qos} on the
        operator's authority (no SUBSCRIBE, no SUBACK, no subscribe ACL; the
        receive ACL still applies to each delivery), then send the retained
        messages it matches.

        @return: whether the session exists.
        @raise InvalidTopic: C{topicFilter} is not a valid filter.
        """
        validate_topic_filter(topicFilter, self.config.max_topic_levels)
        if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
            raise InvalidTopic("shared subscriptions are turned off", None)
        if self._reserved(topicFilter):
            raise InvalidTopic("topics reserved for the server cannot be subscribed to", None)
        session = self.sessions.get(clientId)
        if session is None:
            return False
        new = topicFilter not in session.subscriptions
        self.router.addSubscription(topicFilter, clientId, qos)
        session.subscriptions[topicFilter] = qos
        if not session.cleanSession:
            self.store.sessionSaved(clientId, session.subscriptions)
        client = self.clients.get(clientId)
        if self.observing.chain and client is not None:
            self.observing.notify("subscribed", client, topicFilter, qos)
        self.router.sendRetained(session, topicFilter, qos, new)
        return True

    def unsubscribeFor(self, clientId: str, topicFilter: str) -> bool:
        """
        Remove C{clientId}'s subscription to C{topicFilter}, without UNSUBACK.

        @return: whether there was one.
        """
        session = self.sessions.get(clientId)
        if session is None or session.subscriptions.pop(topicFilter, None) is None:
            return False
        self.router.removeSubscription(topicFilter, clientId)
        if not session.cleanSession:
            self.store.sessionSaved(clientId, session.subscriptions)
        client = self.clients.get(clientId)
        if self.observing.chain and client is not None:
            self.observing.notify("unsubscribed", client, topicFilter)
        return True

    def deleteRetained(self, topic: str) -> bool:
        """
        Forget the retained message of C{topic}, as a retained PUBLISH with
        an empty payload would [MQTT-3.3.1-10].

        @return: whether there was one.
        """
        if not self.retained.delete(topic):
            return False
        self.store.retainedDeleted(topic)
        return True

    def _reserved(self, topicFilter: str) -> bool:
        return aclFilter(topicFilter).startswith(self.reservedPrefixes)

    def _subscribeFailure(self, topicFilter: str) -> int:
        # The 5.0 SUBACK says why: a valid filter was refused as shared or by the ACL.
        try:
            validate_topic_filter(topicFilter, self.config.max_topic_levels)
        except InvalidTopic:
            return ReasonCode.TOPIC_FILTER_INVALID
        if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
            return ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        return ReasonCode.NOT_AUTHORIZED
