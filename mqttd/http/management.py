"""
What the HTTP API works on: the broker, the plugins that can be managed (the virtual groups'
store, user stores, rule listings), the administrators, and the samples of the overview's chart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mqttd.broker import Broker
from mqttd.interfaces import IGroupStore, IRuleListing, IUserStore

# The overview chart: one sample every HISTORY_INTERVAL seconds, the last HISTORY_SAMPLES kept.
HISTORY_INTERVAL = 10.0
HISTORY_SAMPLES = 90


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    connections: int
    received: int
    sent: int
    dropped: int


class Management:
    """
    What the API works on: the broker and the plugins that can be managed, with the numbers the
    overview shows.

    @ivar groups: the virtual groups' store, or L{None} when no virtual groups plugin runs.
    @ivar users: plugin name to each authenticator whose users can be managed.
    @ivar rules: plugin name to each authorizer whose rules can be listed.
    """

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        *,
        groups: IGroupStore | None = None,
        users: Mapping[str, IUserStore] | None = None,
        rules: Mapping[str, IRuleListing] | None = None,
        admins: Iterable[str] = (),
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.groups = groups
        self.users = dict(users or {})
        self.rules = dict(rules or {})
        self.admins = frozenset(admins)
        self.history: deque[Sample] = deque(maxlen=HISTORY_SAMPLES)

    @classmethod
    def fromPlugins(
        cls, broker: Broker, clock: IReactorTime, plugins: Mapping[str, Any], admins: Iterable[str]
    ) -> Management:
        """Find the group store, user stores and rule listings among the built C{plugins}."""
        groups = None
        for plugin in plugins.values():
            store = getattr(plugin, "store", None)
            if IGroupStore.providedBy(store):
                groups = store
                break
        return cls(
            broker,
            clock,
            groups=groups,
            users={n: p for n, p in plugins.items() if IUserStore.providedBy(p)},
            rules={n: p for n, p in plugins.items() if IRuleListing.providedBy(p)},
            admins=admins,
        )

    def sample(self) -> None:
        """Record the counters now, for the overview's chart."""
        stats = self.broker.stats
        connected = sum(1 for s in self.broker.sessions.values() if s.connection is not None)
        self.history.append(
            Sample(
                self.clock.seconds(),
                connected,
                stats.messagesReceived,
                stats.publishMessagesSent,
                stats.messagesDropped,
            )
        )
