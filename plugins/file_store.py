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

Options (C{[plugin:file]}):
  - C{path}: the log file, relative to the configuration file's directory
    (created if missing, with its directory); default C{mqttd.log}.
  - C{durability}, C{flush_ms}: as for the SQLite store.
  - C{compact_bytes}: the least log size worth compacting; default 1048576.
  - C{recover}: C{true} to start from what can be read of a damaged log
    (see above); default C{false}.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
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
    MemoryStore,
    StoredState,
    StoreError,
    dumpProperties,
    loadProperties,
    storedMessage,
)

MAGIC = b"MQTTDLOG"
FORMAT_VERSION = 4
# The versions readLog replays; older ones are rewritten as FORMAT_VERSION on opening.
_READABLE = range(1, FORMAT_VERSION + 1)
# Magic and version; from format 4 followed by the synced length (_LENGTH, at _LENGTH_AT).
_HEADER = struct.Struct(">8sI")
_LENGTH = struct.Struct(">Q")
_LENGTH_AT = _HEADER.size
_HEADER_SIZE = _HEADER.size + _LENGTH.size
_FRAME = struct.Struct(">II")
_FIELDS = struct.Struct(">I")
# Far beyond any record max_packet_size allows: a larger length is garbage.
_MAX_RECORD = 1 << 30
DEFAULT_COMPACT_BYTES = 1 << 20


class Compaction:
    """An operation for the writer: replace the log with C{snapshot}."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: bytes) -> None:
        self.snapshot = snapshot


Op = bytes | Compaction


def record(tag: bytes, fields: list[Any], payload: bytes = b"") -> bytes:
    """One framed record."""
    encoded = json.dumps(fields, separators=(",", ":")).encode("utf-8")
    body = tag + _FIELDS.pack(len(encoded)) + encoded + payload
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def messageRecord(mid: int, m: Message) -> bytes:
    fields = [mid, m.topic, m.qos, m.retain, dumpProperties(m.properties), m.expiresAt]
    return record(b"M", fields, m.payload)


def retainedRecord(m: Message) -> bytes:
    fields = [m.topic, m.qos, dumpProperties(m.properties), m.expiresAt]
    return record(b"P", fields, m.payload)


def willRecord(clientId: str, will: Will) -> bytes:
    fields = [clientId, will.topic, will.qos, will.retain, dumpProperties(will.properties)]
    return record(b"W", fields, will.payload)


def _header(length: int = _HEADER_SIZE) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT_VERSION) + _LENGTH.pack(length)


def _withLength(log: list[bytes]) -> bytes:
    """C{log} (header first) joined, its header saying its whole length."""
    log[0] = _header(sum(map(len, log)))
    return b"".join(log)


class _Replay:
    """Rebuilds a L{MemoryStore} from a log's records."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.model = MemoryStore()
        self.messages: dict[int, Message] = {}

    def apply(self, tag: bytes, fields: list[Any], payload: bytes) -> None:
        model = self.model
        messages = self.messages
        if tag == b"M":
            # Format 1 had no properties and no deadline.
            mid, topic, qos, retain, properties, expiresAt = [*fields, None, None][:6]
            message = messages[mid] = storedMessage(
                topic, payload, qos, retain, properties, expiresAt
            )
            message.storeId = mid
        elif tag == b"S":
            model.sessionSaved(fields[0], fields[1])
        elif tag == b"D":
            model.sessionDeleted(fields[0])
        elif tag == b"E":
            model.sessionExpiry(fields[0], fields[1], fields[2])
        elif tag == b"O":
            model.sessionOwned(fields[0], fields[1])
        elif tag == b"Q":
            clientId, mid, qos, retain = fields
            model.messageQueued(clientId, messages[mid], qos, retain)
        elif tag == b"T":
            clientId, packetId, mid, qos, retain, queued = fields
            model.messageSent(clientId, packetId, messages[mid], qos, retain, queued)
        elif tag == b"L":
            model.messageReleased(fields[0], fields[1])
        elif tag == b"A":
            model.messageAcknowledged(fields[0], fields[1])
        elif tag == b"R":
            model.qos2Received(fields[0], fields[1], fields[2])
        elif tag == b"r":
            model.qos2Released(fields[0], fields[1])
        elif tag == b"W":
            clientId, topic, qos, retain, properties = [*fields, None][:5]
            model.willSet(clientId, Will(topic, payload, qos, retain, loadProperties(properties)))
        elif tag == b"w":
            model.willCleared(fields[0])
        elif tag == b"P":
            topic, qos, properties, expiresAt = [*fields, None, None][:4]
            model.retainedSet(storedMessage(topic, payload, qos, True, properties, expiresAt))
        elif tag == b"p":
            model.retainedDeleted(fields[0])
        else:
            raise ValueError(f"unknown record type {tag!r}")


