"""
C{/metrics}: the broker's numbers in Prometheus' text exposition format,
through C{prometheus_client}'s own Twisted resource (which also answers
OpenMetrics and gzip to scrapers that ask).

That resource collects on a thread of the reactor's pool, while the broker's
state may only be read in the reactor thread: L{BrokerCollector} takes one
snapshot of the counters (L{mqttd.stats.Stats}, the same that C{$SYS}
publishes) and of the broker's state there, then builds the metric families
from it on the pool's thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.twisted import MetricsResource
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread
from twisted.web.resource import IResource

from .. import __version__
from ..stats import ACL_ACTIONS, DROP_CAUSES
from ..sys import BrokerState

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ..broker import Broker

# How often the reactor lag probe asks to be called back, in seconds.
LAG_PROBE_INTERVAL = 1.0


class ReactorLag:
    """
    How late the reactor runs a timer: every L{LAG_PROBE_INTERVAL} a call is
    scheduled, and how much later than asked it ran is the time every other
    event (a packet, a timer) waited behind the work in front of it.

    @ivar last: the lag of the latest probe, seconds.
    @ivar highest: the largest lag since the last scrape, seconds.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.last = 0.0
        self.highest = 0.0
        self._expected = 0.0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        # Each probe schedules the next from when it ran (a LoopingCall keeps to its grid,
        # which after a late call would hide part of the next one's lateness).
        self._expected = self.reactor.seconds() + LAG_PROBE_INTERVAL
        self._timer = self.reactor.callLater(LAG_PROBE_INTERVAL, self._probe)

    def _probe(self) -> None:
        self.last = max(0.0, self.reactor.seconds() - self._expected)
        self.highest = max(self.highest, self.last)
        self._schedule()

    def takeHighest(self) -> float:
        """The largest lag since the last call, which starts a new period."""
        highest, self.highest = self.highest, self.last
        return highest


