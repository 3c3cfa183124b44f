"""
What a bridge moves across its link, both ways: what the local session writes, its topic mapped
by the C{topic} rules (or passed on unchanged when no rule maps one), to the remote broker; and
what the remote broker sends, mapped back and published through the local session, the rest held
in order while the broker finishes one (a store flush), with the link paused meanwhile.

L{Forwarding} is mixed into L{mqttd.bridge.bridge.Bridge}; what it uses of the bridge is
declared below.  Connecting, reconnecting and the local session's life are the bridge's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.broker import Broker
from mqttd.codec.packets import (
    Disconnect,
    Packet,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
)
from mqttd.session import Session, SessionError

from .client import MQTTClientProtocol
from .config import BridgeConfig, localTopic, remoteTopic
from .local import BridgeConnection

if TYPE_CHECKING:
    from .bridge import BridgeStats


class Forwarding:
    """The packets of a bridge's link, both ways."""

    log: Logger
    # What forwarding reads and sets of the bridge it is part of.
    config: BridgeConfig
    broker: Broker
    session: Session | None
    stats: BridgeStats
    address: tuple[str, int]
    _conn: BridgeConnection
    _link: MQTTClientProtocol | None
    _held: deque[Packet] | None

    # In: the remote broker to the local session

    def packetsReceived(self, link: MQTTClientProtocol, packets: Sequence[Packet]) -> None:
        if self._held is not None:
            self._held.extend(packets)
            return
        self._dispatch(link, iter(packets))

    def _dispatch(self, link: MQTTClientProtocol, packets: Any) -> None:
        session = self.session
        for packet in packets:
            if self._link is not link or session is None or session.connection is not self._conn:
                return
            try:
                result = self._handle(session, packet)
            except SessionError as e:
                link.abort(f"protocol error from the remote broker: {e}")
                return
            if result is not None:
                # The broker answers once the store has the message: hold the rest, in order.
                self._held = deque(packets)
                link.transport.pauseProducing()  # type: ignore[union-attr]
                result.addCallbacks(self._handled, self._handleFailed, callbackArgs=(link,))
                return

    def _handled(self, ignored: object, link: MQTTClientProtocol) -> None:
        held, self._held = self._held, None
        if self._link is not link or held is None:
            return
        link.transport.resumeProducing()  # type: ignore[union-attr]
        self._dispatch(link, iter(held))

    def _handleFailed(self, failure: Failure) -> None:
        self._held = None
        self.log.failure("bridge {name}: handling a remote packet", failure, name=self.config.name)
        if self._link is not None:
            self._link.abort("internal error")

    def _handle(self, session: Session, packet: Packet) -> Deferred[Any] | None:
        broker = self.broker
        if isinstance(packet, Publish):
            mapped = localTopic(self.config.topics, packet.topic)
            if mapped is None:
                # Not a topic this bridge brings in (an overlapping subscription of a
                # persistent remote session): acknowledged, not published.
                if packet.qos:
                    assert packet.packet_id is not None
                    ack = Puback(packet.packet_id) if packet.qos == 1 else Pubrec(packet.packet_id)
                    self.sendRemote(ack)
                return None
            self.stats.messagesReceived += 1
            return broker.publishReceived(session, replace(packet, topic=mapped[0]))
        if isinstance(packet, Puback):
            session.pubackReceived(packet.packet_id)
        elif isinstance(packet, Pubrec):
            return broker.pubrecReceived(session, packet.packet_id, packet.reason_code)
        elif isinstance(packet, Pubrel):
            return broker.pubrelReceived(session, packet.packet_id)
        elif isinstance(packet, Pubcomp):
            session.pubcompReceived(packet.packet_id)
        elif isinstance(packet, Disconnect):
            # A 5.0 server says why before it closes [MQTT-3.14.0-1].
            self._remoteDisconnected(packet.reason_code)
        elif isinstance(packet, Suback):
            for code in packet.return_codes:
                if code >= 0x80:
                    self.log.warn(
                        "bridge {name}: {host}:{port} refused a subscription (0x{code:02x})",
                        name=self.config.name,
                        host=self.address[0],
                        port=self.address[1],
                        code=code,
                    )
        return None

    def _remoteDisconnected(self, code: int) -> None:
        if self._link is not None:
            self._link.closeReason = f"the remote broker sent DISCONNECT 0x{code:02x}"

    # Out: the local session to the remote broker

    def forward(self, packet: Packet) -> None:
        """A packet the local session wrote: map it and send it to the remote broker."""
        link = self._link
        if isinstance(packet, Publish):
            mapped = remoteTopic(self.config.topics, packet.topic)
            session = self.session
            if mapped is None:
                # No rule takes it any more (the rules changed): settle it unsent.
                if session is not None and packet.packet_id is not None:
                    if packet.qos == 1:
                        session.pubackReceived(packet.packet_id)
                    else:
                        session.pubrecRefused(packet.packet_id)
                return
            self.stats.messagesSent += 1
            packet = replace(packet, topic=mapped[0])
        if link is not None:
            link.send(packet)

    def forwardUnchanged(self, chunks: Sequence[bytes]) -> None:
        """A packet the local session wrote, for a remote broker that sees the same topics."""
        if chunks[0][0] >> 4 == 3:
            self.stats.messagesSent += 1
        if self._link is not None:
            self._link.writeSequence(chunks)

    def sendRemote(self, packet: Packet) -> None:
        """An acknowledgement the broker sends for a message that came over the link."""
        if self._link is not None:
            self._link.send(packet)
