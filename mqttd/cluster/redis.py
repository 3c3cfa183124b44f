"""
A node's connections to the cluster's Redis, through txredisapi: one for commands, one for
blocking stream reads (a blocked XREADGROUP holds its connection), one subscribed to the
node's channels.  Each reconnects by itself, backing off to at most a second, and tells its
owner when it is up again, so the node can resynchronise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mqttd.cluster.config import RedisAddress

# What a command's Deferred fails with when Redis is unreachable.
ConnectionError = txredisapi.ConnectionError
ResponseError = txredisapi.ResponseError


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.factory.received(channel, message)


class _Factory(txredisapi.RedisFactory):
    """One connection, re-established after a fraction of a second, then every second."""

    initialDelay = 0.1
    maxDelay = 1.0

    def __init__(
        self,
        address: RedisAddress,
        protocol: type,
        up: Callable[[Any], None],
        down: Callable[[], None],
        received: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        super().__init__(
            f"{address.host}:{address.port}",
            address.db or None,
            1,
            isLazy=True,
            charset=None,
            password=address.password,
            convertNumbers=False,
            username=address.username,
        )
        self.protocol = protocol
        self._up = up
        self._down = down
        if received is not None:
            self.received = received

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.disconnectCalled:
            self._down()


class RedisConnections:
    """
    @ivar commands: runs commands (C{execute_command}); while Redis is unreachable a command
        waits for the connection to return, or fails with L{ConnectionError} if it was
        written to the connection that was lost.
    @ivar reader: the same, for blocking reads only.
    @ivar up: whether the command connection is connected.
    """

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: IReactorTime,
        channels: Sequence[str],
        received: Callable[[bytes, bytes], None],
        subscribed: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        """
        @param channels: what the subscriber connection subscribes to, at every connection.
        @param received: called with each pub/sub message's channel and data.
        @param subscribed: called once the subscriber is subscribed (again): messages since
            the last call may have been missed.
        @param lost: called when a connection is lost.
        """
        self.address = address
        self.reactor = reactor
        self.channels = tuple(channels)
        self._subscribed = subscribed
        self._lost = lost
        self.up = False
        self._commands = _Factory(address, txredisapi.RedisProtocol, self._commandsUp, self._down)
        self._reader = _Factory(address, txredisapi.RedisProtocol, lambda conn: None, self._down)
        self._subscriber = _Factory(address, _Subscriber, self._subscriberUp, self._down, received)
        self.commands: Any = self._commands.handler
        self.reader: Any = self._reader.handler

    def start(self) -> None:
        for factory in (self._commands, self._reader, self._subscriber):
            factory.startConnecting(
                HostnameEndpoint(self.reactor, self.address.host, self.address.port, timeout=5)
            )

    def _commandsUp(self, conn: Any) -> None:
        self.up = True

    def _subscriberUp(self, conn: Any) -> None:
        d: Deferred[Any] = conn.subscribe(list(self.channels))
        d.addCallbacks(lambda _: self._subscribed(), self._subscribeFailed)

    def _subscribeFailed(self, failure: Any) -> None:
        # The connection dropped meanwhile; the next one subscribes again.
        failure.trap(ConnectionError)

    def _down(self) -> None:
        self.up = self._commands.size > 0
        self._lost()

    def stop(self) -> Deferred[Any]:
        """Close every connection and stop reconnecting."""
        self.up = False
        return gatherResults(
            [f.disconnect() for f in (self._reader, self._subscriber, self._commands)],
            consumeErrors=True,
        )
