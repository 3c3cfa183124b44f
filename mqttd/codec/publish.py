"""
The one PUBLISH parser of every protocol level.

3.1, 3.1.1 and 5.0 lay a PUBLISH out alike up to its packet identifier; 5.0
then adds a property list, lets a Topic Alias stand for an empty topic name,
and numbers the same rules differently.  Each decoding table holds the parser
L{publish_parser} made for its level, a plain function with the level in its
closure, so a PUBLISH, the hot path of a fan-in, costs one call as before: a
function shared by both levels would need a second call from 5.0's parsers,
and a bound method an attribute load, each measurable on decoding an S1
PUBLISH (bench/codec.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ProtocolViolation
from .fields import UTF8_SPEC_5, UTF8_SPEC_311, Buffer, Handler, malformed
from .packets import Packet, Publish
from .properties import NO_PROPERTIES
from .propertylist import read_properties

if TYPE_CHECKING:
    from .decoder5 import Level5

__all__ = ["publish_parser"]


def publish_parser(level5: Level5 | None) -> Handler:
    """
    The PUBLISH parser of one protocol level, for its decoding table.

    @param level5: the 5.0 parsers of the connection, whose User Property cap
        and direction apply; C{None} for 3.1 and 3.1.1.
    """

    def parse(data: Buffer, start: int, end: int, first: int) -> Packet:
        """
        Parse the PUBLISH whose fixed header byte is C{first} and whose body is
        C{data[start:end]}.
        """
        qos = (first >> 1) & 3
        if start + 2 > end:
            raise malformed("PUBLISH: topic length runs past the packet")
        p = start + 2 + ((data[start] << 8) | data[start + 1])
        if p > end:
            raise malformed("PUBLISH: topic runs past the packet")
        if p == start + 2 and level5 is None:
            raise malformed("PUBLISH: zero-length topic name", "MQTT-4.7.3-1")
        try:
            topic = str(data[start + 2 : p], "utf-8")
        except UnicodeDecodeError:
            spec = (UTF8_SPEC_311 if level5 is None else UTF8_SPEC_5)[0]
            raise malformed("PUBLISH: ill-formed UTF-8 topic", spec) from None
        if "\x00" in topic:
            spec = (UTF8_SPEC_311 if level5 is None else UTF8_SPEC_5)[1]
            raise malformed("PUBLISH: topic contains U+0000", spec)
        if "+" in topic or "#" in topic:
            raise malformed("PUBLISH: wildcard in topic name", "MQTT-3.3.2-2")
        if qos:
            if p + 2 > end:
                raise malformed("PUBLISH: packet identifier runs past the packet")
            packet_id: int | None = (data[p] << 8) | data[p + 1]
            if not packet_id:
                spec = "MQTT-2.3.1-1" if level5 is None else "MQTT-2.2.1-3"
                raise malformed("PUBLISH: QoS > 0 with packet identifier 0", spec)
            p += 2
        else:
            packet_id = None
        if level5 is None:
            return Publish(
                topic, bytes(data[p:end]), qos, bool(first & 1), bool(first & 8), packet_id
            )
        # An empty property list, the common case, costs one byte test.
        if p < end and not data[p]:
            properties = NO_PROPERTIES
            p += 1
        else:
            properties, p = read_properties(data, p, end, "PUBLISH", "PUBLISH", level5.cap)
            if level5.server and properties.subscription_identifiers:
                raise ProtocolViolation(
                    "PUBLISH: Subscription Identifier from a client", "MQTT-3.3.4-6"
                )
        if not topic and properties.topic_alias is None:
            raise ProtocolViolation(
                "PUBLISH: zero-length topic name without a Topic Alias", "MQTT-4.7.3-1"
            )
        return Publish(
            topic, bytes(data[p:end]), qos, bool(first & 1), bool(first & 8), packet_id, properties
        )

    return parse
