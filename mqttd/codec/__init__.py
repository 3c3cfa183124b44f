"""
The sans-IO MQTT 3.1 / 3.1.1 codec: packet values, L{Decoder}, L{encode}.

Nothing here does I/O or imports Twisted; the protocol layer feeds received
bytes to a L{Decoder} and writes what L{encode} and L{publish_prefix} return.
"""

from .decoder import Decoder
from .encoder import (
    MAX_REMAINING_LENGTH,
    encode,
    encode_remaining_length,
    publish_prefix,
)
from .errors import (
    DecodeError,
    IdentifierRejected,
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    UnacceptableProtocol,
)
from .packets import (
    PROTOCOL_NAMES,
    SUBACK_FAILURE,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    ProtocolLevel,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)

__all__ = [
    "MAX_REMAINING_LENGTH",
    "PROTOCOL_NAMES",
    "SUBACK_FAILURE",
    "Connack",
    "ConnackCode",
    "Connect",
    "DecodeError",
    "Decoder",
    "Disconnect",
    "IdentifierRejected",
    "MalformedPacket",
    "Packet",
    "PacketTooLarge",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "ProtocolLevel",
    "ProtocolViolation",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "UnacceptableProtocol",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "encode",
    "encode_remaining_length",
    "publish_prefix",
]
