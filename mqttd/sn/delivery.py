"""
What the broker writes to an MQTT-SN client, said again in MQTT-SN: acknowledgements at once,
PUBLISH and PUBREL one at a time, each awaiting its answer (section 6.13), with the outbox behind
it, the REGISTER a topic needs before its first PUBLISH (section 6.10), the
Tretry/Nretry retransmission with DUP set, and the flush that sends a waking client back to
sleep (section 6.14).

L{Delivery} is mixed into L{mqttd.sn.client.SNClient}, which feeds it what the broker writes
(L{Delivery._outboxAdd}) and the client's answers (L{Delivery._settle}, L{Delivery._drain});
what it uses of that client is declared below.  The session's window stays paused while a
message awaits its answer, so the broker queues the rest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..codec import packets as mqtt
from ..session import Session
from . import packets as sn
from .codec import encode
from .packets import ReturnCode, TopicIdType, shortTopicId
from .states import State
from .topicids import TopicIds

if TYPE_CHECKING:
    from .gateway import MQTTSNGateway

# The largest UDP payload IPv4 carries.
MAX_DATAGRAM = 65507


class Outstanding:
    """The one message sent to the client that awaits its answer (section 6.13)."""

    __slots__ = ("answer", "data", "msgId", "publish", "retries", "then", "topicId")

    def __init__(
        self,
        answer: type,
        msgId: int,
        data: bytes,
        publish: sn.Publish | None = None,
        then: mqtt.Publish | None = None,
        topicId: int = 0,
    ) -> None:
        self.answer = answer
        self.msgId = msgId
        self.data = data
        # A PUBLISH is sent again with DUP set.
        self.publish = publish
        # A REGISTER's delivery, sent once REGACK gives its topic id.
        self.then = then
        self.topicId = topicId
        self.retries = 0


class Delivery:
    """The outbound half of an MQTT-SN client."""

    if not TYPE_CHECKING:
        # Empty, so SNClient's instances stay without a __dict__ (memory per idle client);
        # hidden from mypy, which would check the client's attributes against these.
        __slots__ = ()

    log: Logger
    # What delivery reads and sets of the client it is part of.
    gateway: MQTTSNGateway
    clientId: str
    session: Session | None
    state: State
    paused: bool
    topicIds: TopicIds
    _outstanding: Outstanding | None
    _outbox: deque[mqtt.Publish | mqtt.Pubrel] | None
    _retryTimer: IDelayedCall | None
    _nextMsgId: int
    _inboundTopicIds: dict[int, int]
    _subscribing: dict[int, sn.Subscribe]

    if TYPE_CHECKING:

        def _lost(self, reason: str) -> None: ...
        def _send(self, packet: Any) -> None: ...
        def _sendBytes(self, data: bytes) -> None: ...

    # What the broker and the session write, said again in MQTT-SN

    def sendPacket(self, packet: Any) -> None:
        if self.state == State.CLOSED:
            return
        match packet:
            case mqtt.Puback():
                topicId = self._inboundTopicIds.pop(packet.packet_id, 0)
                self._send(sn.Puback(topicId, packet.packet_id, ReturnCode.ACCEPTED))
            case mqtt.Pubrec():
                self._send(sn.Pubrec(packet.packet_id))
            case mqtt.Pubcomp():
                self._send(sn.Pubcomp(packet.packet_id))
            case mqtt.Suback():
                self._subackSent(packet)
            case mqtt.Unsuback():
                self._send(sn.Unsuback(packet.packet_id))

    def _subackSent(self, packet: mqtt.Suback) -> None:
        asked = self._subscribing.pop(packet.packet_id, None)
        code = packet.return_codes[0] if packet.return_codes else mqtt.SUBACK_FAILURE
        if asked is None or code == mqtt.SUBACK_FAILURE:
            self._send(sn.Suback(0, packet.packet_id, ReturnCode.NOT_SUPPORTED))
            return
        topicId = 0
        if asked.topic_id_type == TopicIdType.PREDEFINED:
            topicId = asked.topic_id
        elif asked.topic_id_type == TopicIdType.NORMAL and not _hasWildcard(asked.topic_name):
            # Section 6.9: a topic name's id comes in SUBACK, so deliveries need no REGISTER.
            topicId = self.topicIds.register(asked.topic_name) or 0
        self._send(sn.Suback(topicId, packet.packet_id, ReturnCode.ACCEPTED, code))

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        if self.state == State.CLOSED:
            return
        for packet in self.gateway.readBack(b"".join(chunks)):
            if isinstance(packet, mqtt.Publish | mqtt.Pubrel):
                self._outboxAdd(packet)

    # One message awaiting its answer at a time

    def _outboxAdd(self, packet: mqtt.Publish | mqtt.Pubrel) -> None:
        if self._outstanding is None and not self._outbox and self.state != State.ASLEEP:
            self._transmit(packet)
        else:
            if self._outbox is None:
                self._outbox = deque()
            self._outbox.append(packet)
            self.paused = True

    def _transmit(self, packet: mqtt.Publish | mqtt.Pubrel) -> None:
        if isinstance(packet, mqtt.Pubrel):
            self._expect(sn.Pubcomp, packet.packet_id, encode(sn.Pubrel(packet.packet_id)))
            return
        topic = packet.topic
        kind = TopicIdType.NORMAL
        topicId = self.gateway.predefined.known(topic)
        if topicId is not None:
            kind = TopicIdType.PREDEFINED
        elif len(topic) == 2 and len(topic.encode("utf-8")) == 2:
            kind = TopicIdType.SHORT
            topicId = shortTopicId(topic)
        else:
            topicId = self.topicIds.known(topic)
        if topicId is None:
            # Section 6.10: the client learns the topic's id before the first message on it.
            topicId = self.topicIds.register(topic)
            if topicId is None:
                self._undeliverable(packet, "the client's topic ids are exhausted")
                return
            msgId = self._allocateMsgId()
            self._expect(
                sn.Regack,
                msgId,
                encode(sn.Register(topicId, msgId, topic)),
                then=packet,
                topicId=topicId,
            )
            return
        self._sendPublish(packet, kind, topicId)

    def _sendPublish(self, packet: mqtt.Publish, kind: int, topicId: int) -> None:
        message = sn.Publish(
            topicId,
            packet.packet_id or 0,
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            kind,
        )
        try:
            data = encode(message)
        except ValueError:
            data = b""
        if not data or len(data) > MAX_DATAGRAM:
            self._undeliverable(packet, "too large for one datagram")
            return
        if packet.qos == 0:
            self._sendBytes(data)
            return
        assert packet.packet_id is not None
        self._expect(
            sn.Puback if packet.qos == 1 else sn.Pubrec, packet.packet_id, data, publish=message
        )

    def _undeliverable(self, packet: mqtt.Publish, why: str) -> None:
        self.gateway.count("undeliverable")
        self.log.info(
            "message on {topic} not delivered to MQTT-SN client {clientId}: {why}",
            topic=packet.topic,
            clientId=self.clientId,
            why=why,
        )
        session = self.session
        if session is None or packet.packet_id is None:
            return
        # Settled as if refused, so the session's window does not wait for it for ever.
        if packet.qos == 1:
            session.pubackReceived(packet.packet_id)
        else:
            session.pubrecRefused(packet.packet_id)

    def _allocateMsgId(self) -> int:
        msgId = self._nextMsgId
        self._nextMsgId = msgId % 0xFFFF + 1
        return msgId

    def _expect(self, answer: type, msgId: int, data: bytes, **kwargs: Any) -> None:
        self._outstanding = Outstanding(answer, msgId, data, **kwargs)
        self.paused = True
        self._sendBytes(data)
        self._startRetry()

    def _startRetry(self) -> None:
        self._cancelRetry()
        if self.state in (State.ACTIVE, State.AWAKE):
            self._retryTimer = self.gateway.clock.callLater(
                self.gateway.listener.retry_interval, self._retry
            )

    def _retry(self) -> None:
        self._retryTimer = None
        outstanding = self._outstanding
        if outstanding is None:
            return
        if outstanding.retries >= self.gateway.listener.retry_count:
            self._lost(f"no answer after {outstanding.retries} retransmissions")
            return
        outstanding.retries += 1
        self.gateway.count("retransmitted")
        self._resend()

    def _resend(self) -> None:
        outstanding = self._outstanding
        assert outstanding is not None
        if outstanding.publish is not None and not outstanding.publish.dup:
            outstanding.publish = replace(outstanding.publish, dup=True)
            outstanding.data = encode(outstanding.publish)
        self._sendBytes(outstanding.data)
        self._startRetry()

    def _settle(self) -> None:
        self._outstanding = None
        self._cancelRetry()

    def _settleIf(self, answer: type, msgId: int) -> None:
        outstanding = self._outstanding
        if outstanding is not None and outstanding.answer is answer and outstanding.msgId == msgId:
            self._settle()

    def _drain(self) -> None:
        """Send what waits, then let the session write again once nothing awaits an answer."""
        while (
            self._outstanding is None
            and self._outbox
            and self.state
            in (
                State.ACTIVE,
                State.AWAKE,
            )
        ):
            self._transmit(self._outbox.popleft())
        if (
            self._outstanding is None
            and not self._outbox
            and self.state in (State.ACTIVE, State.AWAKE)
            and self.paused
        ):
            self.paused = False
            assert self.session is not None
            self.session.pump()
        if self.state == State.AWAKE:
            self._sleepIfFlushed()

    def _sleepIfFlushed(self) -> None:
        session = self.session
        if self._outstanding is not None or self._outbox or (session and session.pending):
            return
        # Section 6.14: PINGRESP says everything kept was sent; the client sleeps again.
        self.state = State.ASLEEP
        self.paused = True
        self._send(sn.Pingresp())

    def _cancelRetry(self) -> None:
        if self._retryTimer is not None and self._retryTimer.active():
            self._retryTimer.cancel()
        self._retryTimer = None


def _hasWildcard(topicFilter: str) -> bool:
    return "+" in topicFilter or "#" in topicFilter
