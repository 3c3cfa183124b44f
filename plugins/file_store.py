"""
The file L{IMessageStore}: an append-only log, for deployments that want no
SQLite (C{[store] plugin = file}).

The log starts with a header (C{MQTTDLOG}, a format version and, from format
4, the length the log had at its last synced write) followed by records,
each framed as a 4-byte length and a 4-byte CRC-32 of its body.
A body is one journal event (L{mqttd.interfaces.IMessageStore}): a tag byte,
a length-prefixed JSON list of its fields, then the payload, if any.  A
message queued for many sessions is one C{M} record referenced by id.

Opening the log replays it into a L{MemoryStore}.  A crash can only tear
what was being written after the header's length, which is dropped (and cut
off the file).  Anything else stops start-up with one line naming the file
and the damage: an empty file, a log shorter than its header's length
(truncated), a bad record before the end (corrupt).  With C{recover = true}
the damaged file is copied beside the log, every record that can be read is
kept, and the log says how many were dropped.  The header's length is
written after each synced batch (and made durable by the next one), so it
never claims more than is on disk.  Format 2 added MQTT 5 state as trailing
fields (properties, expiry deadlines) and the C{E} record (a session's
expiry); format 3 the C{O} record (a session's owner); format 4 the
header's length.  An older log replays as it did and is rewritten in the
current format when opened.  When the log has
grown past twice its size after the last compaction (and past
C{compact_bytes}), the live state is written to a new file, synced, and
renamed over the log: compaction never leaves a moment without a complete
log on disk.

The log's format, and reading a log back, are L{mqttd.plugins.file_log}'s; writing it, its
compaction and the journal's events are here.

Options (C{[plugin:file]}):
  - C{path}: the log file, relative to the configuration file's directory
    (created if missing, with its directory); default C{mqttd.log}.
  - C{durability}, C{flush_ms}: as for the SQLite store.
  - C{compact_bytes}: the least log size worth compacting; default 1048576.
  - C{recover}: C{true} to start from what can be read of a damaged log
    (see above); default C{false}.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.codec.packets import Will
from mqttd.durable import (
    StoreLock,
    Writer,
    durabilityOptions,
    openStoreFile,
    recoverOption,
)
from mqttd.interfaces import IMessageStore, IPluginFactory, PluginConfigError, PluginContext
from mqttd.message import Message
from mqttd.session import WAIT_PUBCOMP
from mqttd.store import (
    StoredState,
    StoreError,
)

from .file_log import (
    FORMAT_VERSION,
    HEADER_SIZE,
    LENGTH,
    LENGTH_AT,
    Damage,
    Replay,
    header,
    messageRecord,
    readLog,
    record,
    retainedRecord,
    willRecord,
    withLength,
)

DEFAULT_COMPACT_BYTES = 1 << 20


class Compaction:
    """An operation for the writer: replace the log with C{snapshot}."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: bytes) -> None:
        self.snapshot = snapshot


Op = bytes | Compaction


