"""
The Twisted side of one MQTT connection: frames bytes through the codec,
runs the connection's timers, and calls the broker.

The way to CONNACK (authentication, enhanced authentication) is
L{mqttd.handshake}'s.  What differs between protocol levels after it is in
the packet tables at the end of L{MQTTServerProtocol}: C{_handlers} for 3.1
and 3.1.1, C{_handlers5} for 5.0 (Topic Aliases, AUTH), and
C{_authenticatingHandlers} while an enhanced authentication runs.

Over 500 lines, for a reason: one connection's framing, timers, write path,
orderly close and packet tables are one object's state, each touching the
others'; the handshake, the part that stands alone, is already apart.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .broker import Broker
from .codec import DecodeError, Decoder, encode
from .codec.errors import (
    IdentifierRejected,
    LimitExceeded,
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    UnacceptableProtocol,
)
from .codec.packets import (
    Auth,
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
    ReasonCode,
    Subscribe,
    Unsubscribe,
)
from .codec.properties import Properties
from .config import ListenerConfig
from .handshake import ConnectHandshake, EnhancedAuth
from .interfaces import (
    IClientConnection,
)
from .ratelimit import ConnectionRateLimiter
from .router import NO_LOCAL, RETAIN_AS_PUBLISHED
from .session import Session, SessionError
from .timeouts import Timeout, Timeouts
from .writes import WriteCoalescer, coalescible, layered, send

PINGRESP = encode(Pingresp())


def _sslReason(error: BaseException | None) -> str:
    """
    What OpenSSL said, without the tuple dressing: C{SSL.Error}'s argument is a list of
    (library, function, reason) triples.
    """
    args = getattr(error, "args", ())
    entries = args[0] if args and isinstance(args[0], list) else None
    if entries and all(isinstance(e, tuple) and len(e) == 3 for e in entries):
        return "; ".join(str(e[2]) for e in entries)
    return str(error) or type(error).__name__


# What a 3.1 / 3.1.1 bridge's subscriptions get beyond their QoS: an MQTT 5 bridge asks for both.
BRIDGE_SUBSCRIPTION_OPTIONS = NO_LOCAL | RETAIN_AS_PUBLISHED

# The Connect Reason Codes that say to a 5.0 client what the authenticators and the broker core,
# which answer in 3.1.1 return codes, meant [MQTT-3.2.2-8].
_REASON_FOR_CONNACK_CODE: dict[int, int] = {
    ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION: ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackCode.IDENTIFIER_REJECTED: ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    ConnackCode.SERVER_UNAVAILABLE: ReasonCode.SERVER_UNAVAILABLE,
    ConnackCode.BAD_USERNAME_OR_PASSWORD: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ConnackCode.NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
}


def _setNoDelay(transport: object) -> None:
    """
    Turn Nagle's algorithm off on the TCP connection under C{transport}, through the TLS and
    WebSocket layers that may wrap it (each keeps the one below as C{.transport}).  Sockets
    that are not TCP (UNIX) are left as they are.
    """
    for _ in range(4):
        setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            try:
                setTcpNoDelay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


@implementer(IClientConnection, IPushProducer)
class MQTTServerProtocol(ConnectHandshake, Protocol):
    """
    One client connection.

    @ivar paused: set while the transport's write buffer is over its limit;
        the session then queues (bounded) instead of writing, so a stalled
        subscriber never stalls the publisher or grows memory without bound.
    @ivar maxPacketSize: a 5.0 client's Maximum Packet Size, 0 when it set
        none; no packet larger is sent to it [MQTT-3.1.2-24].
    @cvar closeTimeout: seconds a closing connection has to hand its last
        bytes (a CONNACK or DISCONNECT saying why) to the peer before it is
        aborted, so a peer that stopped reading cannot hold it open.
    """

    log = Logger()
    closeTimeout = 5.0

    # What __init__ sets lives in slots: with Twisted's own attributes a __dict__ would pass
    # the 30 keys a shared-key instance dict can hold and cost ~1.5 KB per connection.
    # Attributes set elsewhere go to the __dict__ Protocol (no __slots__) gives every instance.
    __slots__ = (
        "_abortTimer",
        "_closeReason",
        "_closing",
        "_connectTimer",
        "_decoder",
        "_direct",
        "_enhanced",
        "_graceful",
        "_held",
        "_host",
        "_keepalive",
        "_keepaliveTimer",
        "_lastReceived",
        "_out",
        "_stats",
        "_timeouts",
        "_topicAliases",
        "_username",
        "_who",
        "_writes",
        "bridge",
        "broker",
        "certificateIdentity",
        "clientAddress",
        "clientId",
        "clock",
        "listener",
        "maxPacketSize",
        "paused",
        "protocolLevel",
        "session",
    )

    def __init__(
        self, broker: Broker, listener: ListenerConfig, clock: IReactorTime, timeouts: Timeouts
    ) -> None:
        self.broker = broker
        self.listener = listener
        self.clock = clock
        self._stats = broker.stats
        self.session: Session | None = None
        self.clientId: str | None = None
        self.protocolLevel = ProtocolLevel.MQTT_3_1_1
        self.clientAddress = "?"
        self._host = "?"
        self.paused = False
        self._decoder = Decoder(
            server=True,
            mqtt5=True,
            max_packet_size=broker.config.max_packet_size,
            max_connect_size=broker.config.max_connect_size,
        )
        # Both on the listener's shared Timeouts rather than callLater (see mqttd.timeouts).
        self._timeouts = timeouts
        self._connectTimer: Timeout | None = None
        self._keepaliveTimer: Timeout | None = None
        # The Keep Alive in seconds, an int: a float of its 1.5 times would be 24 bytes more.
        self._keepalive = 0
        self._lastReceived = 0.0
        self._graceful = False
        self._closing = False
        self._closeReason = "connection lost"
        self._abortTimer: IDelayedCall | None = None
        self.maxPacketSize = 0
        self._held: deque[Packet] | None = None
        # A 5.0 client's Topic Aliases, alias to topic; this connection's only [MQTT-3.3.2-7].
        self._topicAliases: dict[int, str] | None = None
        # The name the client's verified certificate gave it, on identity = cn | san listeners.
        self.certificateIdentity: str | None = None
        self._enhanced: EnhancedAuth | None = None
        # Set when the client's CONNECT carried the bridge bit: it is another broker.
        self.bridge = False
        # Who the accepted client is, for the connect and disconnect lines.
        self._username: str | None = None
        self._who = "anonymous"
        # The packets of this reactor turn, written as one (writes.py) when _writes is set: on a
        # plain TCP connection straight to its socket (_direct); through TLS or WebSocket as one
        # write of the layer, so one TLS record or WebSocket frame carries them all (an MQTT
        # packet may share a frame [MQTT-6.0.0-2]).  None between turns, so an idle connection
        # holds no list.
        self._out: list[bytes] | None = None
        self._writes: WriteCoalescer | None = None
        self._direct = False

    # Connection life cycle

    def connectionMade(self) -> None:
        self._stats.sockets += 1
        if isinstance(self.factory, MQTTServerFactory):
            self.factory.connectionOpened()
        self._notePeer()
        if self.listener.tcp_nodelay:
            _setNoDelay(self.transport)
        if isinstance(self.factory, MQTTServerFactory):
            self._direct = coalescible(self.transport)
            if self._direct or layered(self.transport):
                self._writes = self.factory.writes
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._connectTimer = self._timeouts.set(
            self.broker.config.connect_timeout, MQTTServerProtocol._connectTimedOut, self
        )

    def _notePeer(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        self.clientAddress = f"{host}:{getattr(peer, 'port', '')}" if host else str(peer)
        self._host = host if host else str(peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for timeout in (self._connectTimer, self._keepaliveTimer):
            if timeout is not None:
                self._timeouts.cancel(timeout)
        if self._abortTimer is not None and self._abortTimer.active():
            self._abortTimer.cancel()
        self._connectTimer = self._keepaliveTimer = self._abortTimer = None
        if isinstance(self.factory, MQTTServerFactory):
            self.factory.connectionClosed()
        # Also tells an authenticator's late answer that there is no one left to answer.
        self._closing = True
        # OpenSSL is loaded only for configurations that use TLS (see mqttd.footprint).
        ssl = sys.modules.get("OpenSSL.SSL")
        if self.clientId is None and ssl is not None and reason.check(ssl.Error) is not None:
            # The TLS layer around this protocol gave up before any MQTT got through.
            self._stats.tlsHandshakeFailures += 1
            self.broker.repeats.emit(
                LogLevel.warn,
                self._host,
                "TLS handshakes failed",
                "TLS handshake from {address} on listener {listener} failed: {why}",
                address=self.clientAddress,
                listener=self.listener.name,
                why=_sslReason(reason.value),
            )
        session = self.session
        if session is None:
            return
        self.session = None
        self.broker.connectionLost(session, self, self._graceful, self._closeReason)
        if self.broker.logConnections:
            self.log.info(
                "client {clientId} disconnected from {address} ({who}): {reason}",
                clientId=self.clientId,
                address=self.clientAddress,
                who=self._who,
                username=self._username,
                reason=self._closeReason,
            )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        packets: list[Any]
        stats = self._stats
        stats.bytesReceived += len(data)
        session = self.session
        if session is not None and self._held is None:
            # A lone PUBACK, what most reads of a subscriber are, goes straight to its session.
            packetId = self._decoder.lone_puback(data)
            if packetId:
                stats.packetsReceived += 1
                self._lastReceived = self.clock.seconds()
                try:
                    session.pubackReceived(packetId)
                except SessionError as e:
                    self.close(f"protocol error: {e}", e.reasonCode)
                return
        try:
            packets = self._decoder.feed(data)
        except DecodeError as e:
            # The good packets read before the bad one are handled first, as mosquitto does:
            # a CONNECT gets its CONNACK, a PUBLISH is delivered; then the error, in its place.
            packets = [*e.packets, e]
        if not packets:
            # Keepalive counts control packets [MQTT-3.1.2-24], so a peer
            # trickling one byte at a time cannot hold a connection open.
            return
        stats.packetsReceived += len(packets)
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
                self.close(f"protocol error: {e}", e.reasonCode)
                return
            if result is not None:
                if self._closing:
                    # Answered at once, and that answer closed the connection.
                    return
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
        error = failure.value
        if isinstance(error, SessionError):
            self.close(f"protocol error: {error}", error.reasonCode)
            return
        self.log.failure("handling a packet from {address}", failure, address=self.clientAddress)
        self.close("internal error")

    def decodeFailed(self, error: DecodeError) -> None:
        spec = f" {error.spec}" if error.spec else ""
        reason = f"{type(error).__name__}: {error}{spec}"
        if error.protocol_level == ProtocolLevel.MQTT_5:
            # Answered with the error's reason code: in CONNACK before the connection is
            # accepted, in DISCONNECT after [MQTT-4.13.1-1] (bad-inputs 17-20).
            if self.clientId is None:
                self.protocolLevel = ProtocolLevel.MQTT_5
                self._refuse(error.reason_code, reason)
            else:
                self.close(reason, error.reason_code)
        elif self.session is None and error.connack_code is not None:
            self._refuse(error.connack_code, reason)
        else:
            self.close(reason)

    def _refuse(self, code: int, reason: str) -> None:
        """
        Answer CONNACK with a refusal code, then close [MQTT-3.2.2-5]; a 3.1.1
        code becomes its 5.0 counterpart for a 5.0 client [MQTT-3.2.2-8].
        """
        if self.protocolLevel == ProtocolLevel.MQTT_5:
            code = _REASON_FOR_CONNACK_CODE.get(code, code)
        self.sendPacket(Connack(False, code))
        self._closing = True
        # Summarised per address: a flood of bad logins or bad CONNECTs from one host writes a
        # line a minute, not one per connection.
        self.broker.repeats.emit(
            LogLevel.warn,
            self._host,
            "connections refused",
            "connection from {address} on listener {listener} refused: {reason}",
            address=self.clientAddress,
            listener=self.listener.name,
            reason=reason,
            code=code,
        )
        self._loseConnection()

    def _loseConnection(self) -> None:
        """
        Close with FIN once the transport has written what it holds, so the
        peer reads the CONNACK or DISCONNECT that says why; abort if that has
        not happened within L{closeTimeout}.
        """
        # Nothing may follow the last packet [MQTT-3.14.4-1]: paused, the session queues
        # instead of writing while the transport flushes and closes.
        self.paused = True
        self.flushWrites()
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self._abortTimer is None:
            self._abortTimer = self.clock.callLater(self.closeTimeout, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self._abortTimer = None
        self.log.info(
            "{address} took no close within {timeout} s: aborted",
            address=self.clientAddress,
            timeout=self.closeTimeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self, reason: str, reasonCode: int | None = None) -> None:
        """
        Close the connection: the peer is sent what the transport holds and
        then a FIN, and is aborted if it has not taken them within
        L{closeTimeout}.  The will is published unless DISCONNECT was
        received.

        @param reasonCode: for an accepted 5.0 client, the reason code of the
            DISCONNECT to send first [MQTT-3.14.0-1].
        """
        if self._closing:
            return
        self._closing = True
        self._closeReason = reason
        if self.session is None:
            self.broker.repeats.emit(
                LogLevel.info,
                self._host,
                "connections closed before CONNACK",
                "connection from {address} on listener {listener} closed: {reason}",
                address=self.clientAddress,
                listener=self.listener.name,
                reason=reason,
            )
        if (
            reasonCode is not None
            and self.protocolLevel == ProtocolLevel.MQTT_5
            and self.clientId is not None
        ):
            self.sendPacket(Disconnect(reasonCode))
        self._loseConnection()

    # Timers

    def _connectTimedOut(self) -> None:
        self._connectTimer = None
        if self._enhanced is not None:
            self.close("enhanced authentication not finished within the connect timeout")
        else:
            self.close("no CONNECT within the connect timeout")

    def _stopConnectTimer(self) -> None:
        if self._connectTimer is not None:
            self._timeouts.cancel(self._connectTimer)
        self._connectTimer = None

    def _startKeepalive(self, keepalive: int) -> None:
        """Close the connection once no packet has come for 1.5 x C{keepalive} seconds
        [MQTT-3.1.2-24]."""
        self._keepalive = keepalive
        self._keepaliveTimer = self._timeouts.set(
            keepalive * 1.5, MQTTServerProtocol._checkKeepalive, self
        )

    def _checkKeepalive(self) -> None:
        # Not moved on every packet, which would cost the heap a push per packet: when it
        # comes due it looks at the last packet's time, and is set again for what is left.
        limit = self._keepalive * 1.5
        idle = self.clock.seconds() - self._lastReceived
        if idle >= limit:
            self._keepaliveTimer = None
            # [MQTT-3.1.2-24]: as if the network had failed, so the will goes.
            self.close("keepalive timeout", ReasonCode.KEEP_ALIVE_TIMEOUT)
        else:
            self._keepaliveTimer = self._timeouts.set(
                limit - idle, MQTTServerProtocol._checkKeepalive, self
            )

    # IClientConnection

    def sendPacket(self, packet: Packet) -> None:
        data = self._encodeWithin(packet)
        if data is not None:
            self._write(data)

    def _write(self, data: bytes) -> None:
        stats = self._stats
        stats.controlSent += 1
        stats.controlBytesSent += len(data)
        writes = self._writes
        if writes is None:
            self.transport.write(data)  # type: ignore[union-attr]
            return
        out = self._out
        if out is None:
            self._out = [data]
            writes.waiting(self)
        else:
            out.append(data)

    def flushWrites(self) -> None:
        """Send the packets this turn wrote, if any, as one."""
        out = self._out
        if out is not None:
            self._out = None
            if self._direct:
                send(self.transport, b"".join(out))
            else:
                self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _encodeWithin(self, packet: Packet) -> bytes | None:
        """
        C{packet} encoded within the client's Maximum Packet Size: without its
        Reason String and User Properties if that makes it fit [MQTT-3.1.2-24,
        MQTT-3.2.2-19, MQTT-3.2.2-20 and their PUBACK to AUTH counterparts],
        L{None} if nothing does, and then it is not sent [MQTT-3.1.2-25].
        """
        data = encode(packet, self.protocolLevel)
        limit = self.maxPacketSize
        if not limit or len(data) <= limit:
            return data
        properties: Properties | None = getattr(packet, "properties", None)
        if properties is not None and (properties.reason_string or properties.user_properties):
            bare = replace(properties, reason_string=None, user_properties=())
            data = encode(replace(packet, properties=bare), self.protocolLevel)  # type: ignore[arg-type]
            if len(data) <= limit:
                return data
        self.log.info(
            "{packet} not sent to {address}: larger than its Maximum Packet Size {limit}",
            packet=type(packet).__name__.upper(),
            address=self.clientAddress,
            limit=limit,
        )
        return None

    def writeSequence(self, chunks: Sequence[bytes]) -> None:
        # Only PUBLISH and PUBREL come this way: counted by first byte, so type, QoS, DUP and
        # RETAIN are told apart later at no cost now; the packet identifier and 5.0 properties
        # between the first and last chunks are added up from elsewhere (mqttd.stats).
        header = chunks[0][0]
        stats = self._stats
        stats.sentByHeader[header] += 1
        stats.sentBytesByHeader[header] += len(chunks[0]) + len(chunks[-1])
        writes = self._writes
        if writes is None:
            self.transport.writeSequence(chunks)  # type: ignore[union-attr]
            return
        out = self._out
        if out is None:
            self._out = list(chunks)
            writes.waiting(self)
        else:
            out.extend(chunks)

    # IPushProducer: the transport tells us when its write buffer fills.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self._closing:
            # Closing: the transport drains its last bytes, and nothing more is written.
            return
        self.paused = False
        if self.session is not None:
            self.session.pump()

    def stopProducing(self) -> None:
        self.paused = True

    # Packet handlers

    def publishReceived(self, packet: Publish) -> Deferred[None] | None:
        return self.broker.publishReceived(self.session, packet)  # type: ignore[arg-type]

    def publishReceived5(self, packet: Publish) -> Deferred[None] | None:
        alias = packet.properties.topic_alias
        if alias is not None:
            aliases = self._topicAliases
            if aliases is None:
                # Made by the first alias: most clients send none (64 bytes of each).
                aliases = self._topicAliases = {}
            # The decoder refused alias 0 [MQTT-3.3.2-8].
            if alias > self.broker.config.topic_alias_maximum:
                # [MQTT-3.2.2-17]; bad-inputs 19.
                raise SessionError(
                    f"topic alias {alias} above the maximum", ReasonCode.TOPIC_ALIAS_INVALID
                )
            if packet.topic:
                aliases[alias] = packet.topic
            else:
                topic = aliases.get(alias)
                if topic is None:
                    raise SessionError(f"topic alias {alias} was never set")
                packet = replace(packet, topic=topic)
        return self.broker.publishReceived(self.session, packet)  # type: ignore[arg-type]

    def pubackReceived(self, packet: Puback) -> None:
        self.session.pubackReceived(packet.packet_id)  # type: ignore[union-attr]

    def pubrecReceived(self, packet: Pubrec) -> Deferred[None] | None:
        return self.broker.pubrecReceived(self.session, packet.packet_id, packet.reason_code)  # type: ignore[arg-type]

    def pubrelReceived(self, packet: Pubrel) -> Deferred[None] | None:
        return self.broker.pubrelReceived(self.session, packet.packet_id)  # type: ignore[arg-type]

    def pubcompReceived(self, packet: Pubcomp) -> None:
        self.session.pubcompReceived(packet.packet_id)  # type: ignore[union-attr]

    def subscribeReceived(self, packet: Subscribe) -> Deferred[None] | None:
        if self.bridge:
            # As mosquitto treats its bridges: what the bridge published is not sent back to it
            # (no loops), and retained flags go as published, so the other broker retains too.
            packet = replace(
                packet,
                subscriptions=[
                    (topicFilter, qos | BRIDGE_SUBSCRIPTION_OPTIONS)
                    for topicFilter, qos in packet.subscriptions
                ],
            )
        return self.broker.subscribe(self.session, packet)  # type: ignore[arg-type]

    def unsubscribeReceived(self, packet: Unsubscribe) -> None:
        self.broker.unsubscribe(self.session, packet)  # type: ignore[arg-type]

    def pingReceived(self, packet: Pingreq) -> None:
        if self.maxPacketSize != 1:
            # PINGRESP is 2 bytes: only a Maximum Packet Size of 1 is smaller [MQTT-3.1.2-24].
            self._write(PINGRESP)

    def disconnectReceived(self, packet: Disconnect) -> None:
        if self.protocolLevel == ProtocolLevel.MQTT_5:
            session = self.session
            assert session is not None
            expiry = packet.properties.session_expiry_interval
            if expiry is not None:
                if expiry and not session.expiryInterval:
                    # Section 3.14.2.2.2: a session that was to end cannot be kept after all.
                    raise SessionError("Session Expiry Interval set on DISCONNECT after 0")
                session.expiryInterval = expiry
            # Only Normal Disconnection discards the will; 0x04 and errors publish it.
            self._graceful = packet.reason_code == ReasonCode.NORMAL_DISCONNECTION
        else:
            # [MQTT-3.14.4-3]: the will is discarded.
            self._graceful = True
        self._closing = True
        self._closeReason = "client sent DISCONNECT"
        self._loseConnection()

    # A decoding error comes in the packet stream, after the good packets of its read.
    _errorHandlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]] = dict.fromkeys(
        (
            DecodeError,
            MalformedPacket,
            ProtocolViolation,
            PacketTooLarge,
            LimitExceeded,
            UnacceptableProtocol,
            IdentifierRejected,
        ),
        decodeFailed,
    )

    # The decoder only lets CONNECT through first and never a second one, so
    # every handler but connectReceived runs with a session attached.
    _handlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]] = {
        **_errorHandlers,
        Connect: ConnectHandshake.connectReceived,
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

    # A 5.0 connection's own table, so 3.1.1 PUBLISH pays nothing for Topic Aliases.
    _handlers5: dict[type, Callable[[Any, Any], Deferred[Any] | None]] = {
        **_handlers,
        Publish: publishReceived5,
        Auth: ConnectHandshake.authReceived,
    }

    # From a CONNECT with an Authentication Method to its CONNACK.
    _authenticatingHandlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]] = {
        **dict.fromkeys(_handlers, ConnectHandshake.notDuringAuthentication),
        Auth: ConnectHandshake.authBeforeConnack,
        Disconnect: ConnectHandshake.authenticationAbandoned,
        **_errorHandlers,
    }


class MQTTServerFactory(Factory):
    """Builds one L{MQTTServerProtocol} per accepted connection of a listener."""

    noisy = False

    def __init__(self, broker: Broker, listener: ListenerConfig, clock: IReactorTime) -> None:
        self.broker = broker
        self.listener = listener
        self.clock = clock
        self.writes = WriteCoalescer(clock)
        self.timeouts = Timeouts(clock)
        self.rateLimiter: ConnectionRateLimiter | None = None
        # This listener's connections open now, for its max_connections.
        self.openConnections = 0
        if listener.connect_rate_per_address > 0:
            self.rateLimiter = ConnectionRateLimiter(
                clock,
                listener.connect_rate_per_address,
                listener.connect_burst_per_address
                or max(1, int(listener.connect_rate_per_address)),
            )

    def buildProtocol(self, addr: IAddress) -> MQTTServerProtocol | None:  # type: ignore[override]
        host = getattr(addr, "host", None)
        if host is None:
            # Not an IP address (a UNIX socket's): its text, made only then (~0.6 us).
            host = str(addr)
        limiter = self.rateLimiter
        broker = self.broker
        listener = self.listener
        # Returning None makes Twisted close the socket straight away: a refusal costs the
        # broker no protocol, no timer and, summarised per address, one log line a minute.
        if limiter is not None and not limiter.allow(host):
            self._refused(host, "over connect_rate_per_address")
            return None
        if listener.max_connections and self.openConnections >= listener.max_connections:
            self._refused(host, f"listener max_connections ({listener.max_connections}) reached")
            return None
        limit = broker.config.max_connections
        if limit and broker.openConnections >= limit:
            self._refused(host, f"broker max_connections ({limit}) reached")
            return None
        protocol = MQTTServerProtocol(broker, listener, self.clock, self.timeouts)
        protocol.factory = self
        return protocol

    def _refused(self, host: str, why: str) -> None:
        self.broker.repeats.emit(
            LogLevel.warn,
            host,
            f"connections refused, {why}",
            "connection from {address} to listener {listener} refused: {why}",
            address=host,
            listener=self.listener.name,
            why=why,
        )

    def connectionOpened(self) -> None:
        """A protocol of this factory is connected: count it against the limits."""
        self.openConnections += 1
        self.broker.openConnections += 1

    def connectionClosed(self) -> None:
        """A protocol of this factory has lost its connection."""
        self.openConnections -= 1
        self.broker.openConnections -= 1
