"""
The broker core's facade: what the protocol, bridges, gateways and the
management API talk to.

It builds the parts (L{Policy}, L{Router}, L{SessionRegistry},
L{Publishing}, L{Subscribing}), admits CONNECTs, hands the packets after it
to the part they are for, and acts for the operator; the parts own the
tables (see docs/architecture.md).  It knows
clients only through L{IClientConnection} and durable state only through
L{IMessageStore}; nothing here touches a socket.

Over 500 lines, for a reason: as the facade it has one short method for each
thing the protocol, the bridges, the MQTT-SN gateway and the HTTP API may ask,
most of them handing over to a part (CONNECT admission, a few checks before
the registry, aside); its length is the breadth of what those callers may ask,
while the logic lives in the parts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .codec.packets import (
    ConnackCode,
    Connect,
    ProtocolLevel,
    Publish,
    ReasonCode,
    Subscribe,
    Unsubscribe,
    Will,
)
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
    IClientIdClaims,
    IEnhancedAuthenticator,
    IMessageStore,
    ISubscriberSelector,
)
from .logsummary import RepeatSummary
from .message import Message
from .observers import Observers
from .policy import Decision, Policy
from .publishing import Publishing
from .router import Router
from .session import SESSION_NEVER_EXPIRES, Session
from .sessions import SessionRegistry
from .stats import Stats
from .store import SessionlessStore, StoredState
from .subscribing import Subscribing
from .sys import SysTree

if TYPE_CHECKING:
    from .bridge.bridge import Bridge
    from .sn.gateway import MQTTSNGateway

# Highest keepalive a client can ask for; a max_keepalive below it also refuses keepalive 0
# from a 3.x client, which would otherwise switch the limit off, if allow_zero_keepalive is off.
KEEPALIVE_UNLIMITED = 65535


_Plugin = TypeVar("_Plugin")


class _Chain(Generic[_Plugin]):
    """
    A plugin chain a part owns, under the name plugins and the service know on L{Broker}:
    reading gives the part's tuple, assigning any sequence stores it as a tuple there.
    """

    def __init__(self, part: str, attribute: str) -> None:
        self.part = part
        self.attribute = attribute

    def __get__(self, broker: object, owner: object = None) -> tuple[_Plugin, ...]:
        chain: tuple[_Plugin, ...] = getattr(getattr(broker, self.part), self.attribute)
        return chain

    def __set__(self, broker: object, chain: Sequence[_Plugin]) -> None:
        setattr(getattr(broker, self.part), self.attribute, tuple(chain))


class Broker:
    """
    Routes messages between sessions, through its parts.

    @ivar policy: the authentication and authorization chains.
    @ivar router: the route table, the retained messages and delivery.
    @ivar registry: the session registry.
    @ivar publishing: what a client's PUBLISH and QoS acknowledgements do.
    @ivar subscribing: what SUBSCRIBE and UNSUBSCRIBE do.
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

    # The chains plugins and the service set, kept by the part that uses them.
    authenticators: _Chain[IAuthenticator] = _Chain("policy", "authenticators")
    authorizers: _Chain[IAuthorizer] = _Chain("policy", "authorizers")
    observers: _Chain[IBrokerObserver] = _Chain("observing", "chain")
    selectors: _Chain[ISubscriberSelector] = _Chain("router", "selectors")

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
        router: Callable[..., Router] = Router,
    ) -> None:
        """
        @param router: builds the route table from L{Router}'s arguments: a cluster node's
            (L{mqttd.cluster.router.ClusterRouter}) also reaches the other nodes.
        """
        self.config = config
        self.clock = clock
        # For $SYS/broker/uptime and the metrics.
        self.startedAt = clock.seconds()
        self.store: IMessageStore = store if store is not None else SessionlessStore()
        # What persistent sessions journal their QoS 1/2 state to.  Without a store given, the
        # broker's own store is one nothing reads back (only this process could restore from
        # it), so sessions keep that state in themselves alone rather than twice, and it keeps
        # no record of them either (SessionlessStore).
        self.journal: IMessageStore | None = store
        self.sessions: dict[str, Session] = {}
        self.stats = Stats()
        # Whether the log keeps the per-connection info lines (connected, disconnected); the
        # service clears it when the log's level is above info, since building an event for the
        # level filter to drop was ~7 % of a connection's set-up CPU (bench S4).
        self.logConnections = True
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
        self.router = router(
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
        self.publishing = Publishing(
            config,
            clock,
            self.store,
            self.stats,
            self.policy,
            self.router,
            self.observing,
            self.sessions,
            self.clients,
        )
        self.subscribing = Subscribing(
            config,
            clock,
            self.store,
            self.stats,
            self.policy,
            self.router,
            self.observing,
            self.sessions,
            self.clients,
        )
        # The router's tables, under the names plugins and $SYS know them by.
        self.subscriptions = self.router.subscriptions
        self.shared = self.router.shared
        self.retained = self.router.retained
        self.bridges: dict[str, Bridge] = {}
        self.gateways: dict[str, MQTTSNGateway] = {}
        # Publishes $SYS once the store is restored, if sys_interval says so.
        self.sysTree: SysTree | None = None
        # Network connections open over all MQTT listeners, for [broker] max_connections.
        self.openConnections = 0
        # This broker's node name in a cluster (docs/cluster.md), for $SYS and the metrics;
        # None for a lone broker.
        self.nodeName: str | None = None
        # A cluster's client id registry (mqttd.cluster.sessions), asked before a client's
        # session is attached here; None on a single broker.
        self.claims: IClientIdClaims | None = None

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
        self.registry.restore(state, self.subscribing.reserved)
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
    def listenerAuthenticators(self) -> dict[str, tuple[IAuthenticator, ...]]:
        """Listener name to that listener's chain (L{Policy.listenerAuthenticators})."""
        return self.policy.listenerAuthenticators

    @listenerAuthenticators.setter
    def listenerAuthenticators(self, chains: Mapping[str, Sequence[IAuthenticator]]) -> None:
        self.policy.listenerAuthenticators = {name: tuple(c) for name, c in chains.items()}

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

    def claim(self, packet: Connect, allowed: Allow) -> Deferred[int | None] | None:
        """
        Ask the cluster (L{claims}) to give this node the client id of C{packet}, whose
        CONNECT the authenticators allowed, before L{connect} attaches it here.

        @return: L{None} on a single broker, or for a client id the broker will assign;
            otherwise see L{IClientIdClaims.claim}.
        """
        if self.claims is None or not packet.client_id:
            return None
        return self.claims.claim(packet, allowed)

    def whenSessionStored(self, session: Session, conn: IClientConnection) -> Deferred[bool] | None:
        """See L{SessionRegistry.whenStored}."""
        return self.registry.whenStored(session, conn)

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
        """See L{Publishing.publishReceived}."""
        return self.publishing.publishReceived(session, packet)

    def pubrelReceived(self, session: Session, packetId: int) -> Deferred[None] | None:
        """See L{Publishing.pubrelReceived}."""
        return self.publishing.pubrelReceived(session, packetId)

    def pubrecReceived(
        self, session: Session, packetId: int, reasonCode: int = ReasonCode.SUCCESS
    ) -> Deferred[None] | None:
        """See L{Publishing.pubrecReceived}."""
        return self.publishing.pubrecReceived(session, packetId, reasonCode)

    def route(self, message: Message, publisher: ClientInfo | None = None) -> bool:
        """
        See L{Router.route}; for the plugins and the operator, whose topics no decoder checked,
        a topic that is no topic name is dropped (and logged) instead.
        """
        if not self.router.publishable(message.topic, "a message routed by a plugin"):
            return False
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
        """See L{Subscribing.subscribe}."""
        return self.subscribing.subscribe(session, packet)

    def unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        """See L{Subscribing.unsubscribe}."""
        self.subscribing.unsubscribe(session, packet)

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
        """See L{Subscribing.subscribeFor}."""
        return self.subscribing.subscribeFor(clientId, topicFilter, qos)

    def unsubscribeFor(self, clientId: str, topicFilter: str) -> bool:
        """See L{Subscribing.unsubscribeFor}."""
        return self.subscribing.unsubscribeFor(clientId, topicFilter)

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

    @property
    def reservedPrefixes(self) -> tuple[str, ...]:
        """Filters starting with these are refused to every client (L{Subscribing})."""
        return self.subscribing.reservedPrefixes

    @reservedPrefixes.setter
    def reservedPrefixes(self, prefixes: tuple[str, ...]) -> None:
        self.subscribing.reservedPrefixes = prefixes
