"""
A bridge: a local session on the broker plus an MQTT client connection to another broker.

The local side is an ordinary persistent session whose connection is a L{BridgeConnection}:
the broker routes to it, queues for it (in its store) while the remote broker is away and
re-sends what was in flight when the link returns, exactly as it does for any client.  What the
session writes is decoded, its topic mapped by the C{topic} rules, and sent to the remote
broker; what the remote broker sends is mapped back and published through the same session.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.broker import Broker
from mqttd.codec import DecodeError, Decoder
from mqttd.codec.packets import (
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
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
from mqttd.codec.properties import NO_PROPERTIES, Properties
from mqttd.config import ListenerConfig
from mqttd.interfaces import Allow, IClientConnection, ILinkOwner
from mqttd.message import Message
from mqttd.router import NO_LOCAL, RETAIN_AS_PUBLISHED, RETAIN_HANDLING_NEVER
from mqttd.session import Session, SessionError
from mqttd.transports.tls import TLS_VERSIONS

from .client import MQTTClientProtocol
from .config import BridgeConfig, localTopic, remoteTopic

# Subscription options of the local session: messages that came in over the bridge do not go
# back out (no loops), and retained flags go out as published.
_LOCAL_OPTIONS = NO_LOCAL | RETAIN_AS_PUBLISHED
_SUBSCRIBE_ID = 1


class BridgeStats:
    """A bridge's counters, for $SYS and metrics."""

    __slots__ = ("connectFailures", "links", "messagesReceived", "messagesSent", "reconnects")

    def __init__(self) -> None:
        self.messagesSent = 0
        self.messagesReceived = 0
        self.links = 0
        self.reconnects = 0
        self.connectFailures = 0


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


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, bridge: Bridge, connect: Connect) -> None:
        self.bridge = bridge
        self.connect = connect

    def buildProtocol(self, addr: Any) -> Protocol:
        config = self.bridge.config
        return MQTTClientProtocol(
            self.bridge,
            self.connect,
            self.bridge.clock,
            config.connect_timeout,
            self.bridge.broker.config.max_packet_size,
        )


