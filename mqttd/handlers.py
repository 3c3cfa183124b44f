"""
What the broker's packet handlers (L{mqttd.publishing}, L{mqttd.subscribing})
are given when the broker builds them: the parts below them, and read-only
views of the session registry's tables.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

from .config import BrokerConfig
from .interfaces import ClientInfo, IMessageStore
from .observers import Observers
from .policy import Policy
from .router import Router
from .session import Session
from .stats import Stats


class PacketHandlers:
    """The parts a client's packets are handled with; subclassed per packet family."""

    def __init__(
        self,
        config: BrokerConfig,
        clock: IReactorTime,
        store: IMessageStore,
        stats: Stats,
        policy: Policy,
        router: Router,
        observing: Observers,
        sessions: Mapping[str, Session],
        clients: Mapping[str, ClientInfo],
    ) -> None:
        """
        @param sessions: every session by client identifier (read only).
        @param clients: who each session's client is (read only).
        """
        self.config = config
        self.clock = clock
        self.store = store
        self.stats = stats
        self.policy = policy
        self.router = router
        self.observing = observing
        self.sessions = sessions
        self.clients = clients
