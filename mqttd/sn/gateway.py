"""
The MQTT-SN gateway: a Twisted L{DatagramProtocol} on the listener's UDP port that moves
datagrams between the network and one L{SNClient} per client address.

It answers what needs no client (SEARCHGW, QoS -1 publishes), bounds what a flood of spoofed
CONNECTs can cost (a per-address rate and a cap on clients between CONNECT and CONNACK), and
counts every datagram it drops, by reason, in L{MQTTSNGateway.dropped} (published in C{$SYS} with
the listener's clients every C{sys_interval}): a bad datagram never
reaches a client's state, and an exception in handling one is logged, never raised into the
reactor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..broker import Broker
from ..codec import Decoder
from ..codec import packets as mqtt
from ..config import ListenerConfig
from ..interfaces import Action, Allow, ClientInfo
from ..message import Message
from ..ratelimit import ConnectionRateLimiter
from ..topics import InvalidTopic, validate_topic_name
from . import packets as sn
from .client import SNClient
from .codec import SNDecodeError, decode, encode
from .packets import PROTOCOL_ID, ReturnCode, TopicIdType
from .states import State
from .topicids import PredefinedTopics, topicName

# Host, port and, for a client behind a forwarder (section 5.5), its Wireless Node Id.
Address = tuple[str, int, bytes]


class MQTTSNGateway(DatagramProtocol):
    """
    One C{protocol = mqtt-sn} listener.

    @ivar clients: the client of each address, from its CONNECT until it disconnects or is lost.
    @ivar dropped: datagrams dropped (and other events worth counting), by reason.
    @ivar wills: the will of each client id whose session is persistent, for a later CONNECT
        that continues the session without the Will flag (section 6.3).
    """

    log = Logger()
    noisy = False

    def __init__(self, broker: Broker, listener: ListenerConfig, clock: IReactorTime) -> None:
        self.broker = broker
        self.listener = listener
        self.clock = clock
        self.predefined = PredefinedTopics(listener.predefined_topics)
        self.clients: dict[Address, SNClient] = {}
        self.dropped: Counter[str] = Counter()
        self.wills: dict[str, mqtt.Will] = {}
        self._halfOpen: set[SNClient] = set()
        self._rateLimiter: ConnectionRateLimiter | None = None
        if listener.connect_rate_per_address > 0:
            self._rateLimiter = ConnectionRateLimiter(
                clock,
                listener.connect_rate_per_address,
                listener.connect_burst_per_address
                or max(1, int(listener.connect_rate_per_address)),
            )
        # The session writes MQTT; each write is whole packets, so one decoder serves every
        # client, holding nothing between writes.
        self._readBack = Decoder(server=False, max_packet_size=2**28)
        self._advertiser: LoopingCall | None = None
        self._sys: LoopingCall | None = None

    # Life cycle

    def startProtocol(self) -> None:
        self.broker.gateways[self.listener.name] = self
        if self.listener.advertise is not None:
            host, _, port = self.listener.advertise.rpartition(":")
            self.transport.setBroadcastAllowed(True)  # type: ignore[union-attr]
            self._advertiser = LoopingCall(self._advertise, (host.strip("[]"), int(port), b""))
            self._advertiser.clock = self.clock
            self._advertiser.start(self.listener.advertise_interval, now=True)
        if self.broker.config.sys_interval:
            self._sys = LoopingCall(self._publishCounters)
            self._sys.clock = self.clock
            self._sys.start(self.broker.config.sys_interval, now=False)

    def counters(self) -> dict[str, int]:
        """The listener's clients by state and its drops by reason, for $SYS and metrics."""
        clients = [c for c in self.clients.values() if not c.connecting]
        return {
            "clients/connected": len(clients),
            "clients/asleep": sum(1 for c in clients if c.state == State.ASLEEP),
            "clients/half-open": len(self._halfOpen),
            **{f"dropped/{reason}": count for reason, count in self.dropped.items()},
        }

    def _publishCounters(self) -> None:
        # Retained, as the rest of $SYS: a client subscribing later sees the latest values.
        prefix = f"$SYS/broker/mqtt-sn/{self.listener.name}/"
        for key, value in self.counters().items():
            self.broker.route(Message(prefix + key, str(value).encode(), 0, True))

    def stopProtocol(self) -> None:
        if self.broker.gateways.get(self.listener.name) is self:
            del self.broker.gateways[self.listener.name]
        for loop in (self._advertiser, self._sys):
            if loop is not None and loop.running:
                loop.stop()
        # Nobody can reach the clients any more: as lost networks, so their wills are published.
        for client in list(self.clients.values()):
            client.lost("the listener stopped")
        for client in list(self._halfOpen):
            client.lost("the listener stopped")

    def _advertise(self, address: Address) -> None:
        self.send(
            encode(sn.Advertise(self.listener.gateway_id, self.listener.advertise_interval)),
            address,
        )

    # Datagrams in

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self._received(datagram, (addr[0], addr[1], b""))
        except Exception:
            self.count("internal error")
            self.log.failure("handling a datagram from {address}", address=addr)

    def _received(self, datagram: bytes, address: Address) -> None:
        if len(datagram) > self.broker.config.max_packet_size:
            self.count("too large")
            return
        try:
            packet = decode(datagram)
        except SNDecodeError as e:
            self.count(e.reason)
            self.log.debug("bad datagram from {address}: {why}", address=address, why=str(e))
            return
        if isinstance(packet, sn.Encapsulated):
            self._forwarded(packet, address)
            return
        self._handle(packet, address)

    def _forwarded(self, packet: sn.Encapsulated, address: Address) -> None:
        # A forwarder relays its radio nodes' messages, each node a client of its own; what the
        # gateway answers goes back to the forwarder, encapsulated for that node.
        if address[2]:
            self.count("forwarder encapsulation nested")
            return
        try:
            inner = decode(packet.message)
        except SNDecodeError as e:
            self.count(e.reason)
            return
        if isinstance(inner, sn.Encapsulated):
            self.count("forwarder encapsulation nested")
            return
        self._handle(inner, (address[0], address[1], packet.node_id))

    def _handle(self, packet: Any, address: Address) -> None:
        client = self.clients.get(address)
        match packet:
            case sn.Connect():
                self._connectReceived(packet, address, client)
            case sn.SearchGw():
                # Answered to the searcher alone; GWINFO is no larger than SEARCHGW, so spoofed
                # searches amplify nothing.
                self.send(encode(sn.GwInfo(self.listener.gateway_id)), address)
            case sn.Publish() if packet.qos == -1:
                self._qosMinusOne(packet, address)
            case sn.Advertise() | sn.GwInfo():
                self.count("other gateway")
            case _ if client is None:
                self.count("not connected")
                if isinstance(packet, sn.Pingreq):
                    # A client whose gateway restarted learns it must connect again.
                    self.send(encode(sn.Disconnect()), address)
            case _:
                client.received(packet)

    def _connectReceived(
        self, packet: sn.Connect, address: Address, existing: SNClient | None
    ) -> None:
        limiter = self._rateLimiter
        if limiter is not None and not limiter.allow(address[0]):
            self.count("connect rate")
            self.send(encode(sn.Connack(ReturnCode.CONGESTION)), address)
            return
        if existing is not None and existing.connecting:
            # The client sent CONNECT again: it lost our answer, or started over.
            existing.lost("CONNECT sent again")
            existing = None
        if len(self._halfOpen) >= self.listener.max_half_open:
            self.count("half-open cap")
            self.send(encode(sn.Connack(ReturnCode.CONGESTION)), address)
            return
        limit = self.listener.max_connections
        if limit and existing is None and len(self.clients) >= limit:
            # Every client, half-open or accepted, holds state until it leaves or times out.
            self.count("max_connections")
            self.send(encode(sn.Connack(ReturnCode.CONGESTION)), address)
            return
        if packet.protocol_id != PROTOCOL_ID or not packet.client_id:
            self.count("bad connect")
            self.send(encode(sn.Connack(ReturnCode.NOT_SUPPORTED)), address)
            return
        if existing is not None and existing.clientId != packet.client_id:
            # Another client now at this address: the old one is gone.
            existing.lost(f"{packet.client_id!r} connected from its address")
        client = SNClient(self, address, packet)
        client.previous = existing
        self.clients[address] = client
        self._halfOpen.add(client)
        client.begin(self.wills.get(packet.client_id))

    def _qosMinusOne(self, packet: sn.Publish, address: Address) -> None:
        # Section 6.8: no connection, so only ids every client knows; authenticated and
        # authorized as an anonymous client with an empty client id from this address.
        if packet.topic_id_type not in (TopicIdType.PREDEFINED, TopicIdType.SHORT):
            self.count("qos -1 to a normal topic id")
            return
        topic = topicName(packet.topic_id_type, packet.topic_id, None, self.predefined)
        if topic is None:
            self.count("unknown topic id")
            return
        try:
            validate_topic_name(topic, self.broker.config.max_topic_levels)
        except InvalidTopic:
            self.count("invalid topic")
            return
        if topic.startswith("$"):
            self.count("qos -1 to a $ topic")
            return
        connect = mqtt.Connect(protocol_level=mqtt.ProtocolLevel.MQTT_3_1_1, client_id="")
        decision = self.broker.authenticate(connect, self.listener, address[0])
        _then(decision, self._qosMinusOneAuthenticated, packet, topic, address)

    def _qosMinusOneAuthenticated(
        self, decision: object, packet: sn.Publish, topic: str, address: Address
    ) -> None:
        if not isinstance(decision, Allow):
            self.count("qos -1 not authenticated")
            return
        client = ClientInfo("", decision.identity, address[0], self.listener.name)
        allowed = self.broker.authorize(client, Action.PUBLISH, topic)
        _then(allowed, self._qosMinusOneAuthorized, packet, topic, client)

    def _qosMinusOneAuthorized(
        self, allowed: object, packet: sn.Publish, topic: str, client: ClientInfo
    ) -> None:
        if not allowed:
            self.count("qos -1 denied")
            return
        self.broker.stats.messagesReceived += 1
        self.broker.route(Message(topic, packet.payload, 0, packet.retain), client)

    # Called by the clients

    def count(self, reason: str) -> None:
        self.dropped[reason] += 1

    def send(self, data: bytes, address: Address) -> None:
        transport = self.transport
        if transport is None:
            return
        host, port, node = address
        if node:
            data = encode(sn.Encapsulated(0, node, data))
        try:
            transport.write(data, (host, port))
        except OSError as e:
            # UDP reports some failures (an ICMP error from an earlier datagram) on a later send.
            self.count("send failed")
            self.log.debug("sending to {address} failed: {e}", address=address, e=e)

    def readBack(self, data: bytes) -> list[Any]:
        """The MQTT packets a session wrote, to be said again in MQTT-SN."""
        return self._readBack.feed(data)

    def accepted(self, client: SNClient, will: mqtt.Will | None) -> None:
        """C{client} got its CONNACK; C{will} is kept for a persistent session (else L{None})."""
        self._halfOpen.discard(client)
        self.willChanged(client.clientId, will, will is None)

    def willChanged(self, clientId: str, will: mqtt.Will | None, cleanSession: bool) -> None:
        if will is None or cleanSession:
            self.wills.pop(clientId, None)
        else:
            self.wills[clientId] = will

    def forget(self, client: SNClient) -> None:
        self._halfOpen.discard(client)
        if self.clients.get(client.address) is client:
            previous = client.previous
            if previous is not None and previous.state != State.CLOSED:
                self.clients[client.address] = previous
            else:
                del self.clients[client.address]


def _then(result: object, f: Any, *args: Any) -> None:
    if isinstance(result, Deferred):
        result.addCallback(f, *args)
        result.addErrback(_failed)
    else:
        f(result, *args)


def _failed(failure: Failure) -> None:
    MQTTSNGateway.log.failure("deciding on a QoS -1 publish", failure)
