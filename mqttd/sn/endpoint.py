"""
MQTT-SN listens on UDP, which Twisted's endpoint strings do not cover: C{udp:PORT} with an
optional C{interface=HOST}, written like a C{tcp:} endpoint so a listener section reads the same
whatever its protocol (a colon inside a value is escaped as C{\\:}, as in every endpoint string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEPARATOR = re.compile(r"(?<!\\):")


@dataclass(frozen=True, slots=True)
class UDPEndpoint:
    port: int
    interface: str = ""


def parseUDPEndpoint(text: str) -> UDPEndpoint:
    """
    C{udp:PORT[:interface=HOST]}; C{port=PORT} is accepted too.

    @raise ValueError: the text is not such a string.
    """
    parts = [p.replace("\\:", ":") for p in _SEPARATOR.split(text)]
    if parts[0] != "udp":
        raise ValueError(f"expected udp:PORT[:interface=HOST], got {text!r}")
    port: str | None = None
    interface = ""
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        if not equals:
            if port is not None:
                raise ValueError(f"two ports in {text!r}")
            port = part
        elif key == "port" and port is None:
            port = value
        elif key == "interface":
            interface = value
        else:
            raise ValueError(f"unknown or repeated option {key!r} in {text!r}")
    if port is None or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected a port from 0 to 65535 in {text!r}")
    return UDPEndpoint(int(port), interface)
