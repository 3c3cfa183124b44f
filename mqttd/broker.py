"""
The broker core: sessions, routing, retained messages and wills.

It knows clients only through L{IClientConnection} and durable state only
through L{IMessageStore}; nothing here touches a socket.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .codec.packets import (
    SUBACK_FAILURE,
    ConnackCode,
    Connect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Suback,
    Subscribe,
    Unsuback,
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
    Deny,
    IAuthenticator,
    IAuthorizer,
    IBrokerObserver,
    IClientConnection,
    IMessageStore,
    ISubscriberSelector,
)
from .message import Message
from .retain import RetainedMessages
from .session import Session, SessionError, Stats
from .store import MemoryStore, StoredState
from .topics import InvalidTopic, SubscriptionTree, validate_topic_filter

# Highest keepalive a client can ask for; a max_keepalive below it also
# refuses keepalive 0, which would otherwise switch the limit off.
KEEPALIVE_UNLIMITED = 65535
# Authorisation answers cached per client; past this many the client's cache starts afresh, so a
# client walking through endless topics cannot grow the broker's memory.
DECISION_CACHE_SIZE = 1024

Decision = bool | Deferred[bool]


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
        self.store: IMessageStore = store if store is not None else MemoryStore()
        self.sessions: dict[str, Session] = {}
        self.subscriptions = SubscriptionTree()
        self.retained: RetainedMessages[Message] = RetainedMessages()
        self.stats = Stats()
        self.clients: dict[str, ClientInfo] = {}
        self.clientIdsByUsername: dict[str, set[str]] = {}
        self.authenticators = tuple(authenticators)
        self.listenerAuthenticators = {
            name: tuple(chain) for name, chain in (listenerAuthenticators or {}).items()
        }
        self.authorizers = tuple(authorizers)
        self.selectors = tuple(selectors)
        self.observers = tuple(observers)
        self._decisions: dict[str, dict[tuple[Action, str], bool]] = {}
        # A client's receive check still waiting on a Deferred: its later deliveries queue behind.
        self._receiving: dict[str, Deferred[Any]] = {}

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
        for sessionState in state.sessions:
            session = self._newSession(sessionState.clientId, cleanSession=False)
            session.restore(sessionState)
            for topicFilter, qos in session.subscriptions.items():
                self.subscriptions.subscribe(topicFilter, session.clientId, qos)
        for clientId, will in state.wills.items():
            self.publishWill(will)
            self.store.willCleared(clientId)
        self.log.info(
            "Restored {retained} retained messages and {sessions} sessions;"
            " published {wills} wills of connections open at the last stop",
            retained=len(self.retained),
            sessions=len(self.sessions),
            wills=len(state.wills),
        )

    def stop(self) -> Deferred[None]:
        """
        Detach every connection as if its network had failed, publishing its
        will (as mosquitto does at shutdown), then close the store.

        @return: a L{Deferred} firing once the store has everything on disk.
        """
        for session in list(self.sessions.values()):
            conn = session.connection
            if conn is not None:
                self.connectionLost(session, conn, graceful=False)
                conn.close("broker shutting down")
        return maybeDeferred(self.store.close)

    # Connections

    def authenticate(
        self,
        packet: Connect,
        listener: ListenerConfig,
        address: str,
        certificateName: str | None = None,
    ) -> AuthDecision | Deferred[AuthDecision]:
        """
        Ask the listener's authenticator chain about a CONNECT (see
        L{IAuthenticator} for the chain's rule).

        @param address: the peer's host.
        @param certificateName: the name a verified TLS client certificate
            gave the client, which vouches for it when every authenticator
            abstains.
        @return: L{Allow} or L{Deny}, or a L{Deferred} firing with one.
        """
        chain = self.listenerAuthenticators.get(listener.name, self.authenticators)
        if not chain:
            if listener.allow_anonymous or certificateName is not None:
                return Allow()
            return Deny(ConnackCode.NOT_AUTHORIZED, "anonymous clients are refused")
        credentials = Credentials(
            clientId=packet.client_id,
            username=packet.username,
            password=packet.password,
            peerCertificateName=certificateName,
            address=address,
            listener=listener.name,
        )
        return self._authenticateFrom(chain, 0, credentials, listener)

    def _authenticateFrom(
        self,
        chain: Sequence[IAuthenticator],
        start: int,
        credentials: Credentials,
        listener: ListenerConfig,
    ) -> AuthDecision | Deferred[AuthDecision]:
        for index in range(start, len(chain)):
            try:
                result = chain[index].authenticate(credentials)
            except Exception:
                self.log.failure("authenticator {index} failed; refusing", index=index)
                return Deny(ConnackCode.NOT_AUTHORIZED, "authenticator failed")
            if isinstance(result, Deferred):
                return result.addCallbacks(
                    self._authenticatorAnswered,
                    self._authenticatorFailed,
                    callbackArgs=(chain, index, credentials, listener),
                    errbackArgs=(index,),
                )
            if result is not None:
                return result
        if credentials.peerCertificateName is not None or (
            listener.allow_anonymous and credentials.username is None
        ):
            return Allow()
        return Deny(ConnackCode.NOT_AUTHORIZED, "no authenticator accepted the client")

    def _authenticatorAnswered(
        self,
        result: AuthDecision,
        chain: Sequence[IAuthenticator],
        index: int,
        credentials: Credentials,
        listener: ListenerConfig,
    ) -> AuthDecision | Deferred[AuthDecision]:
        if result is not None:
            return result
        return self._authenticateFrom(chain, index + 1, credentials, listener)

    def _authenticatorFailed(self, failure: Any, index: int) -> Deny:
        self.log.failure("authenticator {index} failed; refusing", failure, index=index)
        return Deny(ConnackCode.NOT_AUTHORIZED, "authenticator failed")

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
            C{None} unless C{returnCode} is C{ConnackCode.ACCEPTED}.  The
            caller writes CONNACK, then calls L{Session.resume}.
        """
        config = self.config
        clientId = packet.client_id
        if not clientId:
            if not packet.clean_session or not config.allow_zero_length_clientid:
                # [MQTT-3.1.3-8]
                return ConnackCode.IDENTIFIER_REJECTED, None, False
            # [MQTT-3.1.3-6]
            clientId = "auto-" + uuid.uuid4().hex
        keepalive = packet.keepalive
        if keepalive > config.max_keepalive or (
            keepalive == 0 and config.max_keepalive < KEEPALIVE_UNLIMITED
        ):
            # MQTT 3.1.1 cannot tell a client to use another keepalive, so the
            # connection is refused, as mosquitto does.
            return ConnackCode.IDENTIFIER_REJECTED, None, False

        existing = self.sessions.get(clientId)
        if existing is not None and existing.connection is not None:
            # [MQTT-3.1.4-2]: the older connection goes; its will is published
            # unless the new connection continues the session.
            old = existing.connection
            will = existing.will
            existing.connection = None
            existing.will = None
            if will is not None:
                if packet.clean_session or existing.cleanSession:
                    self.publishWill(will, self.clients.get(clientId))
                self.store.willCleared(clientId)
            old.close("session taken over by a new connection")

        sessionPresent = False
        if existing is not None and (packet.clean_session or existing.cleanSession):
            # [MQTT-3.1.2-6]: a clean session's state is never reused.
            self._discardSession(existing)
            existing = None
        if existing is None:
            session = self._newSession(clientId, packet.clean_session)
            if not packet.clean_session:
                self.store.sessionSaved(clientId, session.subscriptions)
        else:
            session = existing
            sessionPresent = True  # [MQTT-3.2.2-2]
        session.will = packet.will
        if packet.will is not None:
            # Kept even for clean sessions: after a crash, the restarted broker
            # publishes it as the connection's loss demands [MQTT-3.1.2-8].
            self.store.willSet(clientId, packet.will)
        username = allowed.identity if allowed.identity is not None else packet.username
        client = ClientInfo(clientId, username, address, listener.name)
        self._forgetClient(clientId)
        self.clients[clientId] = client
        if username is not None:
            self.clientIdsByUsername.setdefault(username, set()).add(clientId)
        self._decisions.pop(clientId, None)
        if self.observers:
            self._notify("clientConnected", client)
        if sessionPresent and self.authorizers:
            self._recheck(session, client)
        return ConnackCode.ACCEPTED, session, sessionPresent

    def _recheck(self, session: Session, client: ClientInfo) -> None:
        """
        A persistent session resumes: drop the subscriptions its client may
        no longer hold (the rules or the user may have changed since).
        """
        for topicFilter in list(session.subscriptions):
            decision = self._decide(client, Action.SUBSCRIBE, topicFilter)
            if isinstance(decision, Deferred):
                decision.addCallback(self._recheckedSubscription, session, topicFilter)
            else:
                self._recheckedSubscription(decision, session, topicFilter)

    def _recheckedSubscription(self, allowed: bool, session: Session, topicFilter: str) -> None:
        if not allowed and session.subscriptions.pop(topicFilter, None) is not None:
            self.subscriptions.unsubscribe(topicFilter, session.clientId)
            if not session.cleanSession:
                self.store.sessionSaved(session.clientId, session.subscriptions)
            self.log.info(
                "{clientId} lost its subscription to {topicFilter}: the ACL denies it",
                clientId=session.clientId,
                topicFilter=topicFilter,
            )

    def connectionLost(self, session: Session, conn: IClientConnection, graceful: bool) -> None:
        """
        C{conn}, attached to C{session}, is gone.  Publish the will unless the
        client sent DISCONNECT [MQTT-3.1.2-8, MQTT-3.1.2-10]; end a clean
        session, keep a persistent one.
        """
        if session.connection is not conn:
            # Taken over: connect() already settled this connection's will.
            return
        session.connection = None
        will = session.will
        session.will = None
        client = self.clients.get(session.clientId)
        if self.observers and client is not None:
            self._notify("clientDisconnected", client, graceful)
        if will is not None:
            if not graceful:
                self.publishWill(will, client)
            self.store.willCleared(session.clientId)
        if session.cleanSession:
            self._discardSession(session)

    def _newSession(self, clientId: str, cleanSession: bool) -> Session:
        config = self.config
        session = Session(
            clientId,
            cleanSession,
            maxInflight=config.max_inflight,
            maxQueued=config.max_queued_messages,
            maxAwaitingRel=config.max_awaiting_rel,
            awaitRelTimeout=config.await_rel_timeout,
            stats=self.stats,
        )
        if not cleanSession:
            session.journal = self.store
        self.sessions[clientId] = session
        return session

    def _discardSession(self, session: Session) -> None:
        for topicFilter in session.subscriptions:
            self.subscriptions.unsubscribe(topicFilter, session.clientId)
        clientId = session.clientId
        del self.sessions[clientId]
        self._forgetClient(clientId)
        self._decisions.pop(clientId, None)
        self._receiving.pop(clientId, None)
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
        self.stats.messagesReceived += 1
        if qos == 2:
            assert packet.packet_id is not None
            if not session.qos2Received(packet.packet_id, self.clock.seconds()):
                if conn is not None:
                    conn.sendPacket(Pubrec(packet.packet_id))
                return None
        if not self._acceptable(packet):
            return self._acknowledge(session, packet)
        message = Message(packet.topic, packet.payload, qos, packet.retain)
        if not self.authorizers:
            # The publisher is looked up only for those told of it.
            publisher = (
                self.clients.get(session.clientId) if self.observers or self.selectors else None
            )
            if self.observers:
                self._notify("messagePublished", publisher, message)
            self.route(message, publisher)
            return self._acknowledge(session, packet) if qos else None
        client = self.clients[session.clientId]
        decision = self._decide(client, Action.PUBLISH, packet.topic)
        if isinstance(decision, Deferred):
            return decision.addCallback(self._publishDecided, session, packet, message, client)
        return self._publishDecided(decision, session, packet, message, client)

    def _publishDecided(
        self, allowed: bool, session: Session, packet: Publish, message: Message, client: ClientInfo
    ) -> Deferred[None] | None:
        if allowed:
            if self.observers:
                self._notify("messagePublished", client, message)
            self.route(message, client)
        else:
            # As mosquitto: acknowledged, so the client does not resend it forever, but dropped.
            self.stats.messagesDropped += 1
            if self.observers:
                self._notify("messageDropped", client.clientId, message, "publish denied")
        return self._acknowledge(session, packet)

    def _acknowledge(self, session: Session, packet: Publish) -> Deferred[None] | None:
        conn = session.connection
        if conn is not None and packet.qos:
            assert packet.packet_id is not None
            ack = Puback(packet.packet_id) if packet.qos == 1 else Pubrec(packet.packet_id)
            # Acknowledged only once the store holds what routing changed, so
            # a crash cannot lose a message its publisher was told was taken.
            durable = self.store.flush()
            if durable is not None:
                return durable.addCallback(lambda _: conn.sendPacket(ack))
            conn.sendPacket(ack)
        return None

    def _acceptable(self, packet: Publish) -> bool:
        config = self.config
        topic = packet.topic
        if topic.count("/") >= config.max_topic_levels:
            raise SessionError(f"topic has more than {config.max_topic_levels} levels")
        if topic.startswith("$SYS"):
            # The broker alone writes $SYS; the QoS flow still completes so the
            # client does not retry forever.
            self.stats.messagesDropped += 1
            return False
        if config.message_size_limit and len(packet.payload) > config.message_size_limit:
            self.stats.messagesDropped += 1
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
        durable = self.store.flush() if session.journal is not None else None
        if durable is not None:
            return durable.addCallback(lambda _: self._sendPubcomp(session, packetId))
        self._sendPubcomp(session, packetId)
        return None

    def _sendPubcomp(self, session: Session, packetId: int) -> None:
        if session.connection is not None:
            session.connection.sendPacket(Pubcomp(packetId))

    def pubrecReceived(self, session: Session, packetId: int) -> Deferred[None] | None:
        """
        A QoS 2 delivery was received; answer PUBREL once that is durable,
        so a restored broker never re-sends a PUBLISH the client may already
        have released to its application [MQTT-4.3.3-1].
        """
        session.pubrecReceived(packetId)
        durable = self.store.flush() if session.journal is not None else None
        if durable is not None:
            return durable.addCallback(lambda _: session.sendPubrel(packetId))
        session.sendPubrel(packetId)
        return None

    def route(self, message: Message, publisher: ClientInfo | None = None) -> None:
        """
        Store a retained message and deliver C{message} to every matching
        subscriber once, at the lower of the published and the highest granted
        QoS [MQTT-3.3.5-1], with RETAIN=0 [MQTT-3.3.1-9]; then to the
        recipients the selectors add.  Each delivery passes the receive ACL.

        @param publisher: who sent it, for the selectors; L{None} for the
            broker's own messages.
        """
        if message.retain and self.config.retain_available:
            self._retain(message)
        self.stats.messagesRouted += 1
        matches = self.subscriptions.match(message.topic)
        if self.selectors:
            self._routeSelected(message, publisher, matches)
            return
        if not matches:
            return
        sessions = self.sessions
        qos = message.qos
        if self.authorizers or self.observers:
            for clientId, granted in matches.items():
                self._deliverChecked(sessions[clientId], message, granted if granted < qos else qos)
            return
        for clientId, granted in matches.items():
            sessions[clientId].deliver(message, granted if granted < qos else qos)

    def _routeSelected(
        self, message: Message, publisher: ClientInfo | None, matches: Mapping[str, int]
    ) -> None:
        # Neither the tree's cached matches nor a selector's prepared mapping may be changed, so
        # recipients is copied before its first change; a lone mapping is delivered from as is.
        recipients: Mapping[str, int] = matches
        merged: dict[str, int] | None = None
        # One Message per distinct topic override, so its encoded prefix is shared too.
        overridden: dict[str, tuple[Message, dict[str, int]]] = {}
        for selector in self.selectors:
            try:
                selected = selector.select(message, publisher)
                if isinstance(selected, Mapping):
                    if not recipients:
                        recipients = selected
                        continue
                    if merged is None:
                        recipients = merged = dict(recipients)
                    for clientId, wanted in selected.items():
                        if merged.get(clientId, -1) < wanted:
                            merged[clientId] = wanted
                    continue
                for recipient in selected:
                    clientId, wanted = recipient[0], recipient[1]
                    if len(recipient) > 2:
                        topic = recipient[2]
                        entry = overridden.get(topic)
                        if entry is None:
                            override = Message(topic, message.payload, message.qos)
                            entry = overridden[topic] = (override, {})
                        target = entry[1]
                    else:
                        if merged is None:
                            recipients = merged = dict(recipients)
                        target = merged
                    if target.get(clientId, -1) < wanted:
                        target[clientId] = wanted
            except Exception:
                self.log.failure("subscriber selector {selector!r} failed", selector=selector)
        self._deliverAll(message, recipients)
        for override, overrideRecipients in overridden.values():
            self._deliverAll(override, overrideRecipients)

    def _deliverAll(self, message: Message, recipients: Mapping[str, int]) -> None:
        sessions = self.sessions
        qos = message.qos
        if not (self.authorizers or self.observers):
            # As route's own fan-out: a selected group of thousands costs what a topic does.
            for clientId, granted in recipients.items():
                session = sessions.get(clientId)
                if session is not None:
                    session.deliver(message, granted if granted < qos else qos)
            return
        for clientId, granted in recipients.items():
            session = sessions.get(clientId)
            if session is not None:
                self._deliverChecked(session, message, granted if granted < qos else qos)

    def _retain(self, message: Message) -> None:
        if message.payload:
            self.retained.set(message.topic, message)
            self.store.retainedSet(message)
        elif self.retained.delete(message.topic):
            # [MQTT-3.3.1-10, MQTT-3.3.1-11]
            self.store.retainedDeleted(message.topic)

    def publishWill(self, will: Will, client: ClientInfo | None = None) -> None:
        """
        Publish a Last Will as if its client had sent it, so the publish ACL
        applies to it when C{client} is known.
        """
        message = Message(will.topic, will.payload, will.qos, will.retain)
        if not self.authorizers or client is None:
            self.route(message, client)
            return
        decision = self._decide(client, Action.PUBLISH, will.topic)
        if isinstance(decision, Deferred):
            decision.addCallback(self._willDecided, message, client)
        else:
            self._willDecided(decision, message, client)

    def _willDecided(self, allowed: bool, message: Message, client: ClientInfo) -> None:
        if allowed:
            self.route(message, client)
        else:
            self.stats.messagesDropped += 1
            if self.observers:
                self._notify("messageDropped", client.clientId, message, "will denied")

    # Authorisation

    def _decide(self, client: ClientInfo, action: Action, topic: str) -> Decision:
        """
        The authorizer chain's answer for C{client}, from the cache when it
        has one; a Deferred only when an authorizer answered with one.
        """
        cache = self._decisions.get(client.clientId)
        if cache is None:
            cache = self._decisions[client.clientId] = {}
        cached = cache.get((action, topic))
        if cached is not None:
            return cached
        return self._decideFrom(0, client, action, topic, cache)

    def _decideFrom(
        self,
        start: int,
        client: ClientInfo,
        action: Action,
        topic: str,
        cache: dict[tuple[Action, str], bool],
    ) -> Decision:
        authorizers = self.authorizers
        for index in range(start, len(authorizers)):
            try:
                answer = authorizers[index].authorize(client, action, topic)
            except Exception:
                self.log.failure("authorizer {index} failed; denying", index=index)
                return False
            if isinstance(answer, Deferred):
                return answer.addCallbacks(
                    self._authorizerAnswered,
                    self._authorizerFailed,
                    callbackArgs=(index, client, action, topic, cache),
                    errbackArgs=(index,),
                )
            if answer is not None:
                return _remember(cache, action, topic, bool(answer))
        return _remember(cache, action, topic, False)

    def _authorizerAnswered(
        self,
        answer: bool | None,
        index: int,
        client: ClientInfo,
        action: Action,
        topic: str,
        cache: dict[tuple[Action, str], bool],
    ) -> Decision:
        if answer is not None:
            return _remember(cache, action, topic, bool(answer))
        return self._decideFrom(index + 1, client, action, topic, cache)

    def _authorizerFailed(self, failure: Failure, index: int) -> bool:
        # Not cached: the next attempt may find the authorizer's backend up again.
        self.log.failure("authorizer {index} failed; denying", failure, index=index)
        return False

    def authorizationChanged(self) -> None:
        """
        The authorizers' rules changed (a reload): forget every cached
        answer.  Subscriptions already granted stay until their session
        resumes, but each delivery is checked against the new rules.
        """
        self._decisions.clear()

    def _deliverChecked(
        self, session: Session, message: Message, qos: int, retain: bool = False
    ) -> None:
        """
        Deliver through the receive ACL and tell the observers.  Deliveries
        to a client whose check still waits on a Deferred queue behind it,
        keeping that client's order.
        """
        if not self.authorizers:
            self._delivered(True, session, message, qos, retain)
            return
        clientId = session.clientId
        client = self.clients.get(clientId)
        if client is None:
            # Restored from the store and not back since: who it is, and so what it may read,
            # is unknown until it reconnects, and its subscriptions were granted by the ACL.
            session.deliver(message, qos, retain)
            return
        tail = self._receiving.get(clientId)
        waiting: Deferred[Any]
        if tail is None:
            decision = self._decide(client, Action.RECEIVE, message.topic)
            if not isinstance(decision, Deferred):
                self._delivered(decision, session, message, qos, retain)
                return
            waiting = decision
        else:
            waiting = Deferred()
            tail.addBoth(_release, waiting)
            waiting.addCallback(lambda _: self._decide(client, Action.RECEIVE, message.topic))
        waiting.addCallback(self._delivered, session, message, qos, retain)
        waiting.addErrback(self._deliveryFailed, clientId)
        self._receiving[clientId] = waiting
        waiting.addBoth(self._receiveSettled, clientId, waiting)

    def _deliveryFailed(self, failure: Failure, clientId: str) -> None:
        self.log.failure("delivering to {clientId}", failure, clientId=clientId)

    def _receiveSettled(self, ignored: object, clientId: str, waiting: Deferred[Any]) -> None:
        if self._receiving.get(clientId) is waiting:
            del self._receiving[clientId]

    def _delivered(
        self, allowed: bool, session: Session, message: Message, qos: int, retain: bool
    ) -> None:
        if allowed:
            session.deliver(message, qos, retain)
            if self.observers:
                self._notify("messageDelivered", session.clientId, message, qos)
        else:
            self.stats.messagesDropped += 1
            if self.observers:
                self._notify("messageDropped", session.clientId, message, "receive denied")

    # Observers

    def _notify(self, event: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure(
                    "observer {observer!r} failed on {event}", observer=observer, event=event
                )

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
        client = self.clients.get(session.clientId) if self.authorizers else None
        decisions: list[Decision] = []
        for topicFilter, _ in packet.subscriptions:
            try:
                validate_topic_filter(topicFilter, maxLevels)
            except InvalidTopic:
                decisions.append(False)
                continue
            if client is None:
                decisions.append(True)
            else:
                decisions.append(self._decide(client, Action.SUBSCRIBE, topicFilter))
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
        codes = []
        granted = []
        for (topicFilter, qos), ok in zip(packet.subscriptions, allowed, strict=True):
            if not ok:
                codes.append(SUBACK_FAILURE)
                continue
            self.subscriptions.subscribe(topicFilter, session.clientId, qos)
            session.subscriptions[topicFilter] = qos
            codes.append(qos)
            granted.append((topicFilter, qos))
        if granted and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
        if session.connection is not None:
            session.connection.sendPacket(Suback(packet.packet_id, codes))
        client = self.clients.get(session.clientId)
        if self.observers and client is not None:
            for topicFilter, qos in granted:
                self._notify("subscribed", client, topicFilter, qos)
        checked = bool(self.authorizers or self.observers)
        for topicFilter, qos in granted:
            for message in self.retained.matching(topicFilter):
                if checked:
                    self._deliverChecked(session, message, min(qos, message.qos), retain=True)
                else:
                    session.deliver(message, min(qos, message.qos), retain=True)

    def unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        """Remove subscriptions; UNSUBACK always follows [MQTT-3.10.4-5]."""
        removed = False
        for topicFilter in packet.topic_filters:
            if session.subscriptions.pop(topicFilter, None) is not None:
                self.subscriptions.unsubscribe(topicFilter, session.clientId)
                removed = True
        if removed and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
        if session.connection is not None:
            session.connection.sendPacket(Unsuback(packet.packet_id))


def _remember(
    cache: dict[tuple[Action, str], bool], action: Action, topic: str, allowed: bool
) -> bool:
    if len(cache) >= DECISION_CACHE_SIZE:
        cache.clear()
    cache[(action, topic)] = allowed
    return allowed


def _release(ignored: object, waiting: Deferred[Any]) -> None:
    waiting.callback(None)
