"""
A client's PUBLISH and the acknowledgements of the QoS 1 and 2 flows.

It turns an inbound PUBLISH into a L{Message}, asks the publish ACL through
the L{Policy}, hands the message to the L{Router} and acknowledges once the
store has made durable what routing changed.  It neither matches topics nor
changes a session's life: those are the router's and the registry's.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from .codec.packets import ProtocolLevel, Puback, Pubcomp, Publish, Pubrec, ReasonCode
from .codec.properties import NO_PROPERTIES
from .handlers import PacketHandlers
from .interfaces import Action, ClientInfo
from .message import Message, PropertiedMessage
from .session import Session, SessionError
from .stats import ACL_PUBLISH, DROP_PUBLISH_DENIED, DROP_SIZE_LIMIT, DROP_SYS_TOPIC

# Requests to the server itself: a 5.0 publish there is answered Success though nobody subscribes.
CONTROL_PREFIX = "$CONTROL/"


class Publishing(PacketHandlers):
    """What the broker does with a client's PUBLISH, PUBREL and PUBREC."""

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
            if packet.topic.startswith("$SYS"):
                # Not the client's to write, as mosquitto answers: Not authorized.
                return self._refuse(session, packet, ReasonCode.NOT_AUTHORIZED)
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
                if self.observing.chain or self.router.selectors
                else None
            )
            if self.observing.chain:
                self.observing.notify("messagePublished", publisher, message)
            matched = self.router.route(message, publisher)
            if not qos:
                # Only a retained message may have to wait for the store (see _paced).
                return self._paced(retain) if retain else None
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
            matched = self.router.route(message, client)
            if not packet.qos:
                return self._paced(message.retain)
            return self._acknowledge(session, packet, self._receipt(session, packet, matched))
        else:
            # As mosquitto: acknowledged, so the client does not resend it forever, but dropped.
            self.stats.drop(DROP_PUBLISH_DENIED)
            self.stats.aclDenied[ACL_PUBLISH] += 1
            self.policy.logDenied(client.clientId, "publish to", message.topic)
            if self.observing.chain:
                self.observing.notify("messageDropped", client.clientId, message, "publish denied")
            return self._refuse(session, packet, ReasonCode.NOT_AUTHORIZED)
        return self._acknowledge(session, packet)

    def _refuse(self, session: Session, packet: Publish, reasonCode: int) -> Deferred[None] | None:
        """Acknowledge a PUBLISH that was dropped: a 5.0 client is told C{reasonCode}."""
        conn = session.connection
        if conn is not None and conn.protocolLevel == ProtocolLevel.MQTT_5 and packet.qos:
            # 0x87 in PUBACK or PUBREC.  After a PUBREC of 0x80 or more the identifier is
            # free, its next PUBLISH a new message [MQTT-4.3.3-9].
            if packet.qos == 2:
                session.pubrelReceived(packet.packet_id)  # type: ignore[arg-type]
            return self._acknowledge(session, packet, reasonCode)
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

    def _paced(self, retained: bool) -> Deferred[None] | None:
        """
        A QoS 0 PUBLISH has no acknowledgement to hold; one that changed the store (a retained
        message: a QoS 0 delivery is never stored) holds its publisher's later packets, and
        reading from it, until the store says what it recorded is as durable as it promises:
        in C{sync} mode until its commit, in C{batched} mode only while the writer is behind.
        So retained messages cannot pile up in front of a slow disk, nor stretch the commit
        every acknowledged message of that window waits in.  Other QoS 0 publishers give the
        writer nothing to do, and are not held.

        @param retained: the PUBLISH is to be retained.
        """
        if not (retained and self.config.retain_available):
            return None
        held = self.store.flush()
        if held is not None:
            held.addCallback(self._flushed, self.clock.seconds())
        return held

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
        forwarded = self.router.whenForwarded()
        if forwarded is not None:
            # A cluster node: the other nodes' share is in Redis too before the answer.  A
            # refusal has failed already and closes the connection; otherwise, with nothing
            # to wait for here, the answer follows Redis's without holding the client's next
            # packets (answers keep their order: each waits for everything sent before it),
            # so a publisher's in-flight window keeps several messages on their way.
            if held is None and not forwarded.called:
                forwarded.addCallback(lambda _: answer(*args))
                return None
            held = forwarded if held is None else held.addCallback(lambda _: forwarded)
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