@dataclass
class Damage:
    """What L{readLog} met in a damaged log it was told to recover."""

    why: str
    # Records that were in the file and could not be replayed.
    dropped: int = 0
    # Bytes from the first that could not be framed into records to the end of the file.
    unreadable: int = 0
    # Bytes the header said were written and the file no longer has.
    missing: int = 0
    # Records replayed.
    kept: int = 0


def _cut(end: int, synced: int, index: int, offset: int) -> str:
    return f"truncated: {end} bytes of the {synced} written, cut in record {index} at byte {offset}"


def readLog(path: str, recover: bool = False) -> tuple[_Replay, int, int, Damage | None]:
    """
    Replay the log at C{path}.

    @param recover: replay what can be read of a damaged log, rather than
        refuse it.
    @return: the replayed state; the length of the log's good part, which
        is shorter than the file when its end was torn by a crash; the log's
        format version; and, when C{recover} met damage, what it was.
    @raise StoreError: the file is empty, not an mqttd log, of another
        format version, or (unless C{recover}) shorter than its header says
        or has a bad record before its torn end.
    """
    with open(path, "rb") as f:
        data = f.read()
    replay = _Replay(path)
    end = len(data)
    if end < _HEADER.size:
        if end and not MAGIC.startswith(data[: len(MAGIC)]):
            raise StoreError(path, "not an mqttd log file")
        # The log is made whole (header and all) by a rename, so a crash never leaves this.
        why = "empty file where a log was expected" if not end else f"only {end} bytes"
        if not recover:
            raise StoreError(path, why + "; set recover = true to start a new log")
        return replay, 0, FORMAT_VERSION, Damage(why)
    magic, version = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StoreError(path, "not an mqttd log file")
    if version not in _READABLE:
        raise StoreError(
            path, f"log format version {version}; this mqttd reads versions 1 to {FORMAT_VERSION}"
        )
    offset = _HEADER.size
    # Bytes known to have been synced; a format 3 log does not say.
    synced = 0
    if version >= 4:
        if end < _HEADER_SIZE:
            why = f"only {end} bytes, within its header"
            if not recover:
                raise StoreError(path, why + "; set recover = true to start a new log")
            return replay, 0, version, Damage(why)
        (synced,) = _LENGTH.unpack_from(data, _LENGTH_AT)
        offset = _HEADER_SIZE
    damage: Damage | None = None

    def damaged(why: str) -> Damage:
        if not recover:
            raise StoreError(path, why + "; set recover = true to start from the readable records")
        return damage if damage is not None else Damage(why)

    index = 0
    while offset < end:
        torn = offset >= synced
        if end - offset < _FRAME.size:
            if not torn:
                damage = damaged(_cut(end, synced, index, offset))
                damage.unreadable += end - offset
            break
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if length > _MAX_RECORD or start + length > end:
            # Runs past the end of the file: the write the crash interrupted, or damage.
            if not torn:
                if end < synced and length <= _MAX_RECORD:
                    why = _cut(end, synced, index, offset)
                else:
                    why = f"corrupt log: record {index} at byte {offset} has a bad length"
                damage = damaged(why)
                damage.unreadable += end - offset
            break
        body = data[start : start + length]
        if zlib.crc32(body) != crc:
            if torn and start + length == end:
                break
            damage = damaged(f"corrupt log: record {index} at byte {offset} fails its checksum")
            damage.dropped += 1
            offset = start + length
            index += 1
            continue
        try:
            (size,) = _FIELDS.unpack_from(body, 1)
            fields = json.loads(body[1 + _FIELDS.size : 1 + _FIELDS.size + size])
            replay.apply(body[:1], fields, body[1 + _FIELDS.size + size :])
        except (ValueError, KeyError, IndexError, TypeError, struct.error) as e:
            damage = damaged(
                f"corrupt log: record {index} at byte {offset} cannot be replayed ({e!r})"
            )
            damage.dropped += 1
        offset = start + length
        index += 1
    if end < synced:
        damage = damaged(
            f"truncated: {end} bytes of the {synced} written, after record {index - 1}"
        )
        damage.missing = synced - end
    if damage is not None:
        damage.kept = index - damage.dropped
    return replay, offset, version, damage


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
                    replay, good, version = _Replay(path), 0, FORMAT_VERSION
                    self._replace(_header())
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
        self._size = max(good, _HEADER_SIZE)
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
        os.pwrite(self._headerFd, _LENGTH.pack(self._file.tell()), _LENGTH_AT)

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
        out = [_header()]
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
        return _withLength(out)

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