class _Probe(Protocol):
    """Connects, and so proves the primary is reachable, then hangs up."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(ILinkOwner)
class Bridge:
    """
    One C{[bridge:NAME]}: keeps a link to one of the remote addresses, reconnecting with
    exponential backoff and jitter, and moves the configured topics across it.

    @ivar connected: whether the link is up (CONNACK accepted).
    @ivar address: the address of the link, or of the attempt under way.
    """

    log = Logger()

    def __init__(
        self,
        config: BridgeConfig,
        broker: Broker,
        reactor: Any,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.stats = BridgeStats()
        self.connected = False
        self.session: Session | None = None
        self._rng = rng or random.Random()
        self._listener = ListenerConfig(name=f"bridge:{config.name}", endpoint="bridge")
        self._conn = BridgeConnection(self, config.protocolLevel)
        # The broker refuses clients that would take this connection's session.
        self.localConnection: IClientConnection = self._conn
        # Whether every outgoing topic stays as it is: what the session writes then goes to
        # the remote broker byte for byte, never decoded.
        self.unmapped = all(
            rule.localPrefix == rule.remotePrefix for rule in config.topics if rule.outgoing
        )
        self._link: MQTTClientProtocol | None = None
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._probeTimer: IDelayedCall | None = None
        self._index = 0
        self.address = config.addresses[0]
        self._delay = 0.0
        self._private = config.try_private and config.protocolLevel < 5
        self._running = False
        self._stopped: Deferred[None] | None = None
        # Packets from the remote broker held while the broker finishes one (a store flush).
        self._held: deque[Packet] | None = None
        self._statsTimer: IDelayedCall | None = None
        # Set when the link is closed to move it back to the primary address.
        self._returnToPrimary = False

    # Life cycle

    def start(self) -> None:
        """Subscribe the local session, then connect."""
        self._running = True
        session = self._attachLocal()
        if session is not None:
            self._reconcile(session)
            self.broker.connectionLost(session, self._conn, graceful=True)
        self.broker.bridges[self.config.name] = self
        self._notify(False)
        self._connect()
        if self.broker.config.sys_interval:
            self._publishCounters()

    def _publishCounters(self) -> None:
        prefix = f"$SYS/broker/connection/{self.config.name}/"
        for key, value in self.counters().items():
            self.broker.route(Message(prefix + key, str(value).encode(), 0, True))
        self._statsTimer = self.clock.callLater(
            self.broker.config.sys_interval, self._publishCounters
        )

    def stop(self) -> Deferred[None]:
        """Disconnect cleanly; fires once the link is closed.  The local session is kept."""
        self._running = False
        if self.broker.bridges.get(self.config.name) is self:
            del self.broker.bridges[self.config.name]
        for timer in (self._retry, self._probeTimer, self._statsTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._probeTimer = self._statsTimer = None
        if self._attempt is not None:
            self._attempt.cancel()
        link = self._link
        if link is None:
            return succeed(None)
        self._stopped = Deferred()
        remoteState = self.config.remoteNotificationTopic
        if remoteState is not None and link.accepted:
            # DISCONNECT discards the will, so the remote broker is told in so many words.
            link.send(Publish(remoteState, b"0", 0, True))
        link.disconnect("bridge stopped")
        return self._stopped

    # The local session

    def _attachLocal(self) -> Session | None:
        config = self.config
        level = int(self._conn.protocolLevel)
        properties = Properties(session_expiry_interval=0xFFFFFFFF) if level == 5 else NO_PROPERTIES
        packet = Connect(level, config.local_client_id, False, 0, properties=properties)
        code, session, _ = self.broker.connect(
            self._conn, packet, self._listener, Allow(identity=config.local_username)
        )
        if session is None:
            self.log.error(
                "bridge {name}: the broker refused its local session (CONNACK {code})",
                name=config.name,
                code=code,
            )
            return None
        session.maxInflight = config.max_inflight
        session.maxQueued = config.max_queued_messages
        session.maxQueuedBytes = config.max_queued_bytes
        self.session = session
        return session

    def _reconcile(self, session: Session) -> None:
        """Make the local subscriptions those of the rules (a restored session may differ)."""
        wanted = {rule.localFilter for rule in self.config.topics if rule.outgoing}
        stale = [f for f in session.subscriptions if f not in wanted]
        if stale:
            self.broker.unsubscribe(session, Unsubscribe(_SUBSCRIBE_ID, stale))
        # Retained messages go out when the link comes up, not into the queue now.
        self._subscribeLocal(session, RETAIN_HANDLING_NEVER)

    def _subscribeLocal(self, session: Session, handling: int) -> None:
        wanted: dict[str, int] = {}
        for rule in self.config.topics:
            if rule.outgoing:
                wanted[rule.localFilter] = max(wanted.get(rule.localFilter, 0), rule.qos)
        if wanted:
            subscriptions = [(f, qos | _LOCAL_OPTIONS | handling) for f, qos in wanted.items()]
            self.broker.subscribe(session, Subscribe(_SUBSCRIBE_ID, subscriptions))

    def localSubscribed(self, packet: Suback | Unsuback) -> None:
        if isinstance(packet, Suback):
            for code in packet.return_codes:
                if code >= 0x80:
                    self.log.warn(
                        "bridge {name}: a local subscription was refused (0x{code:02x});"
                        " the ACL must let {user} read what goes out",
                        name=self.config.name,
                        code=code,
                        user=self.config.local_username,
                    )

    def localClosed(self, reason: str) -> None:
        # Only when the broker takes the session away: another client took its client
        # identifier, or the broker is stopping.
        self.log.warn(
            "bridge {name}: local session {clientId} closed: {reason}",
            name=self.config.name,
            clientId=self.config.local_client_id,
            reason=reason,
        )
        if self._link is not None:
            self._link.abort(f"local session closed: {reason}")

    # Connecting

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        host, port = self.address = self.config.addresses[self._index]
        connect = self._connectPacket()
        self._attempt = self._endpoint(host, port).connect(_LinkFactory(self, connect))
        self._attempt.addCallbacks(self._tcpConnected, self._connectFailed)

    def _connectPacket(self) -> Connect:
        config = self.config
        level = config.protocolLevel
        properties = NO_PROPERTIES
        if level == 5:
            properties = Properties(
                session_expiry_interval=(
                    None if config.clean_start else config.session_expiry_interval or None
                ),
                maximum_packet_size=self.broker.config.max_packet_size,
                receive_maximum=min(self.broker.config.max_awaiting_rel, 65535),
            )
        password = config.password.encode() if config.password is not None else None
        remoteState = config.remoteNotificationTopic
        return Connect(
            level,
            config.client_id,
            config.clean_start,
            config.keepalive,
            # The remote broker says 0 for us if the link fails (mosquitto's notifications).
            None if remoteState is None else Will(remoteState, b"0", 1, True),
            config.username,
            password,
            properties,
            bridge=self._private,
        )

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, port, timeout=self.config.connect_timeout
        )
        if self.config.tls:
            endpoint = wrapClientTLS(self._tlsOptions(host), endpoint)
        return endpoint

    def _tlsOptions(self, host: str) -> Any:
        config = self.config
        minimum = TLS_VERSIONS[config.tls_version_min]
        client = None
        if config.certificate is not None and config.private_key is not None:
            with open(config.certificate, "rb") as f, open(config.private_key, "rb") as k:
                client = PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())
        trust = platformTrust()
        if config.ca_certificates is not None:
            with open(config.ca_certificates, "rb") as f:
                trust = trustRootFromCertificates(
                    [Certificate.loadPEM(pem) for pem in _pemBlocks(f.read())]
                )
        if not config.verify_hostname:
            # The chain is still verified; only the name in the certificate is not checked.
            return CertificateOptions(
                privateKey=client.privateKey.original if client else None,
                certificate=client.original if client else None,
                trustRoot=trust,
                raiseMinimumTo=minimum,
            )
        return optionsForClientTLS(
            config.tls_server_name or host,
            trust,
            client,
            extraCertificateOptions={"raiseMinimumTo": minimum},
        )

    def _tcpConnected(self, link: MQTTClientProtocol) -> None:
        self._attempt = None
        self._link = link

    def _connectFailed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        self.stats.connectFailures += 1
        self.log.info(
            "bridge {name}: cannot connect to {host}:{port}: {why}",
            name=self.config.name,
            host=self.address[0],
            port=self.address[1],
            why=failure.getErrorMessage(),
        )
        self._scheduleReconnect()

    def _scheduleReconnect(self) -> None:
        """Try the next address after a backoff: exponential, with jitter."""
        if not self._running or self._retry is not None:
            return
        addresses = self.config.addresses
        self._index = (self._index + 1) % len(addresses)
        self._delay = nextDelay(
            self._delay, self.config.reconnect_delay_min, self.config.reconnect_delay_max, self._rng
        )
        self._retry = self.clock.callLater(self._delay, self._connect)

    # The link (LinkOwner)

    def linkAccepted(self, link: MQTTClientProtocol, connack: Connack) -> None:
        config = self.config
        self._delay = 0.0
        if self.stats.links:
            self.stats.reconnects += 1
        self.stats.links += 1
        self.connected = True
        self.log.info(
            "bridge {name} connected to {host}:{port} as {clientId} (protocol {protocol}{bridge})",
            name=config.name,
            host=self.address[0],
            port=self.address[1],
            clientId=config.client_id,
            protocol=config.protocol,
            bridge=", as a bridge" if link.connect.bridge else "",
        )
        incoming: dict[str, int] = {}
        for rule in config.topics:
            if rule.incoming:
                incoming[rule.remoteFilter] = max(incoming.get(rule.remoteFilter, 0), rule.qos)
        if incoming:
            # An MQTT 5 remote gets the bridge's wishes as options; a 3.1.1 one knows them
            # from the bridge bit.
            extra = _LOCAL_OPTIONS if link.level == 5 else 0
            link.send(Subscribe(_SUBSCRIBE_ID, [(f, q | extra) for f, q in incoming.items()]))
        session = self._attachLocal()
        if session is None:
            link.disconnect("no local session")
            return
        if link.level == 5:
            receiveMaximum = connack.properties.receive_maximum
            if receiveMaximum:
                session.maxInflight = min(config.max_inflight, receiveMaximum)
            session.maxPacketSize = connack.properties.maximum_packet_size or 0
        self._conn.reset()
        self._conn.paused = False
        self._notify(True)
        remoteState = config.remoteNotificationTopic
        if remoteState is not None:
            # QoS 0: the session owns the link's packet identifiers.
            link.send(Publish(remoteState, b"1", 0, True))
        session.resume(self._conn)
        self._subscribeLocal(session, 0)
        if not config.round_robin and self._index != 0:
            self._probeTimer = self.clock.callLater(config.primary_retry_interval, self._probe)

    def linkRefused(self, link: MQTTClientProtocol, connack: Connack) -> None:
        code = connack.return_code
        if link.connect.bridge and code == ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION:
            # A broker that does not know the bridge bit: connect as an ordinary client.
            self.log.info(
                "bridge {name}: {host}:{port} refused the bridge protocol level; retrying"
                " without it (try_private)",
                name=self.config.name,
                host=self.address[0],
                port=self.address[1],
            )
            self._private = False
            self._index = (self._index - 1) % len(self.config.addresses)
            self._delay = 0.0

    def packetsReceived(self, link: MQTTClientProtocol, packets: Sequence[Packet]) -> None:
        if self._held is not None:
            self._held.extend(packets)
            return
        self._dispatch(link, iter(packets))

    def _dispatch(self, link: MQTTClientProtocol, packets: Any) -> None:
        session = self.session
        for packet in packets:
            if self._link is not link or session is None or session.connection is not self._conn:
                return
            try:
                result = self._handle(session, packet)
            except SessionError as e:
                link.abort(f"protocol error from the remote broker: {e}")
                return
            if result is not None:
                # The broker answers once the store has the message: hold the rest, in order.
                self._held = deque(packets)
                link.transport.pauseProducing()  # type: ignore[union-attr]
                result.addCallbacks(self._handled, self._handleFailed, callbackArgs=(link,))
                return

    def _handled(self, ignored: object, link: MQTTClientProtocol) -> None:
        held, self._held = self._held, None
        if self._link is not link or held is None:
            return
        link.transport.resumeProducing()  # type: ignore[union-attr]
        self._dispatch(link, iter(held))

    def _handleFailed(self, failure: Failure) -> None:
        self._held = None
        self.log.failure("bridge {name}: handling a remote packet", failure, name=self.config.name)
        if self._link is not None:
            self._link.abort("internal error")

    def _handle(self, session: Session, packet: Packet) -> Deferred[Any] | None:
        broker = self.broker
        if isinstance(packet, Publish):
            mapped = localTopic(self.config.topics, packet.topic)
            if mapped is None:
                # Not a topic this bridge brings in (an overlapping subscription of a
                # persistent remote session): acknowledged, not published.
                if packet.qos:
                    assert packet.packet_id is not None
                    ack = Puback(packet.packet_id) if packet.qos == 1 else Pubrec(packet.packet_id)
                    self.sendRemote(ack)
                return None
            self.stats.messagesReceived += 1
            return broker.publishReceived(session, replace(packet, topic=mapped[0]))
        if isinstance(packet, Puback):
            session.pubackReceived(packet.packet_id)
        elif isinstance(packet, Pubrec):
            return broker.pubrecReceived(session, packet.packet_id, packet.reason_code)
        elif isinstance(packet, Pubrel):
            return broker.pubrelReceived(session, packet.packet_id)
        elif isinstance(packet, Pubcomp):
            session.pubcompReceived(packet.packet_id)
        elif isinstance(packet, Disconnect):
            # A 5.0 server says why before it closes [MQTT-3.14.0-1].
            self._remoteDisconnected(packet.reason_code)
        elif isinstance(packet, Suback):
            for code in packet.return_codes:
                if code >= 0x80:
                    self.log.warn(
                        "bridge {name}: {host}:{port} refused a subscription (0x{code:02x})",
                        name=self.config.name,
                        host=self.address[0],
                        port=self.address[1],
                        code=code,
                    )
        return None

    def _remoteDisconnected(self, code: int) -> None:
        if self._link is not None:
            self._link.closeReason = f"the remote broker sent DISCONNECT 0x{code:02x}"

    def linkPaused(self, link: MQTTClientProtocol, paused: bool) -> None:
        if link is not self._link:
            return
        self._conn.paused = paused
        if not paused and self.session is not None and self.session.connection is self._conn:
            self.session.pump()

    def linkLost(self, link: MQTTClientProtocol, reason: str) -> None:
        if link is not self._link:
            return
        self._link = None
        self._held = None
        if self._probeTimer is not None and self._probeTimer.active():
            self._probeTimer.cancel()
        self._probeTimer = None
        session = self.session
        if session is not None and session.connection is self._conn:
            self.broker.connectionLost(session, self._conn, graceful=True)
        if link.accepted:
            self.connected = False
            self._notify(False)
            self.log.info(
                "bridge {name}: link to {host}:{port} lost: {reason}",
                name=self.config.name,
                host=self.address[0],
                port=self.address[1],
                reason=reason,
            )
        else:
            self.stats.connectFailures += 1
            self.log.info(
                "bridge {name}: {host}:{port} did not accept the bridge: {reason}",
                name=self.config.name,
                host=self.address[0],
                port=self.address[1],
                reason=reason,
            )
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
            return
        if self._returnToPrimary:
            self._returnToPrimary = False
            self._index = -1
            self._delay = 0.0
            self._retry = self.clock.callLater(0, self._connectNext)
            return
        self._scheduleReconnect()

    def _connectNext(self) -> None:
        self._retry = None
        self._index = (self._index + 1) % len(self.config.addresses)
        self._connect()

    # Back to the primary

    def _probe(self) -> None:
        """While on a secondary address, see whether the primary is back."""
        self._probeTimer = None
        if not self._running or self._link is None:
            return
        host, port = self.config.addresses[0]
        probe = self._endpoint(host, port).connect(Factory.forProtocol(_Probe))
        probe.addCallbacks(self._primaryBack, self._primaryStillDown)

    def _primaryBack(self, probe: Protocol) -> None:
        link = self._link
        if link is None or not self._running:
            return
        self.log.info(
            "bridge {name}: the primary {host}:{port} is back; moving the link to it",
            name=self.config.name,
            host=self.config.addresses[0][0],
            port=self.config.addresses[0][1],
        )
        self._returnToPrimary = True
        link.disconnect("returning to the primary address")

    def _primaryStillDown(self, failure: Failure) -> None:
        if self._running and self._link is not None:
            self._probeTimer = self.clock.callLater(self.config.primary_retry_interval, self._probe)

    # Out: the local session to the remote broker

    def forward(self, packet: Packet) -> None:
        """A packet the local session wrote: map it and send it to the remote broker."""
        link = self._link
        if isinstance(packet, Publish):
            mapped = remoteTopic(self.config.topics, packet.topic)
            session = self.session
            if mapped is None:
                # No rule takes it any more (the rules changed): settle it unsent.
                if session is not None and packet.packet_id is not None:
                    if packet.qos == 1:
                        session.pubackReceived(packet.packet_id)
                    else:
                        session.pubrecRefused(packet.packet_id)
                return
            self.stats.messagesSent += 1
            packet = replace(packet, topic=mapped[0])
        if link is not None:
            link.send(packet)

    def forwardUnchanged(self, chunks: Sequence[bytes]) -> None:
        """A packet the local session wrote, for a remote broker that sees the same topics."""
        if chunks[0][0] >> 4 == 3:
            self.stats.messagesSent += 1
        if self._link is not None:
            self._link.writeSequence(chunks)

    def sendRemote(self, packet: Packet) -> None:
        """An acknowledgement the broker sends for a message that came over the link."""
        if self._link is not None:
            self._link.send(packet)

    # State

    def _notify(self, up: bool) -> None:
        if self.config.notifications:
            # Retained, as mosquitto's notifications: a client subscribing later learns the state.
            self.broker.route(Message(self.config.notificationTopic, b"1" if up else b"0", 1, True))

    def counters(self) -> dict[str, int]:
        """The bridge's counters by name, for $SYS and metrics."""
        session = self.session
        stats = self.stats
        queued = 0
        dropped = 0
        if session is not None:
            queued = len(session.pending or ()) + len(session.inflight)
            dropped = session.dropped
        return {
            "messages/sent": stats.messagesSent,
            "messages/received": stats.messagesReceived,
            "queue/messages": queued,
            "queue/dropped": dropped,
            "reconnects": stats.reconnects,
            "connect_failures": stats.connectFailures,
        }


def nextDelay(previous: float, low: float, high: float, rng: random.Random) -> float:
    """
    The wait before the next connection attempt: exponential backoff with "decorrelated
    jitter", drawn between C{low} and three times the C{previous} wait (0 for the first),
    capped at C{high}, so bridges that lost the same broker do not all return in step.
    """
    return min(high, rng.uniform(low, max(low, previous * 3)))


def _pemBlocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN" in block]


class BridgeService(Service):
    """Runs one L{Bridge} while the broker runs: started after the store is restored."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.setName(f"bridge:{bridge.config.name}")

    def startService(self) -> None:
        super().startService()
        self.bridge.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.bridge.stop()
