"""
A node's own stream: the QoS 1/2 messages other nodes sent it, read through the consumer
group C{mqttd} under the node's name, so that entries read but not acknowledged before a crash
are read again when the node restarts.  An entry is acknowledged (C{XACK}) and deleted only
once what it carried was handed to the node's sessions and their store flushed.  An entry
carries a batch of messages (L{unpackBatch}), handed on in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mqttd.cluster.forwarding import streamKey
from mqttd.cluster.redis import ConnectionError, RedisConnections, ResponseError
from mqttd.cluster.wire import WireError, unpackBatch

GROUP = "mqttd"
# Entries read at once: enough to batch a burst, few enough to keep each batch's delay short.
BATCH = 512
# Milliseconds a read waits for new entries before it is asked again (and stopping is seen).
BLOCK = 1000


class Inbox:
    """
    Reads the node's stream and hands the messages of each batch of entries to C{handle}.

    @ivar received: the messages read (not the entries).
    """

    log = Logger()

    def __init__(
        self,
        redis: RedisConnections,
        node: str,
        handle: Callable[[list[bytes]], Deferred[Any] | None],
        clock: IReactorTime,
    ) -> None:
        """
        @param handle: called with the entries' messages in stream order; its L{Deferred} fires
            once they are safe with the node (delivered to the sessions, their store flushed).
        """
        self.redis = redis
        self.node = node
        self.key = streamKey(node)
        self.handle = handle
        self.clock = clock
        self._running = False
        self._loop: Deferred[None] | None = None
        self.received = 0

    def start(self) -> None:
        self._running = True
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(lambda f: self.log.failure("the cluster inbox stopped", f))

    def stop(self) -> Deferred[None] | None:
        """Stop after the current read; the caller then closes the reader connection."""
        self._running = False
        return self._loop

    async def _run(self) -> None:
        fresh = True
        while self._running:
            try:
                if fresh:
                    await self._createGroup()
                # After (re)connecting, first the entries this node read but never
                # acknowledged, then new ones.
                backlog = fresh
                fresh = False
                while self._running:
                    entries = await self._read(backlog)
                    if not entries:
                        backlog = False
                        continue
                    await self._settle(entries)
            except ConnectionError:
                fresh = True
                if self._running:
                    await deferLater(self.clock, 0.1, lambda: None)
            except ResponseError as e:
                # The group is gone (a Redis that lost its data): create it again.
                if "NOGROUP" not in str(e):
                    self.log.error("reading the cluster stream: {error}", error=str(e))
                fresh = True
                if self._running:
                    await deferLater(self.clock, 0.1, lambda: None)

    async def _createGroup(self) -> None:
        try:
            await self.redis.commands.execute_command(
                "XGROUP", "CREATE", self.key, GROUP, "0", "MKSTREAM"
            )
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _read(self, backlog: bool) -> list[tuple[bytes, bytes | None]]:
        command: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.node, "COUNT", BATCH]
        if not backlog:
            command += ["BLOCK", BLOCK]
        command += ["STREAMS", self.key, "0" if backlog else ">"]
        reply = await self.redis.reader.execute_command(*command)
        if not reply:
            return []
        entries: list[tuple[bytes, bytes | None]] = []
        for entryId, fields in reply[0][1]:
            # An entry deleted while pending comes back without its fields.
            data = None
            if fields:
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                data = values.get(b"m")
            entries.append((entryId, data))
        return entries

    async def _settle(self, entries: list[tuple[bytes, bytes | None]]) -> None:
        carried: list[bytes] = []
        for entryId, data in entries:
            if data is None:
                continue
            try:
                carried.extend(unpackBatch(data))
            except WireError as e:
                self.log.error(
                    "stream entry {entry} from another node is unreadable: {e}", entry=entryId, e=e
                )
        self.received += len(carried)
        if carried:
            await maybeDeferred(self.handle, carried)
        ids = [entryId for entryId, _ in entries]
        commands = self.redis.commands
        await commands.execute_command("XACK", self.key, GROUP, *ids)
        await commands.execute_command("XDEL", self.key, *ids)
