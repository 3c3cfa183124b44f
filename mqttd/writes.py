"""
One C{send()} per connection per reactor turn, straight to the socket.

Twisted's C{transport.write} on a TCP connection appends to a buffer, asks epoll to report the
socket writable (a system call), is told so on the next turn, sends, and stops watching (another
system call): per packet-carrying turn of every connection, three system calls and two trips
through the reactor's dispatch besides the C{send()}.  With many connections each receiving a
message or two per turn (a chat server's traffic), that was a sixth of the broker's CPU.  Here a
connection's packets wait in a list until the end of the turn, and go out as one C{send()} on
the socket when the transport holds nothing older; only what the kernel does not take goes
through the transport, which then watches the socket and applies its back-pressure as before.
Under TLS or WebSocket the turn's packets go to that layer as one write, so they cost one TLS
record or one WebSocket frame instead of one each.  mqttd's own TCP transport
(L{mqttd.transports.tcp}) sends at once what it is given when nothing older waits, so there the
turn's packets simply go to its C{write}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .dispatch import turnEnd

if TYPE_CHECKING:
    from .protocol import MQTTServerProtocol


def coalescible(transport: object) -> bool:
    """Whether C{transport} is a plain (not TLS) Twisted TCP or UNIX socket connection."""
    return isinstance(transport, tcp.Connection) and not transport.TLS


def layered(transport: object) -> bool:
    """
    Whether C{transport} is a TLS or WebSocket layer, each of whose writes makes a TLS record or
    a WebSocket frame, or mqttd's lean TCP transport (L{mqttd.transports.tcp}), each of whose
    writes is a C{send()}: worth one write per turn too.  Looked up among the modules loaded, so
    that asking imports none of them (mqttd.footprint).
    """
    lean = sys.modules.get("mqttd.transports.tcp")
    if lean is not None and type(transport) is lean.Connection:
        return True
    tls = sys.modules.get("twisted.protocols.tls")
    if tls is not None and isinstance(transport, tls.TLSMemoryBIOProtocol):
        return True
    websocket = sys.modules.get("mqttd.transports.websocket")
    return websocket is not None and isinstance(transport, websocket.MQTTWebSocketProtocol)


class WriteCoalescer:
    """
    The connections with packets waiting this turn, all flushed once the reactor has dispatched
    every ready socket, before it waits again: by the reactor itself where mqttd's lean dispatch
    is installed (L{mqttd.dispatch.turnEnd}), else by one C{callLater(0)} per turn.
    """

    __slots__ = ("_call", "_scheduled", "_turnEnd", "_waiting", "clock")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._waiting: list[MQTTServerProtocol] = []
        self._scheduled = False
        self._call: IDelayedCall | None = None
        # The reactor's end-of-turn list, once known to have one.
        self._turnEnd: list[Callable[[], object]] | None = None

    def waiting(self, protocol: MQTTServerProtocol) -> None:
        """C{protocol} has its first packet of this turn waiting."""
        self._waiting.append(protocol)
        if self._scheduled:
            return
        self._scheduled = True
        ends = self._turnEnd
        if ends is None:
            # Asked again until found: lean dispatch is installed after the listeners are built.
            ends = self._turnEnd = turnEnd(self.clock)
        if ends is not None:
            ends.append(self._flush)
        else:
            self._call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        for protocol in waiting:
            protocol.flushWrites()


def send(transport: Any, data: bytes) -> None:
    """
    Write C{data} on C{transport} (a L{coalescible} one): to its socket now when nothing older
    waits in the transport, the rest, if any, through the transport.
    """
    if (
        transport.dataBuffer
        or transport._tempDataBuffer
        or transport.disconnecting
        or not transport.connected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # The transport meets the error on its own next write and closes as it always does.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])
