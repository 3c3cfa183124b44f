"""
The API's overview of the broker: C{status}, C{stats} (the counters of L{mqttd.stats}, which
C{$SYS} and C{/metrics} read too), C{stats/history} (the dashboard's chart) and C{sys}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

import mqttd
from mqttd.http.auth import Caller
from mqttd.http.management import HISTORY_INTERVAL, Management
from mqttd.http.request import GET, Routes
from mqttd.stats import DROP_CAUSES
from mqttd.sys import BrokerState, residentBytes


class OverviewApi:
    """The broker's figures; all read-only."""

    def __init__(self, management: Management) -> None:
        self.management = management
        self.broker = management.broker

    def routes(self) -> Routes:
        return [
            (GET, "status", self.status),
            (GET, "stats", self.stats),
            (GET, "stats/history", self.statsHistory),
            (GET, "sys", self.sys),
        ]

    def status(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        broker = self.broker
        state = BrokerState.of(broker)
        return {
            "version": mqttd.__version__,
            "uptime": round(broker.clock.seconds() - broker.startedAt, 3),
            "connections": state.connected,
            "sessions": state.sessions,
            "offline_sessions": state.sessions - state.connected,
            "subscriptions": state.subscriptions + state.sharedSubscriptions,
            "retained": state.retained,
            "queued": state.queued,
            "inflight": state.inflight,
            "memory_rss": residentBytes(),
        }

    def stats(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        # The counters of mqttd.stats, which $SYS and /metrics read too.
        stats = self.broker.stats
        return {
            **self.status(request, caller, params),
            "messages_received": stats.messagesReceived,
            "messages_sent": stats.publishMessagesSent,
            "messages_routed": stats.messagesRouted,
            "messages_dropped": stats.messagesDropped,
            "dropped": dict(zip(DROP_CAUSES, stats.dropped, strict=True)),
            "bytes_received": stats.bytesReceived,
            "bytes_sent": stats.bytesSent,
            "connects": stats.connects,
            "auth_failures": stats.authFailures,
        }

    def statsHistory(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return {
            "interval": HISTORY_INTERVAL,
            "samples": [
                {
                    "time": s.time,
                    "connections": s.connections,
                    "messages_received": s.received,
                    "messages_sent": s.sent,
                    "messages_dropped": s.dropped,
                }
                for s in self.management.history
            ],
        }

    def sys(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        # What mqttd.sys last published (every sys_interval), as a subscriber to $SYS/# would
        # get it, plus what plugins publish there (the webhook's counts).
        return {
            m.topic: m.payload.decode("utf-8", "replace")
            for m in sorted(self.broker.retained.matching("$SYS/#"), key=lambda m: m.topic)
        }
