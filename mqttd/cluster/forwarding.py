"""
What a node sends to Redis that a publisher's acknowledgement waits for: QoS 1/2 messages
added to other nodes' streams and retained messages written, in the order they were routed,
resent after a lost connection, and held (up to C{max_pending}) while Redis is unreachable.
QoS 0 messages go out on the target's channel at once, or are dropped while Redis is down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.cluster.redis import ConnectionError, RedisConnections
from mqttd.codec.packets import ReasonCode
from mqttd.session import SessionError

Command = tuple[Any, ...]


def streamKey(node: str) -> str:
    """The stream of C{node}'s QoS 1/2 messages."""
    return f"mqttd:stream:{node}"


def channel0(node: str) -> str:
    """The channel of C{node}'s QoS 0 messages."""
    return f"mqttd:q0:{node}"


class _Entry:
    __slots__ = ("commands", "replies", "waiters")

    def __init__(self, commands: Sequence[Command]) -> None:
        self.commands = commands
        self.replies = 0
        self.waiters: list[Deferred[None]] = []


class Forwarder:
    """
    @ivar held: the entries not yet answered by Redis, oldest first.
    @ivar dropped: QoS 0 messages for other nodes dropped while Redis was unreachable.
    @ivar refused: messages refused because C{max_pending} were held.
    @ivar rewritten: entries written again after the connection they were written to broke.
    """

    log = Logger()

    def __init__(self, redis: RedisConnections, maxPending: int) -> None:
        self.redis = redis
        self.maxPending = maxPending
        self.held: deque[_Entry] = deque()
        # How many of held (from the left) were written to the current connection.
        self._written = 0
        # Bumped when a connection is lost, so its late answers are ignored.
        self._generation = 0
        self._refusal: SessionError | None = None
        self.dropped = 0
        self.refused = 0
        self.sent = 0
        self.rewritten = 0

    def publish0(self, node: str, data: bytes) -> None:
        """Send a QoS 0 message to C{node}'s channel, or drop it if Redis is down."""
        if not self.redis.up:
            self.dropped += 1
            return
        self.sent += 1
        self.redis.commands.execute_command("PUBLISH", channel0(node), data).addErrback(
            self._publishFailed
        )

    def _publishFailed(self, failure: Failure) -> None:
        failure.trap(ConnectionError)
        self.dropped += 1

    def add(self, node: str, data: bytes) -> None:
        """Queue a QoS 1/2 message for C{node}'s stream."""
        self.write([("XADD", streamKey(node), "*", "m", data)])

    def write(self, commands: Sequence[Command]) -> None:
        """
        Queue C{commands}, to be answered before the next L{whenWritten}'s Deferred fires; past
        C{max_pending} held entries they are refused instead, and so is that Deferred.
        """
        if len(self.held) >= self.maxPending:
            self.refused += 1
            self._refusal = SessionError(
                "the cluster's Redis is unreachable and max_pending messages are held",
                ReasonCode.SERVER_BUSY,
            )
            return
        self.sent += 1
        self.held.append(_Entry(commands))
        self._pump()

    def whenWritten(self) -> Deferred[None] | None:
        """
        A L{Deferred} firing once Redis has answered everything queued so far (failing with
        L{SessionError} if something since the last call was refused), or L{None} if nothing
        is waiting.
        """
        refusal, self._refusal = self._refusal, None
        if refusal is not None:
            return fail(refusal)
        if not self.held:
            return None
        waiter: Deferred[None] = Deferred()
        self.held[-1].waiters.append(waiter)
        return waiter

    def resume(self) -> None:
        """Redis is reachable again: write what is held, from the oldest."""
        self._generation += 1
        self._written = 0
        self._pump()

    def _pump(self) -> None:
        if not self.redis.up:
            return
        held = self.held
        commands = self.redis.commands
        generation = self._generation
        while self._written < len(held):
            entry = held[self._written]
            self._written += 1
            for command in entry.commands:
                d = commands.execute_command(*command)
                d.addCallbacks(
                    self._answered,
                    self._failed,
                    callbackArgs=(generation, entry),
                    errbackArgs=(generation, entry),
                )

    def _answered(self, reply: object, generation: int, entry: _Entry) -> None:
        if generation != self._generation:
            return
        entry.replies += 1
        if entry.replies < len(entry.commands):
            return
        # Answers come in the order the commands were written.
        self.held.popleft()
        self._written -= 1
        for waiter in entry.waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure, generation: int, entry: _Entry) -> None:
        if generation != self._generation:
            return
        if failure.check(ConnectionError):
            # Everything not answered is written again, in order, once Redis is back; an entry
            # Redis took before the connection broke is then added twice, which the receiving
            # node recognises by its sequence number.
            self._generation += 1
            self.rewritten += self._written
            self._written = 0
            for held in self.held:
                held.replies = 0
            return
        self.log.failure("Redis refused {command}", failure, command=entry.commands[0][0])
        self._answered(None, generation, entry)
