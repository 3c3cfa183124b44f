"""
A bridge: a local session on the broker plus an MQTT client connection to another broker.

The local side is an ordinary persistent session whose connection is a L{BridgeConnection}:
the broker routes to it, queues for it (in its store) while the remote broker is away and
re-sends what was in flight when the link returns, exactly as it does for any client.  What the
session writes is decoded, its topic mapped by the C{topic} rules, and sent to the remote
broker; what the remote broker sends is mapped back and published through the same session.

This module is the bridge's life: starting and stopping, the local session, connecting with
backoff, failing over and returning to the primary address, and the link's events.  The local
session's connection is L{mqttd.bridge.local}'s, reaching the remote broker (endpoints, TLS,
CONNECT) L{mqttd.bridge.remote}'s, and moving packets across the link L{mqttd.bridge.forwarding}'s
(mixed in).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.broker import Broker
from mqttd.codec.packets import (
    Connack,
    ConnackCode,
    Connect,
    Packet,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from mqttd.codec.properties import NO_PROPERTIES, Properties
from mqttd.config import ListenerConfig
from mqttd.interfaces import Allow, IClientConnection, ILinkOwner
from mqttd.message import Message
from mqttd.router import NO_LOCAL, RETAIN_AS_PUBLISHED, RETAIN_HANDLING_NEVER
from mqttd.session import Session

from .client import MQTTClientProtocol
from .config import BridgeConfig
from .forwarding import Forwarding
from .local import BridgeConnection
from .remote import LinkFactory, Probe, connectPacket, nextDelay, remoteEndpoint

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


@implementer(ILinkOwner)
class Bridge(Forwarding):
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
        connect = connectPacket(self.config, self.broker.config, self._private)
        self._attempt = remoteEndpoint(self.reactor, self.config, host, port).connect(
            LinkFactory(self, connect)
        )
        self._attempt.addCallbacks(self._tcpConnected, self._connectFailed)

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
        endpoint = remoteEndpoint(self.reactor, self.config, host, port)
        probe = endpoint.connect(Factory.forProtocol(Probe))
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
