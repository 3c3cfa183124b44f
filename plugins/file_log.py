"""
The file store's log format: the header (magic, format version, the length synced last), the
framed records (length, CRC-32, tag, JSON fields, payload) of the journal's events, and reading
a log back: replaying its records into a L{MemoryStore}, cutting a torn tail, and saying what a
damaged log lost.  Formats 1 to L{FORMAT_VERSION} are read; only the current one is written.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from mqttd.codec.packets import Will
from mqttd.message import Message
from mqttd.store import (
    MemoryStore,
    StoreError,
    dumpProperties,
    loadProperties,
    storedMessage,
)

MAGIC = b"MQTTDLOG"
FORMAT_VERSION = 4
# The versions readLog replays; older ones are rewritten as FORMAT_VERSION on opening.
_READABLE = range(1, FORMAT_VERSION + 1)
# Magic and version; from format 4 followed by the synced length (LENGTH, at LENGTH_AT).
_HEADER = struct.Struct(">8sI")
LENGTH = struct.Struct(">Q")
LENGTH_AT = _HEADER.size
HEADER_SIZE = _HEADER.size + LENGTH.size
_FRAME = struct.Struct(">II")
_FIELDS = struct.Struct(">I")
# Far beyond any record max_packet_size allows: a larger length is garbage.
_MAX_RECORD = 1 << 30


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


def header(length: int = HEADER_SIZE) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT_VERSION) + LENGTH.pack(length)


def withLength(log: list[bytes]) -> bytes:
    """C{log} (header first) joined, its header saying its whole length."""
    log[0] = header(sum(map(len, log)))
    return b"".join(log)


class Replay:
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


def readLog(path: str, recover: bool = False) -> tuple[Replay, int, int, Damage | None]:
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
    replay = Replay(path)
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
        if end < HEADER_SIZE:
            why = f"only {end} bytes, within its header"
            if not recover:
                raise StoreError(path, why + "; set recover = true to start a new log")
            return replay, 0, version, Damage(why)
        (synced,) = LENGTH.unpack_from(data, LENGTH_AT)
        offset = HEADER_SIZE
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
