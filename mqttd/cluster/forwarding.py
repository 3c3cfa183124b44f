"""
What a node sends to Redis that a publisher's acknowledgement waits for: QoS 1/2 messages
added to other nodes' streams and retained messages written, in the order they were routed,
resent after a lost connection, and held (up to C{max_pending} messages) while Redis is
unreachable.  QoS 0 messages go out on the target's channel, or are dropped while Redis is
down.

The messages for one node within one reactor turn go as one command (L{wire.packBatch}): one
C{PUBLISH} for its QoS 0 messages, one C{XADD} entry for its QoS 1/2 messages, written at the
end of the turn, or sooner once a batch holds L{BATCH_MESSAGES} messages or L{BATCH_BYTES}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.cluster.redis import ConnectionError, RedisConnections
from mqttd.cluster.wire import packBatch
from mqttd.codec.packets import ReasonCode
from mqttd.session import SessionError

Command = tuple[Any, ...]

# A batch bound: a burst costs one command per this many messages (or bytes), and one entry's
# messages are handed on (and acknowledged) together, so a batch stays a small delay.
BATCH_MESSAGES = 256
BATCH_BYTES = 256 * 1024


def streamKey(node: str) -> str:
    """The stream of C{node}'s QoS 1/2 messages."""
    return f"mqttd:stream:{node}"


def channel0(node: str) -> str:
    """The channel of C{node}'s QoS 0 messages."""
    return f"mqttd:q0:{node}"


class _Entry:
    """
    Commands answered together; for a node's stream, built when written from C{batch}, the
    messages added until then.
    """

    __slots__ = ("batch", "commands", "messages", "node", "replies", "size", "waiters")

    def __init__(self, commands: Sequence[Command], node: str | None = None) -> None:
        self.commands = commands
        self.node = node
        self.batch: list[bytes] = []
        self.size = 0
        self.messages = 1 if node is None else 0
        self.replies = 0
        self.waiters: list[Deferred[None]] = []

    def seal(self) -> Sequence[Command]:
        if self.node is not None and not self.commands:
            self.commands = [("XADD", streamKey(self.node), "*", "m", packBatch(self.batch))]
            self.batch = []
        return self.commands


class _Batch:
    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.size = 0


class Forwarder:
    """
    @ivar held: the entries not yet answered by Redis, oldest first.
    @ivar holding: the messages (and retained writes) in C{held}, which C{max_pending} bounds.
    @ivar dropped: QoS 0 messages for other nodes dropped while Redis was unreachable.
    @ivar refused: messages refused because C{max_pending} were held.
    @ivar sent: messages taken to be sent (and retained writes).
    @ivar rewritten: entries written again after the connection they were written to broke.
    """

    log = Logger()

    def __init__(self, redis: RedisConnections, maxPending: int) -> None:
        self.redis = redis
        self.maxPending = maxPending
        self.held: deque[_Entry] = deque()
        self.holding = 0
        # How many of held (from the left) were written to the current connection.
        self._written = 0
        # Bumped when a connection is lost, so its late answers are ignored.
        self._generation = 0
        self._refusal: SessionError | None = None
        # Per node: its stream's entry still taking messages (in held, not yet written), and
        # its QoS 0 messages of this turn.
        self._open: dict[str, _Entry] = {}
        self._zero: dict[str, _Batch] = {}
        self._flushing: IDelayedCall | None = None
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
        batch = self._zero.get(node)
        if batch is None:
            batch = self._zero[node] = _Batch()
            self._flushLater()
        batch.messages.append(data)
        batch.size += len(data)
        if len(batch.messages) >= BATCH_MESSAGES or batch.size >= BATCH_BYTES:
            del self._zero[node]
            self._publish(node, batch.messages)

    def _publish(self, node: str, messages: list[bytes]) -> None:
        if not self.redis.up:
            self.dropped += len(messages)
            return
        d = self.redis.commands.execute_command("PUBLISH", channel0(node), packBatch(messages))
        d.addErrback(self._publishFailed, len(messages))

    def _publishFailed(self, failure: Failure, messages: int) -> None:
        failure.trap(ConnectionError)
        self.dropped += messages

    def add(self, node: str, data: bytes) -> None:
        """Queue a QoS 1/2 message for C{node}'s stream."""
        if self._full():
            return
        self.sent += 1
        self.holding += 1
        entry = self._open.get(node)
        if entry is None:
            entry = self._open[node] = _Entry((), node)
            self.held.append(entry)
            self._flushLater()
        entry.batch.append(data)
        entry.size += len(data)
        entry.messages += 1
        if entry.messages >= BATCH_MESSAGES or entry.size >= BATCH_BYTES:
            # Later messages open the next entry, which follows this one.
            del self._open[node]

    def write(self, commands: Sequence[Command]) -> None:
        """
        Queue C{commands}, to be answered before the next L{whenWritten}'s Deferred fires; past
        C{max_pending} held messages they are refused instead, and so is that Deferred.
        """
        if self._full():
            return
        self.sent += 1
        self.holding += 1
        self.held.append(_Entry(commands))
        self._flushLater()

    def _full(self) -> bool:
        if self.holding < self.maxPending:
            return False
        self.refused += 1
        self._refusal = SessionError(
            "the cluster's Redis is unreachable and max_pending messages are held",
            ReasonCode.SERVER_BUSY,
        )
        return True

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

    def _flushLater(self) -> None:
        # At the end of this reactor turn, with whatever else the turn adds.
        if self._flushing is None:
            self._flushing = self.redis.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write this turn's batches now."""
        if self._flushing is not None:
            if self._flushing.active():
                self._flushing.cancel()
            self._flushing = None
        zero, self._zero = self._zero, {}
        for node, batch in zero.items():
            self._publish(node, batch.messages)
        self._pump()

    def _pump(self) -> None:
        if not self.redis.up:
            # The open entries keep taking messages (up to their bound) until Redis is back.
            return
        self._open.clear()
        held = self.held
        commands = self.redis.commands
        generation = self._generation
        while self._written < len(held):
            entry = held[self._written]
            self._written += 1
            for command in entry.seal():
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
        self.holding -= entry.messages
        self._written -= 1
        for waiter in entry.waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure, generation: int, entry: _Entry) -> None:
        if generation != self._generation:
            return
        if failure.check(ConnectionError):
            # Everything not answered is written again, in order, once Redis is back; an entry
            # Redis took before the connection broke is then added twice, which the receiving
            # node recognises by its messages' sequence numbers.
            self._generation += 1
            self.rewritten += self._written
            self._written = 0
            for held in self.held:
                held.replies = 0
            return
        self.log.failure("Redis refused {command}", failure, command=entry.commands[0][0])
        self._answered(None, generation, entry)
