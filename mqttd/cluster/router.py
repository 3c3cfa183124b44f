"""
The route table of a cluster node (L{IRouteTable}): the in-process L{Router} for this node's
sessions, plus the other nodes' routes, so that a message goes on to exactly the nodes with a
matching subscription, and a shared subscription gets one delivery across the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from mqttd.cluster.sys import OWN_PREFIX
from mqttd.interfaces import ClientInfo
from mqttd.message import Message
from mqttd.router import Router
from mqttd.topics import SHARE_PREFIX, SharedGroup

if TYPE_CHECKING:
    from mqttd.cluster.service import Cluster


class ClusterRouter(Router):
    """
    @ivar cluster: the node's link to the others; set by the cluster when it is built.
    """

    cluster: Cluster | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # How many of this node's sessions hold each filter: the node's route set in Redis
        # changes only when a count goes from or to zero.
        self.localFilters: dict[str, int] = {}
        # Whether a selector asked for the message being routed to be selected on the other
        # nodes too (selectElsewhere).
        self._elsewhere = False
        # While routing: the shared subscriptions another node serves this message (skipped
        # here), or, for a message another node sent, the only ones served here.
        self._sharedSkipped: frozenset[str] | set[str] = frozenset()
        self._sharedOnly: Iterable[str] | None = None

    def addSubscription(self, topicFilter: str, clientId: str, options: int) -> bool:
        added = super().addSubscription(topicFilter, clientId, options)
        if added:
            count = self.localFilters.get(topicFilter, 0)
            self.localFilters[topicFilter] = count + 1
            if not count and self.cluster is not None:
                self.cluster.routeAdded(topicFilter)
        return added

    def removeSubscription(self, topicFilter: str, clientId: str) -> bool:
        removed = super().removeSubscription(topicFilter, clientId)
        if removed:
            count = self.localFilters[topicFilter] - 1
            if count:
                self.localFilters[topicFilter] = count
            else:
                del self.localFilters[topicFilter]
                if self.cluster is not None:
                    self.cluster.routeRemoved(topicFilter)
        return removed

    def route(self, message: Message, publisher: ClientInfo | None = None) -> bool:
        """
        Deliver C{message} to this node's subscribers, as L{Router.route}, and send it once to
        each other node with a matching subscription, or whose turn it is to serve a matching
        shared subscription.
        """
        cluster = self.cluster
        if cluster is None:
            return super().route(message, publisher)
        self._elsewhere = False
        matched = self._routeCluster(cluster, message, publisher)
        if self._elsewhere:
            self._elsewhere = False
            for node in list(cluster.membership.others):
                cluster.forward(node, message, False, (), None, True)
            return True
        return matched

    def selectElsewhere(self) -> None:
        """See L{Router.selectElsewhere}: the message goes to every other live node."""
        if not self.reselecting:
            self._elsewhere = True

    def _routeCluster(
        self, cluster: Cluster, message: Message, publisher: ClientInfo | None
    ) -> bool:
        topic = message.topic
        if topic.startswith(OWN_PREFIX):
            # This node's own $SYS tree: its clients' alone, mirrored for the others.
            matched = super().route(message, publisher)
            cluster.sysPublished(message)
            return matched
        routes = cluster.routes
        nodes = routes.match(topic)
        sharedRemote = routes.matchShared(topic)
        if not nodes and not sharedRemote:
            return super().route(message, publisher)
        served: dict[str, list[str]] = {}
        skipped = set()
        here = cluster.name
        for groupFilter in sharedRemote:
            node = routes.pick(groupFilter, groupFilter in self.shared.groups, here)
            if node != here:
                served.setdefault(node, []).append(groupFilter)
                skipped.add(groupFilter)
        self._sharedSkipped = skipped
        try:
            matched = super().route(message, publisher)
        finally:
            self._sharedSkipped = frozenset()
        for node in nodes.keys() | served.keys():
            cluster.forward(node, message, node in nodes, tuple(served.get(node, ())))
        return True if nodes or served else matched

    def _sharedGroups(self, topic: str) -> Sequence[SharedGroup]:
        # The matching shared subscriptions this node serves this time.
        groups = self.shared.match(topic)
        skipped = self._sharedSkipped
        only = self._sharedOnly
        if not skipped and only is None:
            return groups
        return [
            group
            for group in groups
            if group.topicFilter not in skipped and (only is None or group.topicFilter in only)
        ]

    def _deliverAll(self, message: Message, recipients: Mapping[str, int]) -> bool:
        """
        Deliver to the recipients a selector chose that have a session here; those that have
        none may be connected to another node, so the message goes to every other live node
        for them (where a client is connected is not replicated, unlike topic filters).
        """
        found = super()._deliverAll(message, recipients)
        cluster = self.cluster
        if cluster is None or not cluster.membership.others or self.reselecting:
            # Chosen here for another node's message: among this node's sessions alone.
            return found
        sessions = self.sessions
        elsewhere = {c: q for c, q in recipients.items() if c not in sessions}
        if not elsewhere:
            return found
        for node in list(cluster.membership.others):
            cluster.forward(node, message, False, (), elsewhere)
        return True

    def mayBeElsewhere(self) -> bool:
        """
        Whether another live node may hold a session this one lacks: where a client is connected
        is not replicated, so whenever there is another node (L{_deliverAll} then sends the
        recipients missing here to every other node).
        """
        return self.cluster is not None and bool(self.cluster.membership.others)

    def deliverForwarded(
        self,
        message: Message,
        ordinary: bool,
        groups: tuple[str, ...],
        selected: Mapping[str, int] | None = None,
        reselect: bool = False,
    ) -> None:
        """
        Deliver a message another node routed here: to this node's matching ordinary
        subscriptions if C{ordinary}, to one member of each of C{groups}, to the C{selected}
        recipients that have a session here, and, if C{reselect}, to those the selectors
        choose among this node's sessions (L{Router.reselecting}); never retained again or
        forwarded again.
        """
        if reselect and self.selectors:
            publisher = None
            if message.publisherId is not None:
                publisher = ClientInfo(message.publisherId, None, "", "")
            self.reselecting = True
            try:
                self._routeSelected(message, publisher, {})
            finally:
                self.reselecting = False
        if selected:
            qos = message.qos
            checked = bool(self.policy.authorizers or self.observing.chain)
            for clientId, wanted in selected.items():
                session = self.sessions.get(clientId)
                if session is None:
                    continue
                if checked:
                    self.deliverChecked(session, message, wanted if wanted < qos else qos)
                else:
                    session.deliver(message, wanted if wanted < qos else qos)
        if groups:
            self._sharedOnly = groups
            try:
                self._routeShared(message)
            finally:
                self._sharedOnly = None
        if not ordinary:
            return
        matches = self.subscriptions.match(message.topic)
        if not matches:
            return
        if self.subscriptions.optioned:
            matches = self._routeOptioned(message, matches)
        sessions = self.sessions
        qos = message.qos
        checked = bool(self.policy.authorizers or self.observing.chain)
        for clientId, granted in matches.items():
            session = sessions.get(clientId)
            if session is None:
                continue
            if checked:
                self.deliverChecked(session, message, granted if granted < qos else qos)
            else:
                session.deliver(message, granted if granted < qos else qos)

    def whenForwarded(self) -> Deferred[None] | None:
        """See L{IRouteTable.whenForwarded}: what went to other nodes is in Redis."""
        if self.cluster is None:
            return None
        return self.cluster.forwarder.whenWritten()

    def sharedFilters(self) -> list[str]:
        """This node's shared subscriptions, by whole filter."""
        return [f for f in self.localFilters if f.startswith(SHARE_PREFIX)]
