"""
MQTT over WebSocket (MQTT 3.1.1 section 6): wsproto does the HTTP upgrade, mqttd's own frame
reader and writer (L{mqttd.transports.wsframes}) the frames after it.

Twisted's own C{twisted.web.websocket} cannot be used: its resource accepts every upgrade without
echoing a subprotocol, and browsers drop a connection whose server does not echo the C{mqtt} they
offered.  So wsproto is driven directly, by a protocol that sits between the socket (TCP, TLS,
PROXY) and L{MQTTServerProtocol} and presents itself to the latter as its transport: the MQTT layer
stays unaware that its bytes travel in frames.

wsproto's frame layer was replaced once measured: it cost ~11 % of the broker's CPU in S1 over
WebSocket (py-spy, bench/transports.sh) and ~8 µs per frame read, so with one MQTT packet to a
frame, as MQTT.js and paho send them, more than the MQTT work on the packet; the frame reader does
the same in ~0.5 µs (bench/wsframes.py).  The upgrade, with its HTTP parsing, stays with wsproto.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError
from zope.interface import implementer

from mqttd.writes import coalescible, send

from .wsframes import (
    CLOSE,
    NORMAL_CLOSURE,
    PING,
    PONG,
    Control,
    FrameDecoder,
    FrameError,
    binaryHeader,
    closeCode,
    closeFrame,
    controlFrame,
)

# [MQTT-6.0.0-4] names "mqtt"; clients written for MQTT 3.1 (and some still shipped) offer only
# the name used before the standard, so it is echoed back to them.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")

# Browsers send a few hundred bytes of headers, more with cookies; anything near this is not a
# browser or an MQTT library, and the bytes arrive before any authentication.
MAX_UPGRADE_SIZE = 16 * 1024


@implementer(ITransport, IPushProducer)
class MQTTWebSocketProtocol(Protocol):
    """
    One WebSocket connection carrying one MQTT connection.

    Until the upgrade completes it accepts at most L{MAX_UPGRADE_SIZE} bytes for at most
    C{upgradeTimeout} seconds; the MQTT protocol is built, and connected, only once it has.
    Every write from the MQTT protocol becomes one binary message, and the binary frames of each
    read are fed on as bytes, so MQTT packets split across frames or sharing one
    [MQTT-6.0.0-2] need no care here.
    """

    log = Logger()

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        address: IAddress,
        path: str,
        clock: IReactorTime,
        upgradeTimeout: float,
    ) -> None:
        self.wrappedFactory = wrappedFactory
        self.wrapped: IProtocol | None = None
        self._address = address
        self.path = path
        # wsproto's handshake (an h11 connection and its buffers), until the upgrade is accepted.
        self._ws: WSConnection | None = WSConnection(ConnectionType.SERVER)
        self._clock = clock
        self._upgradeTimeout = upgradeTimeout
        self._upgradeTimer: IDelayedCall | None = None
        self._upgradeReceived = 0
        # The frame reader, once the upgrade is accepted.
        self._frames: FrameDecoder | None = None
        # Upgraded, and no CLOSE frame sent or received: MQTT packets may be written.
        self._open = False
        # Nothing more is read: the connection is closing or closed.
        self._done = False
        self._direct = False

    # The socket side

    def connectionMade(self) -> None:
        # A frame goes straight to a plain TCP socket when nothing older waits (mqttd.writes.send
        # under Twisted's transport; mqttd's own TCP transport does so in its write): the MQTT
        # protocol already joins a reactor turn's packets into one write of this layer.
        self._direct = coalescible(self.transport)
        self._upgradeTimer = self._clock.callLater(self._upgradeTimeout, self._upgradeTimedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        frames = self._frames
        if frames is None:
            self._upgradeDataReceived(data)
            return
        for event in frames.feed(data):
            if type(event) is bytes:
                self.wrapped.dataReceived(event)  # type: ignore[union-attr]
            elif isinstance(event, Control):
                self._controlReceived(event)
            else:
                assert isinstance(event, FrameError)
                self._close(event.code, event.reason)
            if self._done:
                return

    def _upgradeDataReceived(self, data: bytes) -> None:
        self._upgradeReceived += len(data)
        if self._upgradeReceived > MAX_UPGRADE_SIZE:
            self._reject(431, "upgrade request too large")
            return
        ws = self._ws
        assert ws is not None
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    self._upgradeRequested(event)
                if self._done or self._frames is not None:
                    # wsproto's server hands no bytes sent after the request on to the
                    # connection it makes: a client waits for the 101 before sending frames
                    # (RFC 6455 section 4.1).
                    return
        except RemoteProtocolError as e:
            self._reject(400, str(e))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done = True
        if self._upgradeTimer is not None and self._upgradeTimer.active():
            self._upgradeTimer.cancel()
        self._upgradeTimer = None
        if self.wrapped is not None:
            self._open = False
            self.wrapped.connectionLost(reason)

    def _controlReceived(self, frame: Control) -> None:
        opcode = frame.opcode
        if opcode == PING:
            self._send(controlFrame(PONG, frame.payload))
        elif opcode == CLOSE:
            try:
                code = closeCode(frame.payload)
            except FrameError as e:
                self._close(e.code, e.reason)
                return
            # The client's code echoed, as RFC 6455 section 5.5.1 asks.
            self._sendClose(closeFrame(code))
        # A PONG needs no answer; the MQTT keep-alive is what watches the connection.

    def _upgradeRequested(self, request: Request) -> None:
        path = request.target.partition("?")[0]
        if path != self.path:
            self._reject(404, f"no WebSocket endpoint at {path}")
            return
        chosen = next((p for p in SUBPROTOCOLS if p in request.subprotocols), None)
        if chosen is None:
            # [MQTT-6.0.0-3]: without the subprotocol a client is not speaking MQTT over
            # WebSocket, and a browser would drop the connection anyway.
            self._reject(400, "the WebSocket subprotocol mqtt is required")
            return
        wrapped = self.wrappedFactory.buildProtocol(self._address)
        if wrapped is None:
            # The MQTT factory's limits: per-address rate, max_connections.
            self._reject(429, "too many connections")
            return
        if self._upgradeTimer is not None and self._upgradeTimer.active():
            self._upgradeTimer.cancel()
        self._upgradeTimer = None
        # No extension is offered back, so every frame's reserved bits must be clear.
        assert self._ws is not None
        self._send(self._ws.send(AcceptConnection(subprotocol=chosen)))
        # The frames are the frame reader's from here: the handshake's objects go.
        self._ws = None
        self._frames = FrameDecoder()
        self._open = True
        self.wrapped = wrapped
        wrapped.makeConnection(self)

    def _upgradeTimedOut(self) -> None:
        self._upgradeTimer = None
        self.log.info(
            "WebSocket upgrade from {address} not completed in time", address=self._peer()
        )
        self._done = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _reject(self, status: int, why: str) -> None:
        self.log.info(
            "WebSocket upgrade from {address} refused: {why}", address=self._peer(), why=why
        )
        body = why.encode("utf-8") + b"\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        ws = self._ws
        assert ws is not None
        try:
            self._send(
                ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
            )
            self._send(ws.send(RejectData(data=body)))
        except LocalProtocolError:
            # The request was never read in full (too large or malformed): there is no HTTP
            # exchange to answer within, only a socket to close.
            pass
        self._done = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _close(self, code: int, why: str) -> None:
        self.log.info("WebSocket from {address} closed: {why}", address=self._peer(), why=why)
        self._sendClose(closeFrame(code, why))

    def _sendClose(self, frame: bytes) -> None:
        # No data frame may follow a CLOSE (RFC 6455 section 5.5.1): what the MQTT protocol
        # wrote this turn, held until the turn's end (mqttd.writes), goes first.
        flushWrites = getattr(self.wrapped, "flushWrites", None)
        if flushWrites is not None:
            flushWrites()
        self._send(frame)
        self._open = False
        self._done = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _send(self, data: bytes) -> None:
        if self._direct:
            send(self.transport, data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def _peer(self) -> str:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        return f"{host}:{getattr(peer, 'port', '')}" if host else str(peer)

    # ITransport for the MQTT protocol

    def write(self, data: bytes) -> None:
        if self._open:
            self._send(binaryHeader(len(data)) + data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        # One message rather than one per chunk: a frame header each would only cost bytes.
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._open:
            self._sendClose(closeFrame(NORMAL_CLOSURE))
        else:
            self._done = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        self._done = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def getPeer(self) -> IAddress:
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        return self.transport.getHost()  # type: ignore[union-attr]

    def getPeerCertificate(self) -> Any:
        """The TLS client certificate beneath, for C{identity = cn | san} over WSS."""
        getPeerCertificate = getattr(self.transport, "getPeerCertificate", None)
        return getPeerCertificate() if getPeerCertificate is not None else None

    # Flow control passes straight through: a frame is written as soon as it is made, so the
    # socket's buffer is the only one there is.

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class WebSocketFactory(Factory):
    """
    Wraps a listener's MQTT factory so that each accepted connection upgrades to WebSocket first.
    The wrapped factory is asked for a protocol once the upgrade is complete, with the address
    the connection was accepted from, so its per-address limits still apply; the upgrade before
    it is bounded in size and time.
    """

    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, path: str, clock: IReactorTime, upgradeTimeout: float
    ) -> None:
        self.wrapped = wrapped
        self.path = path
        self.clock = clock
        self.upgradeTimeout = upgradeTimeout

    def buildProtocol(self, addr: IAddress) -> MQTTWebSocketProtocol | None:  # type: ignore[override]
        protocol = MQTTWebSocketProtocol(
            self.wrapped, addr, self.path, self.clock, self.upgradeTimeout
        )
        protocol.factory = self
        return protocol
