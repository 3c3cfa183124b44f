"""
An outbound MQTT connection on Twisted, built on the sans-IO codec: it sends CONNECT, waits for
CONNACK, keeps the connection alive with PINGREQ, and hands every other packet to its owner.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.codec import DecodeError, Decoder, encode
from mqttd.codec.packets import Connack, Connect, Disconnect, Packet, Pingreq, Pingresp
from mqttd.interfaces import ILinkOwner

PINGREQ = encode(Pingreq())


@implementer(IPushProducer)
class MQTTClientProtocol(Protocol):
    """
    One connection to another broker, reporting to an L{ILinkOwner}.

    @ivar accepted: set once CONNACK accepted the CONNECT.
    @ivar closeReason: why the connection ended, for the owner's log.
    """

    def __init__(
        self,
        owner: ILinkOwner,
        connect: Connect,
        clock: IReactorTime,
        connectTimeout: float,
        maxPacketSize: int,
    ) -> None:
        self.owner = owner
        self.connect = connect
        self.clock = clock
        self.level = connect.protocol_level
        self.accepted = False
        self.closeReason = "connection lost"
        self._connectTimeout = connectTimeout
        self._decoder = Decoder(
            server=False, protocol_level=self.level, max_packet_size=maxPacketSize
        )
        self._timer: IDelayedCall | None = None
        self._keepalive = float(connect.keepalive)
        self._lastReceived = 0.0
        self._closing = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.transport.write(encode(self.connect, self.level))  # type: ignore[union-attr]
        self._timer = self.clock.callLater(self._connectTimeout, self._noConnack)

    def _noConnack(self) -> None:
        self._timer = None
        self.abort("no CONNACK within the connect timeout")

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            packets = self._decoder.feed(data)
        except DecodeError as e:
            self.abort(f"{type(e).__name__} from the remote broker: {e}")
            return
        if not packets:
            return
        self._lastReceived = self.clock.seconds()
        if not self.accepted:
            connack = packets[0]
            if not isinstance(connack, Connack):
                self.abort(f"expected CONNACK, got {type(connack).__name__}")
                return
            self._cancelTimer()
            if connack.return_code != 0:
                self.closeReason = (
                    f"CONNACK refused the CONNECT with code 0x{connack.return_code:02x}"
                )
                self._closing = True
                self.owner.linkRefused(self, connack)
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.accepted = True
            serverKeepAlive = connack.properties.server_keep_alive
            if serverKeepAlive is not None:
                # The server decides at 5.0 [MQTT-3.2.2-22].
                self._keepalive = float(serverKeepAlive)
            if self._keepalive:
                self._timer = self.clock.callLater(self._keepalive, self._ping)
            self.owner.linkAccepted(self, connack)
            packets = packets[1:]
        packets = [p for p in packets if not isinstance(p, Pingresp)]
        if packets and not self._closing:
            self.owner.packetsReceived(self, packets)

    def _ping(self) -> None:
        # The server has heard nothing in a keepalive too, or our PINGREQ went unanswered.
        if self.clock.seconds() - self._lastReceived >= 2 * self._keepalive:
            self._timer = None
            self.abort("no answer from the remote broker within the keepalive")
            return
        self.transport.write(PINGREQ)  # type: ignore[union-attr]
        self._timer = self.clock.callLater(self._keepalive, self._ping)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def send(self, packet: Packet) -> None:
        """Encode and write one packet at the connection's protocol level."""
        if not self._closing:
            self.transport.write(encode(packet, self.level))  # type: ignore[union-attr]

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        if not self._closing:
            self.transport.writeSequence(chunks)  # type: ignore[union-attr]

    def disconnect(self, reason: str) -> None:
        """End the connection cleanly: DISCONNECT, then close once written."""
        if self._closing:
            return
        self._closing = True
        self.closeReason = reason
        if self.accepted:
            self.transport.write(encode(Disconnect(), self.level))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self, reason: str) -> None:
        """Drop the connection at once."""
        if self._closing:
            return
        self._closing = True
        self.closeReason = reason
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        self._closing = True
        self.owner.linkLost(self, self.closeReason)

    # IPushProducer: the transport says when its buffer fills and drains.

    def pauseProducing(self) -> None:
        self.owner.linkPaused(self, True)

    def resumeProducing(self) -> None:
        self.owner.linkPaused(self, False)

    def stopProducing(self) -> None:
        self.owner.linkPaused(self, True)
