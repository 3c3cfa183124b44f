"""
The broker core: sessions, routing, retained messages and wills.

It knows clients only through L{IClientConnection} and durable state only
through L{IMessageStore}; nothing here touches a socket.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

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
from .interfaces import IClientConnection, IMessageStore
from .message import Message
from .retain import RetainedMessages
from .session import Session, SessionError, Stats
from .store import MemoryStore
from .topics import InvalidTopic, SubscriptionTree, validate_topic_filter

# Highest keepalive a client can ask for; a max_keepalive below it also
# refuses keepalive 0, which would otherwise switch the limit off.
KEEPALIVE_UNLIMITED = 65535


class Broker:
    """
    Routes messages between sessions.

    @ivar sessions: every live session, connected or (persistent) offline,
        by client identifier.
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        clock: IReactorTime,
        store: IMessageStore | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store: IMessageStore = store if store is not None else MemoryStore()
        self.sessions: dict[str, Session] = {}
        self.subscriptions = SubscriptionTree()
        self.retained: RetainedMessages[Message] = RetainedMessages()
        self.stats = Stats()

    # Life cycle

    def start(self) -> Deferred[None]:
        """Restore retained messages and persistent sessions from the store."""
        return maybeDeferred(self.store.restore).addCallback(self._restored)

    def _restored(self, state: tuple[Any, Any]) -> None:
        retained, sessions = state
        for message in retained:
            self.retained.set(message.topic, message)
        for sessionState in sessions:
            session = self._newSession(sessionState.clientId, cleanSession=False)
            session.restore(sessionState)
            for topicFilter, qos in session.subscriptions.items():
                self.subscriptions.subscribe(topicFilter, session.clientId, qos)
        self.log.info(
            "Restored {retained} retained messages and {sessions} sessions",
            retained=len(self.retained),
            sessions=len(self.sessions),
        )

    def stop(self) -> None:
        """Save every persistent session, connected or not."""
        for session in self.sessions.values():
            if not session.cleanSession:
                self.store.sessionSaved(session.snapshot())

    # Connections

    def connect(
        self, conn: IClientConnection, packet: Connect, listener: ListenerConfig
    ) -> tuple[int, Session | None, bool]:
        """
        Decide a CONNECT and, if accepted, attach a session to C{conn}.

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
        if not listener.allow_anonymous:
            return ConnackCode.NOT_AUTHORIZED, None, False

        existing = self.sessions.get(clientId)
        if existing is not None and existing.connection is not None:
            # [MQTT-3.1.4-2]: the older connection goes; its will is published
            # unless the new connection continues the session.
            old = existing.connection
            will = existing.will
            existing.connection = None
            existing.will = None
            if will is not None and (packet.clean_session or existing.cleanSession):
                self.publishWill(will)
            old.close("session taken over by a new connection")

        sessionPresent = False
        if existing is not None and (packet.clean_session or existing.cleanSession):
            # [MQTT-3.1.2-6]: a clean session's state is never reused.
            self._discardSession(existing)
            existing = None
        if existing is None:
            session = self._newSession(clientId, packet.clean_session)
        else:
            session = existing
            sessionPresent = True  # [MQTT-3.2.2-2]
        session.will = packet.will
        return ConnackCode.ACCEPTED, session, sessionPresent

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
        if will is not None and not graceful:
            self.publishWill(will)
        if session.cleanSession:
            self._discardSession(session)
        else:
            self.store.sessionSaved(session.snapshot())

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
        self.sessions[clientId] = session
        return session

    def _discardSession(self, session: Session) -> None:
        for topicFilter in session.subscriptions:
            self.subscriptions.unsubscribe(topicFilter, session.clientId)
        del self.sessions[session.clientId]
        if not session.cleanSession:
            self.store.sessionDeleted(session.clientId)

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
        if self._acceptable(packet):
            self.route(Message(packet.topic, packet.payload, qos, packet.retain))
        if conn is not None and qos:
            assert packet.packet_id is not None
            conn.sendPacket(Puback(packet.packet_id) if qos == 1 else Pubrec(packet.packet_id))
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

    def pubrelReceived(self, session: Session, packetId: int) -> None:
        """Release an inbound QoS 2 message; always answered [MQTT-4.3.3-1]."""
        session.pubrelReceived(packetId)
        if session.connection is not None:
            session.connection.sendPacket(Pubcomp(packetId))

    def route(self, message: Message) -> None:
        """
        Store a retained message and deliver C{message} to every matching
        subscriber once, at the lower of the published and the highest granted
        QoS [MQTT-3.3.5-1], with RETAIN=0 [MQTT-3.3.1-9].
        """
        if message.retain and self.config.retain_available:
            self._retain(message)
        self.stats.messagesRouted += 1
        matches = self.subscriptions.match(message.topic)
        if not matches:
            return
        sessions = self.sessions
        qos = message.qos
        for clientId, granted in matches.items():
            sessions[clientId].deliver(message, granted if granted < qos else qos)

    def _retain(self, message: Message) -> None:
        if message.payload:
            self.retained.set(message.topic, message)
            self.store.retainedSet(message)
        elif self.retained.delete(message.topic):
            # [MQTT-3.3.1-10, MQTT-3.3.1-11]
            self.store.retainedDeleted(message.topic)

    def publishWill(self, will: Will) -> None:
        """Publish a Last Will as if its client had sent it."""
        self.route(Message(will.topic, will.payload, will.qos, will.retain))

    # Subscriptions

    def subscribe(self, session: Session, packet: Subscribe) -> None:
        """
        Add or replace subscriptions [MQTT-3.8.4-3], answer SUBACK with one
        code per filter (0x80 for an invalid filter) [MQTT-3.8.4-5], then
        send the retained messages they match with RETAIN=1 [MQTT-3.3.1-8].
        """
        codes = []
        granted = []
        maxLevels = self.config.max_topic_levels
        for topicFilter, qos in packet.subscriptions:
            try:
                validate_topic_filter(topicFilter, maxLevels)
            except InvalidTopic:
                codes.append(SUBACK_FAILURE)
                continue
            self.subscriptions.subscribe(topicFilter, session.clientId, qos)
            session.subscriptions[topicFilter] = qos
            codes.append(qos)
            granted.append((topicFilter, qos))
        if session.connection is not None:
            session.connection.sendPacket(Suback(packet.packet_id, codes))
        for topicFilter, qos in granted:
            for message in self.retained.matching(topicFilter):
                session.deliver(message, min(qos, message.qos), retain=True)

    def unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        """Remove subscriptions; UNSUBACK always follows [MQTT-3.10.4-5]."""
        for topicFilter in packet.topic_filters:
            if session.subscriptions.pop(topicFilter, None) is not None:
                self.subscriptions.unsubscribe(topicFilter, session.clientId)
        if session.connection is not None:
            session.connection.sendPacket(Unsuback(packet.packet_id))
