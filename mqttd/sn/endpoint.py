"""
MQTT-SN listens on UDP, which Twisted's endpoint strings do not cover: C{udp:PORT} with an
optional C{interface=HOST}, written like a C{tcp:} endpoint so a listener section reads the same
whatever its protocol (a colon inside a value is escaped as C{\\:}, as in every endpoint string),
and L{UDPServerEndpoint} listening on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

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


@implementer(IListeningPort, IPushProducer)
class _PausablePort:
    """
    A UDP port as a listener's service sees a TCP one: paused (datagrams wait in the kernel's
    buffer) until the broker has restored its store, then reading.
    """

    def __init__(self, port: Any) -> None:
        self._port = port

    def startListening(self) -> None:
        self._port.startListening()

    def stopListening(self) -> Any:
        return self._port.stopListening()

    def getHost(self) -> Any:
        return self._port.getHost()

    def pauseProducing(self) -> None:
        self._port.stopReading()

    def resumeProducing(self) -> None:
        self._port.startReading()

    def stopProducing(self) -> None:
        self._port.stopReading()


class UDPServerEndpoint:
    """
    The C{udp:} endpoint of an MQTT-SN listener, shaped like an L{IStreamServerEndpoint} so the
    broker service binds, pauses, announces and closes it as it does every listener.
    """

    def __init__(self, reactor: IReactorUDP, description: str, maxPacketSize: int) -> None:
        self.reactor = reactor
        self.address = parseUDPEndpoint(description)
        self.maxPacketSize = maxPacketSize

    def listen(self, protocol: DatagramProtocol) -> Deferred[IListeningPort]:
        """Bind C{protocol} to the port; a failure (port taken, no such interface) fails."""
        try:
            port = self.reactor.listenUDP(
                self.address.port,
                protocol,
                interface=self.address.interface,
                maxPacketSize=self.maxPacketSize,
            )
        except Exception:
            return fail()
        return succeed(_PausablePort(port))