class BrokerCollector(Collector):
    """The broker's metrics, for a C{prometheus_client} registry."""

    def __init__(self, broker: Broker, lag: ReactorLag, reactor: Any) -> None:
        self.broker = broker
        self.lag = lag
        self.reactor = reactor

    def collect(self) -> Iterator[Metric]:
        if isInIOThread():
            snapshot = self.snapshot()
        else:
            snapshot = blockingCallFromThread(self.reactor, self.snapshot)
        families = self.families(snapshot)
        node = self.broker.nodeName
        if node is not None:
            # A cluster node's figures are its own: each sample says whose.
            for family in families:
                family.samples = [
                    sample._replace(labels={**sample.labels, "node": node})
                    for sample in family.samples
                ]
        return iter(families)

    def snapshot(self) -> dict[str, Any]:
        """Everything the metrics report, copied in the reactor thread."""
        broker = self.broker
        stats = broker.stats
        connections: Counter[tuple[str, int]] = Counter()
        for clientId, session in broker.sessions.items():
            conn = session.connection
            if conn is not None:
                client = broker.clients.get(clientId)
                listener = client.listener if client is not None else ""
                connections[(listener, int(conn.protocolLevel))] += 1
        flush = stats.storeFlush
        return {
            "state": BrokerState.of(broker),
            "connections": connections,
            "publishReceived": list(stats.publishReceived),
            "publishPayloadReceived": list(stats.publishPayloadReceived),
            "otherReceived": stats.otherReceived,
            "publishSent": [stats.publishSentAt(qos) for qos in (0, 1, 2)],
            "publishBytesSent": [stats.publishBytesSentAt(qos) for qos in (0, 1, 2)],
            "packetsReceived": stats.packetsReceived,
            "packetsSent": stats.messagesSent,
            "bytesReceived": stats.bytesReceived,
            "bytesSent": stats.bytesSent,
            "routed": stats.messagesRouted,
            "selected": stats.selectedDeliveries,
            "dropped": stats.messagesDropped,
            "droppedBy": list(stats.dropped),
            "sockets": stats.sockets,
            "connects": stats.connects,
            "authFailures": stats.authFailures,
            "aclDenied": list(stats.aclDenied),
            "tlsHandshakeFailures": stats.tlsHandshakeFailures,
            "expired": stats.clientsExpired,
            "flush": (flush.cumulative(), flush.total),
            "lag": self.lag.last,
            "lagHighest": self.lag.takeHighest(),
            "uptime": broker.clock.seconds() - broker.startedAt,
            "bridges": {
                name: (bridge.connected, bridge.counters())
                for name, bridge in sorted(broker.bridges.items())
            },
            "gateways": {
                name: gateway.counters() for name, gateway in sorted(broker.gateways.items())
            },
        }

    def families(self, s: dict[str, Any]) -> list[Metric]:
        """The metric families of a L{snapshot}."""
        state: BrokerState = s["state"]
        families: list[Metric] = []

        def counter(name: str, doc: str, value: float) -> None:
            families.append(CounterMetricFamily(name, doc, value=value))

        def gauge(name: str, doc: str, value: float) -> None:
            families.append(GaugeMetricFamily(name, doc, value=value))

        def byQos(family: CounterMetricFamily, values: list[int]) -> None:
            for qos, value in enumerate(values):
                family.add_metric([str(qos)], value)
            families.append(family)

        info = GaugeMetricFamily("mqttd_info", "The broker's version.", labels=["version"])
        info.add_metric([__version__], 1)
        families.append(info)

        connected = GaugeMetricFamily(
            "mqttd_connections",
            "Connected MQTT clients, by listener and protocol level (3 = 3.1, 4 = 3.1.1, 5 = 5.0).",
            labels=["listener", "protocol_level"],
        )
        for (listener, level), n in sorted(s["connections"].items()):
            connected.add_metric([listener, str(level)], n)
        families.append(connected)
        sessions = GaugeMetricFamily(
            "mqttd_sessions", "Sessions, by whether their client is connected.", labels=["state"]
        )
        sessions.add_metric(["online"], state.connected)
        sessions.add_metric(["offline"], state.sessions - state.connected)
        families.append(sessions)
        counter("mqttd_sockets_accepted", "Connections accepted by MQTT listeners.", s["sockets"])
        counter("mqttd_connects_accepted", "CONNECTs accepted.", s["connects"])
        counter("mqttd_sessions_expired", "Persistent sessions ended by expiry.", s["expired"])

        byQos(
            CounterMetricFamily(
                "mqttd_messages_received", "PUBLISH packets received, by QoS.", labels=["qos"]
            ),
            s["publishReceived"],
        )
        counter(
            "mqttd_messages_received_other",
            "Messages received other than as MQTT PUBLISH: from MQTT-SN clients, the HTTP API.",
            s["otherReceived"],
        )
        byQos(
            CounterMetricFamily(
                "mqttd_messages_received_payload_bytes",
                "Payload bytes of the PUBLISH packets received, by QoS.",
                labels=["qos"],
            ),
            s["publishPayloadReceived"],
        )
        byQos(
            CounterMetricFamily(
                "mqttd_messages_sent",
                "PUBLISH packets sent (deliveries to subscribers), by QoS.",
                labels=["qos"],
            ),
            s["publishSent"],
        )
        byQos(
            CounterMetricFamily(
                "mqttd_messages_sent_bytes",
                "Bytes of the PUBLISH packets sent, by QoS.",
                labels=["qos"],
            ),
            s["publishBytesSent"],
        )
        counter(
            "mqttd_packets_received", "MQTT packets received, of every type.", s["packetsReceived"]
        )
        counter("mqttd_packets_sent", "MQTT packets sent, of every type.", s["packetsSent"])
        counter("mqttd_received_bytes", "Bytes received on MQTT connections.", s["bytesReceived"])
        counter("mqttd_sent_bytes", "Bytes sent on MQTT connections.", s["bytesSent"])
        counter("mqttd_messages_routed", "Messages routed to subscribers.", s["routed"])
        counter(
            "mqttd_selector_deliveries",
            "Recipients the subscriber selectors (virtual groups, direct messages) named.",
            s["selected"],
        )
        dropped = CounterMetricFamily(
            "mqttd_messages_dropped", "Messages dropped, by cause.", labels=["cause"]
        )
        for cause, n in zip(DROP_CAUSES, s["droppedBy"], strict=True):
            dropped.add_metric([cause], n)
        # Plugins drop for reasons of their own, which only the total counts.
        dropped.add_metric(["other"], s["dropped"] - sum(s["droppedBy"]))
        families.append(dropped)

        gauge("mqttd_retained_messages", "Retained messages.", state.retained)
        subscriptions = GaugeMetricFamily(
            "mqttd_subscriptions", "Subscriptions, by kind.", labels=["kind"]
        )
        subscriptions.add_metric(["plain"], state.subscriptions)
        subscriptions.add_metric(["shared"], state.sharedSubscriptions)
        families.append(subscriptions)
        gauge("mqttd_queued_messages", "Messages queued for sessions.", state.queued)
        gauge("mqttd_queued_bytes", "Payload bytes of the messages queued.", state.queuedBytes)
        gauge(
            "mqttd_inflight_messages",
            "QoS 1 and 2 deliveries not yet acknowledged.",
            state.inflight,
        )

        counter("mqttd_auth_failures", "CONNECTs the authenticators refused.", s["authFailures"])
        denied = CounterMetricFamily(
            "mqttd_acl_denials", "Requests the ACL refused, by action.", labels=["action"]
        )
        for action, n in zip(ACL_ACTIONS, s["aclDenied"], strict=True):
            denied.add_metric([action], n)
        families.append(denied)
        counter(
            "mqttd_tls_handshake_failures",
            "Connections to mqttd-managed TLS listeners whose handshake failed.",
            s["tlsHandshakeFailures"],
        )

        buckets, total = s["flush"]
        flush = HistogramMetricFamily(
            "mqttd_store_flush_seconds",
            "Time from a flush request to the store's commit, for acknowledgements that waited.",
        )
        flush.add_metric(
            [],
            buckets=[("+Inf" if bound == float("inf") else str(bound), n) for bound, n in buckets],
            sum_value=total,
        )
        families.append(flush)

        gauge(
            "mqttd_reactor_lag_seconds",
            "How late the reactor ran its latest timer: what every event waited behind others.",
            s["lag"],
        )
        gauge(
            "mqttd_reactor_lag_max_seconds",
            "The largest reactor lag since the previous scrape.",
            s["lagHighest"],
        )
        gauge("mqttd_uptime_seconds", "Seconds since the broker started.", s["uptime"])
        families.extend(_bridgeFamilies(s["bridges"]))
        families.extend(_gatewayFamilies(s["gateways"]))
        return families


