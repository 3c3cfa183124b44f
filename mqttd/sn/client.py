"""
One MQTT-SN client as the broker core sees it: an L{IClientConnection} whose session is like any
other, and the client's side of the MQTT-SN state machine (section 6): dispatching its datagrams
by state, ids of the topics it registers, keepalive, the asleep / awake states of a sleeping
client, and its endings.  Two parts are mixed in from their own modules: L{Connecting}
(CONNECT to CONNACK: the will exchange, authentication) and L{Delivery} (what the broker writes,
one message awaiting its answer with Tretry/Nretry retransmission).

Nothing here touches a socket: datagrams go out through the gateway's C{send}, and time through
its clock.  The broker writes MQTT packets (it knows no other kind); they are read back here and
said again in MQTT-SN.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codec import packets as mqtt
from ..interfaces import IClientConnection
from ..session import Session, SessionError
from ..topics import InvalidTopic, validate_topic_name
from . import packets as sn
from .codec import encode
from .connecting import Connecting
from .delivery import Delivery, Outstanding
from .packets import ReturnCode, TopicIdType
from .states import State
from .topicids import TopicIds, topicName

if TYPE_CHECKING:
    from .gateway import MQTTSNGateway

# Datagrams of one client kept while a plugin or the store answers about an earlier one; more are
# dropped (the client retransmits what it needs answered).
HELD_LIMIT = 64


@implementer(IClientConnection)
class SNClient(Connecting, Delivery):
    """
    The gateway's state for one client address.

    @ivar paused: set while the client has a message awaiting its answer, is asleep, or has not
        been accepted yet: the session then queues, bounded by C{max_queued_messages}, which is
        also what holds a sleeping client's messages until it wakes.
    """

    __slots__ = (
        "_connect",
        "_held",
        "_inboundTopicIds",
        "_lastReceived",
        "_nextMsgId",
        "_outbox",
        "_outstanding",
        "_retryTimer",
        "_sleepDuration",
        "_subscribing",
        "_supervisor",
        "_will",
        "_willTopic",
        "address",
        "clientAddress",
        "clientId",
        "gateway",
        "paused",
        "previous",
        "session",
        "state",
        "topicIds",
    )

    log = Logger()
    protocolLevel = mqtt.ProtocolLevel.MQTT_3_1_1

    def __init__(
        self, gateway: MQTTSNGateway, address: tuple[str, int, bytes], connect: sn.Connect
    ) -> None:
        self.gateway = gateway
        self.address = address
        host, port, node = address
        # Behind a forwarder, its node id follows the forwarder's address.
        self.clientAddress = f"{host}:{port}/{node.hex()}" if node else f"{host}:{port}"
        self.clientId = connect.client_id
        self.paused = True
        self.session: Session | None = None
        self.state = State.AUTHENTICATING
        self.topicIds = TopicIds()
        # The accepted client this CONNECT came after from the same address, back in its place
        # if this one is refused or never finishes (only the broker's takeover ends it).
        self.previous: SNClient | None = None
        self._connect = connect
        self._will: mqtt.Will | None = None
        self._willTopic = sn.WillTopic("")
        self._outstanding: Outstanding | None = None
        # Most clients never have a second message waiting; an empty deque costs ~600 bytes.
        self._outbox: deque[mqtt.Publish | mqtt.Pubrel] | None = None
        self._held: deque[Any] | None = None
        self._lastReceived = gateway.clock.seconds()
        self._sleepDuration = 0
        self._supervisor: IDelayedCall | None = None
        self._retryTimer: IDelayedCall | None = None
        # Topic id of each inbound QoS 1 PUBLISH until the broker acknowledges it, for PUBACK.
        self._inboundTopicIds: dict[int, int] = {}
        # What each SUBSCRIBE named, until the broker's SUBACK says whether it was granted.
        self._subscribing: dict[int, sn.Subscribe] = {}
        self._nextMsgId = 1

    # Datagrams from the client

    def received(self, packet: Any) -> None:
        """A message from this client's address; the gateway keeps CONNECT, SEARCHGW, QoS -1."""
        self._lastReceived = self.gateway.clock.seconds()
        if self._held is not None:
            if len(self._held) >= HELD_LIMIT:
                self.gateway.count("congestion")
                return
            self._held.append(packet)
            return
        self._handle(packet)

    def _handle(self, packet: Any) -> None:
        if self.state == State.CLOSED:
            return
        if self.connecting:
            handler = self._connectingHandlers.get(type(packet))
        else:
            handler = self._handlers.get(type(packet))
        if handler is None:
            self.gateway.count("unexpected")
            return
        try:
            result = handler(self, packet)
        except SessionError as e:
            self._broke(e)
            return
        if isinstance(result, Deferred):
            if self._held is None:
                self._held = deque()
            result.addCallbacks(self._handlerDone, self._handlerFailed)

    def _handlerDone(self, ignored: object) -> None:
        held, self._held = self._held, None
        while held and self._held is None:
            self._handle(held.popleft())
        if self._held is not None and held:
            # Still waiting: what was held before goes before anything that arrives meanwhile.
            held.extend(self._held)
            self._held = held

    def _broke(self, error: SessionError) -> None:
        # The client is told (section 6.6 lets a gateway send DISCONNECT at any time), and, as
        # an MQTT client breaking the rules, loses its connection with its will published.
        self._send(sn.Disconnect())
        self._lost(f"protocol error: {error}")

    def _handlerFailed(self, failure: Failure) -> None:
        self._held = None
        if isinstance(failure.value, SessionError):
            self._broke(failure.value)
            return
        self.log.failure("handling a message from {address}", failure, address=self.clientAddress)
        self._lost("internal error")

    def _publishReceived(self, packet: sn.Publish) -> Deferred[None] | None:
        gateway = self.gateway
        topic = topicName(packet.topic_id_type, packet.topic_id, self.topicIds, gateway.predefined)
        if topic is None:
            # Section 6.7: the client learns the id is unknown, and may register again.
            gateway.count("unknown topic id")
            self._send(sn.Puback(packet.topic_id, packet.msg_id, ReturnCode.INVALID_TOPIC_ID))
            return None
        if packet.topic_id_type != TopicIdType.NORMAL:
            # A normal id's name was checked when it was registered, by either side.
            try:
                validate_topic_name(topic, gateway.broker.config.max_topic_levels)
            except InvalidTopic:
                gateway.count("invalid topic")
                self._send(sn.Puback(packet.topic_id, packet.msg_id, ReturnCode.NOT_SUPPORTED))
                return None
        qos = packet.qos
        if qos == 1:
            self._inboundTopicIds[packet.msg_id] = packet.topic_id
        assert self.session is not None
        return gateway.broker.publishReceived(
            self.session,
            mqtt.Publish(
                topic,
                packet.payload,
                qos,
                packet.retain,
                packet.dup,
                packet.msg_id if qos else None,
            ),
        )

    def _registerReceived(self, packet: sn.Register) -> None:
        try:
            validate_topic_name(packet.topic_name, self.gateway.broker.config.max_topic_levels)
        except InvalidTopic:
            self.gateway.count("invalid topic")
            self._send(sn.Regack(0, packet.msg_id, ReturnCode.NOT_SUPPORTED))
            return
        topicId = self.topicIds.register(packet.topic_name)
        if topicId is None:
            self.gateway.count("topic ids exhausted")
            self._send(sn.Regack(0, packet.msg_id, ReturnCode.CONGESTION))
            return
        self._send(sn.Regack(topicId, packet.msg_id, ReturnCode.ACCEPTED))

    def _subscribeReceived(self, packet: sn.Subscribe) -> Deferred[None] | None:
        name = self._filterOf(packet.topic_id_type, packet.topic_name, packet.topic_id)
        if name is None:
            self.gateway.count("unknown topic id")
            self._send(sn.Suback(0, packet.msg_id, ReturnCode.INVALID_TOPIC_ID))
            return None
        if packet.qos < 0:
            self._send(sn.Suback(0, packet.msg_id, ReturnCode.NOT_SUPPORTED))
            return None
        self._subscribing[packet.msg_id] = replace(packet, topic_name=name)
        assert self.session is not None
        return self.gateway.broker.subscribe(
            self.session, mqtt.Subscribe(packet.msg_id, [(name, packet.qos)])
        )

    def _unsubscribeReceived(self, packet: sn.Unsubscribe) -> None:
        name = self._filterOf(packet.topic_id_type, packet.topic_name, packet.topic_id)
        if name is None:
            # Nothing by that id can be subscribed; UNSUBACK all the same, as MQTT does.
            self._send(sn.Unsuback(packet.msg_id))
            return
        assert self.session is not None
        self.gateway.broker.unsubscribe(self.session, mqtt.Unsubscribe(packet.msg_id, [name]))

    def _filterOf(self, kind: int, name: str, topicId: int) -> str | None:
        if kind == TopicIdType.PREDEFINED:
            return self.gateway.predefined.name(topicId)
        return name

    def _pubackReceived(self, packet: sn.Puback) -> None:
        outstanding = self._outstanding
        if packet.return_code == ReturnCode.INVALID_TOPIC_ID:
            # The client lost the registration: the next delivery registers the topic again.
            self.topicIds.forget(packet.topic_id)
        session = self.session
        assert session is not None
        if (
            outstanding is not None
            and outstanding.answer in (sn.Puback, sn.Pubrec)
            and outstanding.msgId == packet.msg_id
        ):
            self._settle()
            if outstanding.answer is sn.Pubrec:
                # Section 5.4.14: a QoS 2 PUBLISH refused with PUBACK ends there.
                session.pubrecRefused(packet.msg_id)
            else:
                session.pubackReceived(packet.msg_id)
            if packet.return_code != ReturnCode.ACCEPTED:
                self.gateway.count("delivery refused by client")
        elif packet.return_code == ReturnCode.ACCEPTED:
            session.pubackReceived(packet.msg_id)
        self._drain()

    def _pubrecReceived(self, packet: sn.Pubrec) -> Deferred[None] | None:
        self._settleIf(sn.Pubrec, packet.msg_id)
        assert self.session is not None
        result = self.gateway.broker.pubrecReceived(self.session, packet.msg_id)
        self._drain()
        return result

    def _pubrelReceived(self, packet: sn.Pubrel) -> Deferred[None] | None:
        assert self.session is not None
        return self.gateway.broker.pubrelReceived(self.session, packet.msg_id)

    def _pubcompReceived(self, packet: sn.Pubcomp) -> None:
        self._settleIf(sn.Pubcomp, packet.msg_id)
        assert self.session is not None
        self.session.pubcompReceived(packet.msg_id)
        self._drain()

    def _regackReceived(self, packet: sn.Regack) -> None:
        outstanding = self._outstanding
        if (
            outstanding is None
            or outstanding.answer is not sn.Regack
            or outstanding.msgId != packet.msg_id
        ):
            self.gateway.count("unexpected")
            return
        self._settle()
        delivery = outstanding.then
        assert delivery is not None
        if packet.return_code != ReturnCode.ACCEPTED:
            self.topicIds.forget(outstanding.topicId)
            self._undeliverable(delivery, "client refused the topic's REGISTER")
        else:
            self._sendPublish(delivery, TopicIdType.NORMAL, outstanding.topicId)
        self._drain()

    def _pingreqReceived(self, packet: sn.Pingreq) -> None:
        if self.state == State.ASLEEP:
            if packet.client_id is not None and packet.client_id != self.clientId:
                self.gateway.count("wrong client id")
                return
            # Section 6.14: awake, the client is sent what was kept for it, then PINGRESP.
            self.state = State.AWAKE
            outstanding = self._outstanding
            if outstanding is not None:
                outstanding.retries = 0
                self._resend()
            self._drain()
        elif self.state == State.AWAKE:
            self._sleepIfFlushed()
        else:
            self._send(sn.Pingresp())

    def _disconnectReceived(self, packet: sn.Disconnect) -> None:
        self._send(sn.Disconnect())
        if packet.duration:
            # Section 6.14: asleep; messages are kept until it wakes or the duration runs out.
            self.state = State.ASLEEP
            self.paused = True
            self._sleepDuration = packet.duration
            self._cancelRetry()
            self._supervise()
            self.log.info(
                "MQTT-SN client {clientId} asleep for {duration} s",
                clientId=self.clientId,
                duration=packet.duration,
            )
            return
        self._end(True, "client sent DISCONNECT")

    def _willTopicUpdReceived(self, packet: sn.WillTopicUpd) -> None:
        if not packet.topic:
            self._setWill(None)
            self._send(sn.WillTopicResp(ReturnCode.ACCEPTED))
            return
        try:
            validate_topic_name(packet.topic, self.gateway.broker.config.max_topic_levels)
        except InvalidTopic:
            self._send(sn.WillTopicResp(ReturnCode.NOT_SUPPORTED))
            return
        if packet.qos < 0:
            self._send(sn.WillTopicResp(ReturnCode.NOT_SUPPORTED))
            return
        payload = self._will.payload if self._will is not None else b""
        self._setWill(mqtt.Will(packet.topic, payload, packet.qos, packet.retain))
        self._send(sn.WillTopicResp(ReturnCode.ACCEPTED))

    def _willMsgUpdReceived(self, packet: sn.WillMsgUpd) -> None:
        if self._will is None:
            # No will topic to publish it on.
            self._send(sn.WillMsgResp(ReturnCode.NOT_SUPPORTED))
            return
        self._setWill(replace(self._will, payload=packet.payload))
        self._send(sn.WillMsgResp(ReturnCode.ACCEPTED))

    def _setWill(self, will: mqtt.Will | None) -> None:
        self._will = will
        assert self.session is not None
        self.gateway.broker.setWill(self.session, will)
        self.gateway.willChanged(self.clientId, will, self._connect.clean_session)

    def _ignored(self, packet: object) -> None:
        # A WILLTOPIC or WILLMSG retransmitted after CONNACK was lost on the way: nothing to do.
        self.gateway.count("unexpected")

    _handlers: dict[type, Any] = {
        sn.Publish: _publishReceived,
        sn.Puback: _pubackReceived,
        sn.Pubrec: _pubrecReceived,
        sn.Pubrel: _pubrelReceived,
        sn.Pubcomp: _pubcompReceived,
        sn.Register: _registerReceived,
        sn.Regack: _regackReceived,
        sn.Subscribe: _subscribeReceived,
        sn.Unsubscribe: _unsubscribeReceived,
        sn.Pingreq: _pingreqReceived,
        sn.Disconnect: _disconnectReceived,
        sn.WillTopicUpd: _willTopicUpdReceived,
        sn.WillMsgUpd: _willMsgUpdReceived,
        sn.WillTopic: _ignored,
        sn.WillMsg: _ignored,
    }
    _connectingHandlers: dict[type, Any] = {
        sn.WillTopic: Connecting._willTopicReceived,
        sn.WillMsg: Connecting._willMsgReceived,
    }

    # IClientConnection: what the broker and the session write (sendPacket and writeSequence:
    # Delivery's) and its letting go

    def close(self, reason: str, reasonCode: int | None = None) -> None:
        """
        The broker let go of this client (taken over by a new connection, or shutting down): the
        client is told with DISCONNECT (section 6.6 lets a gateway send one at any time).
        """
        if self.state == State.CLOSED:
            return
        self.session = None
        if self.gateway.clients.get(self.address) is self:
            # Not when the client itself connected again from here: it awaits CONNACK.
            self._send(sn.Disconnect())
        self.log.info(
            "MQTT-SN client {clientId} from {address} closed: {reason}",
            clientId=self.clientId,
            address=self.clientAddress,
            reason=reason,
        )
        self._closed()

    # Keepalive and sleep supervision (sections 6.6, 6.14)

    def _supervise(self) -> None:
        self._cancelSupervisor()
        asleep = self.state in (State.ASLEEP, State.AWAKE)
        seconds = self._sleepDuration if asleep else self._connect.duration
        if not seconds:
            return
        limit = seconds * 1.5
        idle = self.gateway.clock.seconds() - self._lastReceived
        self._supervisor = self.gateway.clock.callLater(max(0.0, limit - idle), self._check)

    def _check(self) -> None:
        self._supervisor = None
        asleep = self.state in (State.ASLEEP, State.AWAKE)
        seconds = self._sleepDuration if asleep else self._connect.duration
        if self.gateway.clock.seconds() - self._lastReceived >= seconds * 1.5:
            self._lost("sleep duration over" if asleep else "keepalive timeout")
        else:
            self._supervise()

    def _cancelSupervisor(self) -> None:
        if self._supervisor is not None and self._supervisor.active():
            self._supervisor.cancel()
        self._supervisor = None

    # Endings

    def lost(self, reason: str) -> None:
        """The client is gone without DISCONNECT (or can no longer be reached): its will goes."""
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.connecting:
            self._forget(reason)
            return
        self._end(False, reason)

    def _end(self, graceful: bool, reason: str) -> None:
        if self.state == State.CLOSED:
            return
        session, self.session = self.session, None
        self._closed()
        if session is not None:
            self.gateway.broker.connectionLost(session, self, graceful)
        self.log.info(
            "MQTT-SN client {clientId} from {address} disconnected: {reason}",
            clientId=self.clientId,
            address=self.clientAddress,
            reason=reason,
        )

    def _closed(self) -> None:
        self.state = State.CLOSED
        self.paused = True
        self._cancelSupervisor()
        self._cancelRetry()
        self._outbox = None
        self._held = None
        self.gateway.forget(self)

    # Output

    def _send(self, packet: Any) -> None:
        self._sendBytes(encode(packet))

    def _sendBytes(self, data: bytes) -> None:
        self.gateway.send(data, self.address)
