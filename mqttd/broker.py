"""
The broker core's facade: what the protocol, bridges, gateways and the
management API talk to.

It builds the parts (L{Policy}, L{Router}, L{SessionRegistry}), admits
CONNECTs, takes PUBLISH, SUBSCRIBE and the acknowledgements, and acts for
the operator; the parts own the tables (see docs/architecture.md).  It knows
clients only through L{IClientConnection} and durable state only through
L{IMessageStore}; nothing here touches a socket.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
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
from .sessions import SessionRegistry
from .stats import (
    ACL_PUBLISH,
    ACL_SUBSCRIBE,
    DROP_PUBLISH_DENIED,
    DROP_SIZE_LIMIT,
    DROP_SYS_TOPIC,
    Stats,
)
from .store import MemoryStore, StoredState
from .sys import SysTree
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
    Routes messages between sessions, through its parts.

    @ivar policy: the authentication and authorization chains.
    @ivar router: the route table, the retained messages and delivery.
    @ivar registry: the session registry.
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
        self.registry = SessionRegistry(
            config,
            clock,
            self.store,
            self.journal,
            self.stats,
            self.policy,
            self.router,
            self.observing,
            self.sessions,
            self.clients,
            self.clientIdsByUsername,
        )
        # The router's tables, under the names plugins and $SYS know them by.
        self.subscriptions = self.router.subscriptions
        self.shared = self.router.shared
        self.retained = self.router.retained
        self.bridges: dict[str, Bridge] = {}
        self.gateways: dict[str, MQTTSNGateway] = {}
        # Filters starting with these are refused to every client (SUBACK 0x80 / 0x87).
        self.reservedPrefixes: tuple[str, ...] = RESERVED_PREFIXES
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
        for message in state.retained:
            self.retained.set(message.topic, message)
        self.registry.restore(state, self._reserved)
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
        self.registry.stop()
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
        return self.registry.attach(
            conn, packet, listener, allowed, address, clientId, expiryInterval, will
        )

    def resume(self, session: Session, conn: IClientConnection) -> Deferred[None] | None:
        """
        Attach C{conn}, whose CONNACK was written, to its C{session}, once
        its waiting deliveries pass the receive ACL (L{SessionRegistry.resume}).
        """
        return self.registry.resume(session, conn)

    def whenConnected(self, connected: Any, disconnected: Any) -> None:
        """See L{SessionRegistry.whenConnected}."""
        self.registry.whenConnected(connected, disconnected)

    def deliverTo(self, clientId: str, message: Message, qos: int) -> bool:
        """See L{Router.deliverTo}."""
        return self.router.deliverTo(clientId, message, qos)

    def connectionLost(
        self,
        session: Session,
        conn: IClientConnection,
        graceful: bool,
        reason: str = "connection lost",
    ) -> None:
        """C{conn}, attached to C{session}, is gone: see L{SessionRegistry.connectionLost}."""
        self.registry.connectionLost(session, conn, graceful, reason)

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
        """See L{Router.publishWill}."""
        self.router.publishWill(will, client)

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
        """See L{SessionRegistry.kick}."""
        return self.registry.kick(clientId)

    def endSession(self, clientId: str) -> bool:
        """See L{SessionRegistry.endSession}."""
        return self.registry.endSession(clientId)

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