# Each bridge counter (mqttd.bridge.bridge.Bridge.counters) as a metric: name, help, counter?
_BRIDGE_METRICS = (
    ("messages/sent", "mqttd_bridge_messages_sent", "Messages sent to the remote broker.", True),
    (
        "messages/received",
        "mqttd_bridge_messages_received",
        "Messages received from the remote broker.",
        True,
    ),
    (
        "queue/messages",
        "mqttd_bridge_queued_messages",
        "Messages waiting for the remote broker or not yet acknowledged by it.",
        False,
    ),
    (
        "queue/dropped",
        "mqttd_bridge_dropped_messages",
        "Messages for the remote broker dropped because the queue was full.",
        True,
    ),
    ("reconnects", "mqttd_bridge_reconnects", "Links accepted after the first.", True),
    (
        "connect_failures",
        "mqttd_bridge_connect_failures",
        "Connection attempts that did not end in an accepted link.",
        True,
    ),
)


def _bridgeFamilies(bridges: dict[str, tuple[bool, dict[str, int]]]) -> list[Metric]:
    up = GaugeMetricFamily(
        "mqttd_bridge_up", "Whether the bridge's link is up (1) or down (0).", labels=["bridge"]
    )
    for name, (connected, _) in bridges.items():
        up.add_metric([name], int(connected))
    families: list[Metric] = [up]
    for key, metric, doc, isCounter in _BRIDGE_METRICS:
        family: Metric = (
            CounterMetricFamily(metric, doc, labels=["bridge"])
            if isCounter
            else GaugeMetricFamily(metric, doc, labels=["bridge"])
        )
        for name, (_, counters) in bridges.items():
            family.add_metric([name], counters[key])  # type: ignore[attr-defined]
        families.append(family)
    return families


def _gatewayFamilies(gateways: dict[str, dict[str, int]]) -> list[Metric]:
    # An MQTT-SN listener's counters (mqttd.sn.gateway.MQTTSNGateway.counters).
    clients = GaugeMetricFamily(
        "mqttd_sn_clients",
        "MQTT-SN clients of the listener: connected (asleep included), asleep, half-open.",
        labels=["listener", "state"],
    )
    dropped = CounterMetricFamily(
        "mqttd_sn_dropped",
        "MQTT-SN datagrams dropped (and other events counted) by the listener, by reason.",
        labels=["listener", "reason"],
    )
    for name, counters in gateways.items():
        for key, value in counters.items():
            kind, _, what = key.partition("/")
            if kind == "clients":
                clients.add_metric([name, what], value)
            else:
                dropped.add_metric([name, what], value)
    return [clients, dropped]


def metricsResource(broker: Broker, lag: ReactorLag, reactor: IReactorTime) -> IResource:
    """
    C{prometheus_client}'s Twisted resource over a registry of the broker's
    metrics and this process's (CPU, memory, file descriptors).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, lag, reactor))
    ProcessCollector(registry=registry)
    resource: IResource = MetricsResource(registry)
    return resource
