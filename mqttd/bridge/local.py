"""
The bridge's local side: L{BridgeConnection}, the connection of the bridge's persistent session
on the broker.  What the session writes is read back (or passed on byte for byte when no topic
is mapped) and handed to the L{Bridge} to forward to the remote broker; the broker's
acknowledgements of what came over the link go back to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from mqttd.codec import DecodeError, Decoder
from mqttd.codec.packets import ProtocolLevel, Suback, Unsuback
from mqttd.interfaces import IClientConnection

if TYPE_CHECKING:
    from .bridge import Bridge


@implementer(IClientConnection)
class BridgeConnection:
    """
    The local session's connection: it turns what the session writes into packets for the
    remote broker, and the broker's acknowledgements into packets to it.
    """

    def __init__(self, bridge: Bridge, level: int) -> None:
        self.bridge = bridge
        # 3.1 remotes read 3.1.1 PUBLISH and acknowledgements unchanged.
        self.protocolLevel = ProtocolLevel.MQTT_5 if level == 5 else ProtocolLevel.MQTT_3_1_1
        self.clientAddress = f"bridge {bridge.config.name}"
        self.paused = False
        self._decoder = self._newDecoder()

    def _newDecoder(self) -> Decoder:
        return Decoder(server=False, protocol_level=int(self.protocolLevel), max_packet_size=2**28)

    def reset(self) -> None:
        """A new link: forget any partial packet of the last one."""
        self._decoder = self._newDecoder()

    def sendPacket(self, packet: Any) -> None:
        if isinstance(packet, Suback | Unsuback):
            self.bridge.localSubscribed(packet)
            return
        self.bridge.sendRemote(packet)

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        # The session writes one whole packet per call.
        if self.bridge.unmapped:
            self.bridge.forwardUnchanged(chunks)
            return
        try:
            packets = self._decoder.feed(b"".join(chunks))
        except DecodeError:
            # Only the session writes here; a packet it cannot read back is a bug, not input.
            self.bridge.log.failure(
                "bridge {name}: unreadable session output", name=self.bridge.config.name
            )
            return
        for packet in packets:
            self.bridge.forward(packet)

    def close(self, reason: str, reasonCode: int | None = None) -> None:
        self.bridge.localClosed(reason)