@implementer(IMessageStore)
class FileStore:
    """
    L{IMessageStore} as an append-only log with compaction.

    @param path: the log; opened and replayed here, synchronously, so that a
        bad file stops start-up before anything listens.
    @param recover: start from what can be read of a damaged log, keeping a
        copy of it beside the log.
    @raise StoreError: see L{readLog}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        *,
        sync: bool,
        flushInterval: float,
        compactBytes: int = DEFAULT_COMPACT_BYTES,
        recover: bool = False,
    ) -> None:
        self.path = path
        # Before the log is even read: another broker may be writing it.
        self._lock = StoreLock(path)
        try:
            damage = None
            try:
                if os.path.exists(path):
                    replay, good, version, damage = readLog(path, recover)
                    if damage is not None:
                        self._recovered(damage)
                    elif good < os.path.getsize(path):
                        self.log.info(
                            "{path}: dropped the {count} bytes a crash left unfinished at its end",
                            path=path,
                            count=os.path.getsize(path) - good,
                        )
                        os.truncate(path, good)
                else:
                    replay, good, version = Replay(path), 0, FORMAT_VERSION
                    self._replace(header())
            except OSError as e:
                raise StoreError(path, f"cannot use the log: {e.strerror}") from None
            self._model = replay.model
            self._written: set[int] = set(replay.messages)
            try:
                if version != FORMAT_VERSION or damage is not None:
                    # Records appended from now on have the current format's fields, which the
                    # header must announce: the whole log is rewritten in that format first.  A
                    # recovered log is rewritten from what could be read.
                    snapshot = self._snapshot()
                    self._replace(snapshot)
                    good = len(snapshot)
                self._open()
            except OSError as e:
                raise StoreError(path, f"cannot use the log: {e.strerror}") from None
        except BaseException:
            self._lock.release()
            raise
        self._nextId = max(replay.messages, default=0) + 1
        self._size = max(good, HEADER_SIZE)
        self._compactBytes = compactBytes
        self._compactAt = max(compactBytes, 2 * self._size)
        self._compacting = False
        self._reactor = reactor
        self._writer: Writer[Op] = Writer(
            reactor, self._apply, sync=sync, flushInterval=flushInterval, name="mqttd-file"
        )

    def _recovered(self, damage: Damage) -> None:
        """Keep a copy of the damaged log beside it, and say what is lost."""
        kept = f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        shutil.copy2(self.path, kept)
        self.log.warn(
            "{path}: {why}; recover = true: kept the damaged file as {kept}, replayed"
            " {replayed} records, dropped {dropped} that could not be read, and {unreadable}"
            " unreadable and {missing} missing bytes",
            path=self.path,
            why=damage.why,
            kept=kept,
            replayed=damage.kept,
            dropped=damage.dropped,
            unreadable=damage.unreadable,
            missing=damage.missing,
        )

    def _open(self) -> None:
        self._file: BinaryIO = open(self.path, "ab")
        # Appending descriptors ignore offsets: the header's length is written through another.
        self._headerFd = os.open(self.path, os.O_WRONLY)

    def _close(self) -> None:
        self._file.close()
        os.close(self._headerFd)

    # On the writer thread

    def _replace(self, content: bytes) -> None:
        """Atomically make C{content} the whole log."""
        temporary = self.path + ".compacting"
        with open(temporary, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _apply(self, ops: list[Op]) -> None:
        chunks: list[bytes] = []
        for op in ops:
            if isinstance(op, Compaction):
                self._write(chunks)
                chunks = []
                self._close()
                self._replace(op.snapshot)
                self._open()
            else:
                chunks.append(op)
        self._write(chunks)

    def _write(self, chunks: list[bytes]) -> None:
        if chunks:
            self._file.write(b"".join(chunks))
        self._file.flush()
        os.fsync(self._file.fileno())
        # Durable with the next batch's fsync: the header never claims more than is on disk.
        os.pwrite(self._headerFd, LENGTH.pack(self._file.tell()), LENGTH_AT)

    # On the reactor thread

    def _record(self, data: bytes) -> None:
        self._writer.record(data)
        self._size += len(data)
        if self._size >= self._compactAt and not self._compacting:
            # In a later turn: an event may be half recorded now, its model
            # change made and its record not yet written.
            self._compacting = True
            self._reactor.callLater(0, self._compact)

    def _compact(self) -> None:
        self._compacting = False
        snapshot = self._snapshot()
        self._size = len(snapshot)
        self._compactAt = max(self._compactBytes, 2 * self._size)
        self._writer.record(Compaction(snapshot))

    def _snapshot(self) -> bytes:
        """The live state as a complete log."""
        model = self._model
        out = [header()]
        written: set[int] = set()

        def message(m: Message) -> int:
            mid = m.storeId
            assert mid is not None
            if mid not in written:
                written.add(mid)
                out.append(messageRecord(mid, m))
            return mid

        for retained in model.retained.values():
            out.append(retainedRecord(retained))
        for clientId, will in model.wills.items():
            out.append(willRecord(clientId, will))
        for clientId, session in model.sessions.items():
            out.append(record(b"S", [clientId, session.subscriptions]))
            out.append(record(b"E", [clientId, session.expiryInterval, session.expiresAt]))
            if session.owner is not None:
                out.append(record(b"O", [clientId, session.owner]))
            for packetId, (m, qos, retain, state) in session.inflight.items():
                mid = message(m)  # type: ignore[arg-type]
                out.append(record(b"T", [clientId, packetId, mid, qos, retain, False]))
                if state == WAIT_PUBCOMP:
                    out.append(record(b"L", [clientId, packetId]))
            for m, qos, retain in session.queue:
                out.append(record(b"Q", [clientId, message(m), qos, retain]))
            for packetId, when in session.awaitingRel.items():
                out.append(record(b"R", [clientId, packetId, when]))
        self._written = written
        return withLength(out)

    def _messageId(self, message: Message) -> int:
        mid = message.storeId
        if mid is None:
            mid = message.storeId = self._nextId
            self._nextId += 1
        if mid not in self._written:
            # Once per log file, however many sessions reference it.
            self._written.add(mid)
            self._record(messageRecord(mid, message))
        return mid

    # IMessageStore

    def restore(self) -> StoredState:
        self._lock.claimed()
        return self._model.restore()

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        return self._writer.flush(exactlyOnce)

    def close(self) -> Deferred[None]:
        return self._writer.close(self._closeFile)

    def _closeFile(self) -> None:
        self._close()
        self._lock.release()

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        self._model.sessionSaved(clientId, subscriptions)
        self._record(record(b"S", [clientId, dict(subscriptions)]))

    def sessionDeleted(self, clientId: str) -> None:
        self._model.sessionDeleted(clientId)
        self._record(record(b"D", [clientId]))

    def sessionOwned(self, clientId: str, owner: str) -> None:
        self._model.sessionOwned(clientId, owner)
        self._record(record(b"O", [clientId, owner]))

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        self._model.sessionExpiry(clientId, interval, expiresAt)
        self._record(record(b"E", [clientId, interval, expiresAt]))

    def messageQueued(self, clientId: str, message: Message, qos: int, retain: bool) -> None:
        self._model.messageQueued(clientId, message, qos, retain)
        self._record(record(b"Q", [clientId, self._messageId(message), qos, retain]))

    def messageSent(
        self,
        clientId: str,
        packetId: int,
        message: Message,
        qos: int,
        retain: bool,
        queued: bool,
    ) -> None:
        self._model.messageSent(clientId, packetId, message, qos, retain, queued)
        mid = self._messageId(message)
        self._record(record(b"T", [clientId, packetId, mid, qos, retain, queued]))

    def messageReleased(self, clientId: str, packetId: int) -> None:
        self._model.messageReleased(clientId, packetId)
        self._record(record(b"L", [clientId, packetId]))

    def messageAcknowledged(self, clientId: str, packetId: int) -> None:
        self._model.messageAcknowledged(clientId, packetId)
        self._record(record(b"A", [clientId, packetId]))

    def qos2Received(self, clientId: str, packetId: int, when: float) -> None:
        self._model.qos2Received(clientId, packetId, when)
        self._record(record(b"R", [clientId, packetId, when]))

    def qos2Released(self, clientId: str, packetId: int) -> None:
        self._model.qos2Released(clientId, packetId)
        self._record(record(b"r", [clientId, packetId]))

    def willSet(self, clientId: str, will: Will) -> None:
        self._model.willSet(clientId, will)
        self._record(willRecord(clientId, will))

    def willCleared(self, clientId: str) -> None:
        self._model.willCleared(clientId)
        self._record(record(b"w", [clientId]))

    def retainedSet(self, message: Message) -> None:
        self._model.retainedSet(message)
        self._record(retainedRecord(message))

    def retainedDeleted(self, topic: str) -> None:
        self._model.retainedDeleted(topic)
        self._record(record(b"p", [topic]))


def _positive(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key, str(default)).strip()
    if not text.isdigit() or int(text) < 1:
        raise PluginConfigError(key, f"expected a positive integer, got {text!r}")
    return int(text)


@implementer(IPlugin, IPluginFactory)
class FileStoreFactory:
    """Builds L{FileStore} from C{[plugin:file]}."""

    name = "file"

    def build(self, options: Mapping[str, str], context: PluginContext) -> FileStore:
        sync, flushInterval = durabilityOptions(options, frozenset({"path", "compact_bytes"}))
        compactBytes = _positive(options, "compact_bytes", DEFAULT_COMPACT_BYTES)
        recover = recoverOption(options)
        return openStoreFile(
            options,
            context,
            "mqttd.log",
            lambda path: FileStore(
                context.reactor,
                path,
                sync=sync,
                flushInterval=flushInterval,
                compactBytes=compactBytes,
                recover=recover,
            ),
        )


file = FileStoreFactory()
