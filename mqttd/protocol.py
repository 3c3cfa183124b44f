"""
The Twisted side of one MQTT connection: frames bytes through the codec,
runs the connection's timers, and calls the broker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .broker import Broker
from .codec import DecodeError, Decoder, encode
from .codec.packets import (
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    ProtocolLevel,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)
from .config import ListenerConfig
from .interfaces import Allow, Deny, IClientConnection
from .ratelimit import ConnectionRateLimiter
from .session import Session, SessionError
from .transports.tls import IdentityError, certificateIdentity

PINGRESP = encode(Pingresp())


@implementer(IClientConnection, IPushProducer)
class MQTTServerProtocol(Protocol):
    """
    One client connection.

    @ivar paused: set while the transport's write buffer is over its limit;
        the session then queues (bounded) instead of writing, so a stalled
        subscriber never stalls the publisher or grows memory without bound.
    """

    log = Logger()

    def __init__(self, broker: Broker, listener: ListenerConfig, clock: IReactorTime) -> None:
        self.broker = broker
        self.listener = listener
        self.clock = clock
        self.session: Session | None = None
        self.clientId: str | None = None
        self.protocolLevel = ProtocolLevel.MQTT_3_1_1
        self.clientAddress = "?"
        self._host = "?"
        self.paused = False
        self._decoder = Decoder(
            server=True,
            max_packet_size=broker.config.max_packet_size,
            max_connect_size=broker.config.max_connect_size,
        )
        self._connectTimer: IDelayedCall | None = None
        self._keepaliveTimer: IDelayedCall | None = None
        self._keepaliveLimit = 0.0
        self._lastReceived = 0.0
        self._graceful = False
        self._closing = False
        self._closeReason = "connection lost"
        self._held: deque[Packet] | None = None
        # The name the client's verified certificate gave it, on identity = cn | san listeners.
        self.certificateIdentity: str | None = None

    # Connection life cycle

    def connectionMade(self) -> None:
        self._notePeer()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._connectTimer = self.clock.callLater(
            self.broker.config.connect_timeout, self._connectTimedOut
        )

    def _notePeer(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        self.clientAddress = f"{host}:{getattr(peer, 'port', '')}" if host else str(peer)
        self._host = host if host else str(peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for timer in (self._connectTimer, self._keepaliveTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connectTimer = self._keepaliveTimer = None
        # Also tells an authenticator's late answer that there is no one left to answer.
        self._closing = True
        session = self.session
        if session is None:
            return
        self.session = None
        self.broker.connectionLost(session, self, self._graceful)
        self.log.info(
            "{clientId} from {address} disconnected: {reason}",
            clientId=self.clientId,
            address=self.clientAddress,
            reason=self._closeReason,
        )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            packets = self._decoder.feed(data)
        except DecodeError as e:
            self._decodeFailed(e)
            return
        if not packets:
            # Keepalive counts control packets [MQTT-3.1.2-24], so a peer
            # trickling one byte at a time cannot hold a connection open.
            return
        self._lastReceived = self.clock.seconds()
        if self._held is not None:
            self._held.extend(packets)
        else:
            self._dispatch(packets)

    def _dispatch(self, packets: Iterable[Packet]) -> None:
        """
        Hand packets to their handlers in order.  A handler that returns a
        L{Deferred} (a plugin or store doing I/O) holds every later packet of
        this client, and reading from it, until that Deferred fires, so one
        client's packets are always processed in the order sent.
        """
        handlers = self._handlers
        remaining = iter(packets)
        for packet in remaining:
            if self._closing:
                return
            try:
                result = handlers[type(packet)](self, packet)
            except SessionError as e:
                self.close(f"protocol error: {e}")
                return
            if result is not None:
                self._held = deque(remaining)
                self.transport.pauseProducing()  # type: ignore[union-attr]
                result.addCallbacks(self._handlerDone, self._handlerFailed)
                return

    def _handlerDone(self, ignored: object) -> None:
        held, self._held = self._held, None
        if self._closing or held is None:
            return
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self._dispatch(held)

    def _handlerFailed(self, failure: Failure) -> None:
        self._held = None
        if failure.check(SessionError):
            self.close(f"protocol error: {failure.value}")
            return
        self.log.failure("handling a packet from {address}", failure, address=self.clientAddress)
        self.close("internal error")

    def _decodeFailed(self, error: DecodeError) -> None:
        spec = f" {error.spec}" if error.spec else ""
        reason = f"{type(error).__name__}: {error}{spec}"
        if self.session is None and error.connack_code is not None:
            self._refuse(error.connack_code, reason)
        else:
            self.close(reason)

    def _refuse(self, code: int, reason: str) -> None:
        """Answer CONNACK with a refusal code, then close [MQTT-3.2.2-5]."""
        self.sendPacket(Connack(False, code))
        self._closing = True
        self.log.info(
            "connection from {address} refused: {reason}",
            address=self.clientAddress,
            reason=reason,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def close(self, reason: str) -> None:
        """
        Drop the connection at once; buffered output is discarded, so a peer
        that stopped reading cannot keep it open.  The will is published
        unless DISCONNECT was received.
        """
        if self._closing:
            return
        self._closing = True
        self._closeReason = reason
        if self.session is None:
            self.log.info(
                "connection from {address} closed: {reason}",
                address=self.clientAddress,
                reason=reason,
            )
        self.transport.abortConnection()  # type: ignore[union-attr]

    # Timers

    def _connectTimedOut(self) -> None:
        self._connectTimer = None
        self.close("no CONNECT within the connect timeout")

    def _checkKeepalive(self) -> None:
        idle = self.clock.seconds() - self._lastReceived
        if idle >= self._keepaliveLimit:
            self._keepaliveTimer = None
            # [MQTT-3.1.2-24]: as if the network had failed, so the will goes.
            self.close("keepalive timeout")
        else:
            self._keepaliveTimer = self.clock.callLater(
                self._keepaliveLimit - idle, self._checkKeepalive
            )

    # IClientConnection

    def sendPacket(self, packet: Packet) -> None:
        self.transport.write(encode(packet))  # type: ignore[union-attr]

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        self.transport.writeSequence(chunks)  # type: ignore[union-attr]

    # IPushProducer: the transport tells us when its write buffer fills.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.session is not None:
            self.session.pump()

    def stopProducing(self) -> None:
        self.paused = True

    # Packet handlers

    def connectReceived(self, packet: Connect) -> Deferred[None] | None:
        if self._connectTimer is not None and self._connectTimer.active():
            self._connectTimer.cancel()
        self._connectTimer = None
        # Behind a haproxy: endpoint the peer is the balancer until the PROXY header, which
        # precedes CONNECT, has been read; from now on it is the client.
        self._notePeer()
        if self.listener.identity != "none":
            identified = self._identified(packet)
            if identified is None:
                return None
            packet = identified
        decision = self.broker.authenticate(
            packet, self.listener, self._host, self.certificateIdentity
        )
        if isinstance(decision, Deferred):
            return decision.addCallback(self._authenticated, packet)
        self._authenticated(decision, packet)
        return None

    def _authenticated(self, decision: Allow | Deny | None, packet: Connect) -> None:
        if self._closing:
            # Gone while an authenticator was answering: nothing to attach to.
            return
        if not isinstance(decision, Allow):
            code = decision.code if isinstance(decision, Deny) else ConnackCode.NOT_AUTHORIZED
            why = decision.reason if isinstance(decision, Deny) else "no decision"
            self._refuse(code, f"client id {packet.client_id!r} not authenticated: {why}")
            return
        code, session, sessionPresent = self.broker.connect(
            self, packet, self.listener, decision, self._host
        )
        if session is None:
            self._refuse(code, f"CONNACK {code} for client id {packet.client_id!r}")
            return
        self.session = session
        self.clientId = session.clientId
        self.protocolLevel = ProtocolLevel(packet.protocol_level)
        if packet.keepalive:
            self._keepaliveLimit = packet.keepalive * 1.5
            self._keepaliveTimer = self.clock.callLater(self._keepaliveLimit, self._checkKeepalive)
        # MQTT 3.1 has no Session Present flag; its CONNACK byte is reserved.
        present = sessionPresent and self.protocolLevel == ProtocolLevel.MQTT_3_1_1
        self.sendPacket(Connack(present, 0))
        self.log.info(
            "{clientId} connected from {address} (protocol level {protocolLevel}, "
            "clean session {clean}, keepalive {keepalive})",
            clientId=session.clientId,
            address=self.clientAddress,
            protocolLevel=packet.protocol_level,
            clean=packet.clean_session,
            keepalive=packet.keepalive,
        )
        session.resume(self)

    def _identified(self, packet: Connect) -> Connect | None:
        """
        The CONNECT as the broker is to see it on a listener with C{identity = cn | san}: the
        username is the one the verified client certificate names, whatever the client sent
        (as mosquitto's use_identity_as_username), so no client can claim another's name.  The
        password is dropped because the certificate is the credential.  L{None} once refused.
        """
        getPeerCertificate = getattr(self.transport, "getPeerCertificate", None)
        certificate = getPeerCertificate() if getPeerCertificate is not None else None
        if certificate is None:
            # Only reachable when TLS is not mqttd's (config refuses identity without it).
            self._refuse(ConnackCode.NOT_AUTHORIZED, "no client certificate")
            return None
        try:
            username = certificateIdentity(certificate, self.listener.identity)  # type: ignore[arg-type]
        except IdentityError as e:
            self._refuse(ConnackCode.NOT_AUTHORIZED, f"client certificate refused: {e}")
            return None
        self.certificateIdentity = username
        return replace(packet, username=username, password=None)

    def publishReceived(self, packet: Publish) -> Deferred[None] | None:
        return self.broker.publishReceived(self.session, packet)  # type: ignore[arg-type]

    def pubackReceived(self, packet: Puback) -> None:
        self.session.pubackReceived(packet.packet_id)  # type: ignore[union-attr]

    def pubrecReceived(self, packet: Pubrec) -> Deferred[None] | None:
        return self.broker.pubrecReceived(self.session, packet.packet_id)  # type: ignore[arg-type]

    def pubrelReceived(self, packet: Pubrel) -> Deferred[None] | None:
        return self.broker.pubrelReceived(self.session, packet.packet_id)  # type: ignore[arg-type]

    def pubcompReceived(self, packet: Pubcomp) -> None:
        self.session.pubcompReceived(packet.packet_id)  # type: ignore[union-attr]

    def subscribeReceived(self, packet: Subscribe) -> Deferred[None] | None:
        return self.broker.subscribe(self.session, packet)  # type: ignore[arg-type]

    def unsubscribeReceived(self, packet: Unsubscribe) -> None:
        self.broker.unsubscribe(self.session, packet)  # type: ignore[arg-type]

    def pingReceived(self, packet: Pingreq) -> None:
        self.transport.write(PINGRESP)  # type: ignore[union-attr]

    def disconnectReceived(self, packet: Disconnect) -> None:
        # [MQTT-3.14.4-3]: the will is discarded.
        self._graceful = True
        self._closing = True
        self._closeReason = "client sent DISCONNECT"
        self.transport.loseConnection()  # type: ignore[union-attr]

    # The decoder only lets CONNECT through first and never a second one, so
    # every handler but connectReceived runs with a session attached.
    _handlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]] = {
        Connect: connectReceived,
        Publish: publishReceived,
        Puback: pubackReceived,
        Pubrec: pubrecReceived,
        Pubrel: pubrelReceived,
        Pubcomp: pubcompReceived,
        Subscribe: subscribeReceived,
        Unsubscribe: unsubscribeReceived,
        Pingreq: pingReceived,
        Disconnect: disconnectReceived,
    }


class MQTTServerFactory(Factory):
    """Builds one L{MQTTServerProtocol} per accepted connection of a listener."""

    noisy = False

    def __init__(self, broker: Broker, listener: ListenerConfig, clock: IReactorTime) -> None:
        self.broker = broker
        self.listener = listener
        self.clock = clock
        self.rateLimiter: ConnectionRateLimiter | None = None
        if listener.connect_rate_per_address > 0:
            self.rateLimiter = ConnectionRateLimiter(
                clock,
                listener.connect_rate_per_address,
                listener.connect_burst_per_address
                or max(1, int(listener.connect_rate_per_address)),
            )

    def buildProtocol(self, addr: IAddress) -> MQTTServerProtocol | None:  # type: ignore[override]
        limiter = self.rateLimiter
        if limiter is not None and not limiter.allow(getattr(addr, "host", str(addr))):
            # Returning None makes Twisted close the socket straight away.
            return None
        return MQTTServerProtocol(self.broker, self.listener, self.clock)
