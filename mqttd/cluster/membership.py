"""
Who is in the cluster and alive: each node's heartbeat key with an expiry, read back by every
node each heartbeat; a node whose key is gone (or names another incarnation) has died.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mqttd.cluster.redis import RedisConnections

NODES = "mqttd:nodes"


def aliveKey(node: str) -> str:
    return f"mqttd:alive:{node}"


def cleanupKey(node: str, incarnation: str) -> str:
    return f"mqttd:cleanup:{node}:{incarnation}"


class Membership:
    """
    @ivar others: every other node known alive, with its incarnation.
    """

    log = Logger()

    def __init__(
        self,
        redis: RedisConnections,
        name: str,
        timeout: float,
        clock: IReactorTime,
        joined: Callable[[str, str], None],
        died: Callable[[str, str], None],
    ) -> None:
        """
        @param joined: called with a node and its incarnation when it is first seen alive.
        @param died: called with a node and the incarnation that stopped beating (also for
            a member found dead at start-up).
        """
        self.redis = redis
        self.name = name
        self.incarnation = ""
        self.timeout = timeout
        self.clock = clock
        self.joined = joined
        self.died = died
        self.others: dict[str, str] = {}
        # Since when Redis is reachable without a break: a node judges others dead only
        # after a whole timeout of it, so that after an outage of Redis itself nobody is
        # buried for heartbeats nobody could send.
        self._reachableSince: float | None = None

    def reachable(self, yes: bool) -> None:
        """Redis became reachable (C{True}) or was lost."""
        self._reachableSince = self.clock.seconds() if yes else None

    async def beat(self) -> bool:
        """
        Renew this node's heartbeat and check the others'.

        @return: whether this node's incarnation was buried by another node meanwhile (a
            pause longer than the timeout): it must then join again as a new one.
        """
        commands = self.redis.commands
        incarnation = self.incarnation
        buried = await commands.execute_command("EXISTS", cleanupKey(self.name, incarnation))
        if buried:
            return True
        await commands.execute_command(
            "SET", aliveKey(self.name), incarnation, "PX", int(self.timeout * 1000)
        )
        await commands.execute_command("HSET", NODES, self.name, incarnation)
        flat = await commands.execute_command("HGETALL", NODES)
        members = {
            flat[i].decode(): flat[i + 1].decode()
            for i in range(0, len(flat), 2)
            if flat[i].decode() != self.name
        }
        names = list(members)
        beats = await commands.execute_command("MGET", *map(aliveKey, names)) if names else []
        alive = {
            node: members[node]
            for node, beat in zip(names, beats, strict=True)
            if beat is not None and beat.decode() == members[node]
        }
        for node, current in alive.items():
            known = self.others.get(node)
            if known == current:
                continue
            if known is not None:
                self.died(node, known)
            self.others[node] = current
            self.joined(node, current)
        since = self._reachableSince
        if since is None or self.clock.seconds() - since < self.timeout:
            return False
        for node, known in list(self.others.items()):
            if node not in alive:
                del self.others[node]
                self.died(node, known)
        for node, incarnation in members.items():
            if node not in alive and node not in self.others:
                # Dead before this node looked (or its cleanup never finished).
                self.died(node, incarnation)
        return False

    def left(self, node: str, incarnation: str) -> None:
        """C{node} announced its clean stop."""
        if self.others.get(node) == incarnation:
            del self.others[node]
