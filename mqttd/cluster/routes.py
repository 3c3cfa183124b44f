"""
The other nodes' routes: which node wants which topic filters, as a trie, so that choosing
the nodes a message goes to is a local match (docs/cluster.md, "Routes").

Pure data; the cluster service keeps it up to date from Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from mqttd.topics import SHARE_PREFIX, SubscriptionTree, split_shared_filter


class _Group:
    """The nodes holding members of one shared subscription, taken in turn."""

    __slots__ = ("cursor", "nodes")

    def __init__(self) -> None:
        self.nodes: list[str] = []
        self.cursor = 0


class RemoteRoutes:
    """
    Topic filters to the nodes (other than this one) that have subscribers to them.

    An ordinary filter is a subscription of the node in a L{SubscriptionTree}; a shared one
    (C{$share/G/F}) makes the node a holder of that group, matched by F.
    """

    def __init__(self) -> None:
        self._ordinary = SubscriptionTree()
        self._groupTree = SubscriptionTree()
        self._groups: dict[str, _Group] = {}
        # What each node has, to drop it whole when the node dies.
        self._byNode: dict[str, set[str]] = {}

    def nodes(self) -> set[str]:
        """The nodes with at least one route."""
        return {node for node, filters in self._byNode.items() if filters}

    def filters(self, node: str) -> frozenset[str]:
        """C{node}'s filters, as this copy has them."""
        return frozenset(self._byNode.get(node, ()))

    def add(self, node: str, topicFilter: str) -> None:
        """C{node} has a subscriber to C{topicFilter} (again: no change)."""
        filters = self._byNode.setdefault(node, set())
        if topicFilter in filters:
            return
        filters.add(topicFilter)
        if topicFilter.startswith(SHARE_PREFIX):
            group = self._groups.get(topicFilter)
            if group is None:
                group = self._groups[topicFilter] = _Group()
                self._groupTree.subscribe(split_shared_filter(topicFilter)[1], topicFilter, 0)
            group.nodes.append(node)
        else:
            self._ordinary.subscribe(topicFilter, node, 0)

    def remove(self, node: str, topicFilter: str) -> None:
        """C{node} has no subscriber to C{topicFilter} any more."""
        filters = self._byNode.get(node)
        if filters is None or topicFilter not in filters:
            return
        filters.discard(topicFilter)
        if not filters:
            del self._byNode[node]
        if topicFilter.startswith(SHARE_PREFIX):
            group = self._groups[topicFilter]
            group.nodes.remove(node)
            if not group.nodes:
                del self._groups[topicFilter]
                self._groupTree.unsubscribe(split_shared_filter(topicFilter)[1], topicFilter)
            elif group.cursor >= len(group.nodes):
                group.cursor = 0
        else:
            self._ordinary.unsubscribe(topicFilter, node)

    def replace(self, node: str, filters: Iterable[str]) -> None:
        """C{node}'s routes are exactly C{filters} (read whole from Redis)."""
        wanted = set(filters)
        for topicFilter in self.filters(node) - wanted:
            self.remove(node, topicFilter)
        for topicFilter in wanted:
            self.add(node, topicFilter)

    def drop(self, node: str) -> None:
        """C{node} is gone: forget all its routes."""
        for topicFilter in self.filters(node):
            self.remove(node, topicFilter)

    def match(self, topic: str) -> dict[str, int]:
        """The nodes with an ordinary subscription matching C{topic} (values meaningless)."""
        return self._ordinary.match(topic)

    def matchShared(self, topic: str) -> list[str]:
        """The shared subscriptions, by whole filter, some other node has for C{topic}."""
        return list(self._groupTree.match(topic))

    def holders(self, groupFilter: str) -> list[str]:
        """The other nodes holding members of the shared subscription C{groupFilter}."""
        group = self._groups.get(groupFilter)
        return [] if group is None else group.nodes

    def pick(self, groupFilter: str, local: bool, here: str) -> str:
        """
        The node whose turn it is to serve C{groupFilter}: the other holders and, if C{local},
        this node C{here}, in turn.
        """
        group = self._groups.get(groupFilter)
        if group is None:
            return here
        count = len(group.nodes) + (1 if local else 0)
        turn = group.cursor % count
        group.cursor = (turn + 1) % count
        return here if turn == len(group.nodes) else group.nodes[turn]
