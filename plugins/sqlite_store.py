"""
The SQLite L{IMessageStore}: mqttd's embedded default (C{[store] plugin =
sqlite}).

One table per kind of state.  A message queued for many persistent sessions
is one row of C{messages} referenced by one C{deliveries} row per session,
and is deleted with its last reference.  The database runs in WAL mode with
C{synchronous=FULL}; every write happens on one writer thread (see
L{mqttd.durable.Writer}), the schema version is C{PRAGMA user_version}.

Options (C{[plugin:sqlite]}):
  - C{path}: the database file, relative to the configuration file's
    directory (created if missing, with its directory); default C{mqttd.db}.
  - C{durability}: C{sync} (default; a QoS 1/2 message is committed before
    its PUBACK/PUBREC) or C{batched} (committed every C{flush_ms}).
  - C{flush_ms}: the C{batched} commit interval in milliseconds; default 50.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.codec.packets import Will
from mqttd.durable import Writer, durabilityOptions
from mqttd.interfaces import IMessageStore, IPluginFactory, PluginConfigError, PluginContext
from mqttd.message import Message
from mqttd.session import WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, SessionState
from mqttd.store import StoredSession, StoredState, StoreError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    subscriptions TEXT NOT NULL
) WITHOUT ROWID;
-- Queued rows have no packet_id; in-flight rows have one.  seq keeps
-- delivery order.
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    packet_id INTEGER,
    state INTEGER
);
CREATE INDEX deliveries_by_client ON deliveries (client_id, packet_id);
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE TABLE awaiting_rel (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE wills (
    client_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INSERT_MESSAGE = "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)"
_SAVE_SESSION = (
    "INSERT INTO sessions VALUES (?, ?)"
    " ON CONFLICT (client_id) DO UPDATE SET subscriptions = excluded.subscriptions"
)
_QUEUE = "INSERT INTO deliveries (client_id, message_id, qos, retain) VALUES (?, ?, ?, ?)"
_SEND = (
    "INSERT INTO deliveries (client_id, message_id, qos, retain, packet_id, state)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SEND_QUEUED = (
    "UPDATE deliveries SET packet_id = ?, state = ? WHERE seq ="
    " (SELECT min(seq) FROM deliveries WHERE client_id = ? AND packet_id IS NULL)"
)
_RELEASE = "UPDATE deliveries SET state = ? WHERE client_id = ? AND packet_id = ?"
# The message goes with its last reference: a fan-out to many sessions is
# written once and deleted once.
_FORGET_MESSAGE = (
    "DELETE FROM messages WHERE id ="
    " (SELECT message_id FROM deliveries WHERE client_id = ? AND packet_id = ?)"
    " AND (SELECT count(*) FROM deliveries WHERE message_id = messages.id) = 1"
)
_ACKNOWLEDGE = "DELETE FROM deliveries WHERE client_id = ? AND packet_id = ?"
_FORGET_UNREFERENCED = (
    "DELETE FROM messages WHERE NOT EXISTS"
    " (SELECT 1 FROM deliveries WHERE deliveries.message_id = messages.id)"
)

Op = tuple[str, tuple[object, ...]]


def openDatabase(path: str) -> sqlite3.Connection:
    """
    Open (creating if need be) the store at C{path} and check it is one this
    mqttd can use.

    @raise StoreError: the file is not an SQLite database, is corrupt, is not
        an mqttd store, or has another schema version.
    """
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(path, f"cannot open the SQLite store: {e}") from None
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables == 0:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version == 0:
            raise StoreError(path, "an SQLite database, but not an mqttd store")
        elif version != SCHEMA_VERSION:
            raise StoreError(
                path,
                f"store schema version {version}; this mqttd reads version {SCHEMA_VERSION}",
            )
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(path, f"corrupt SQLite store: {check}")
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk, not only in the WAL's page cache, before
        # the broker acknowledges what it holds.
        db.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as e:
        db.close()
        raise StoreError(path, f"not a usable SQLite store: {e}") from None
    except StoreError:
        db.close()
        raise
    return db


@implementer(IMessageStore)
class SQLiteStore:
    """
    L{IMessageStore} in one SQLite file.

    @param path: the database file; opened and checked here, synchronously,
        so that a bad file stops start-up before anything listens.
    @raise StoreError: see L{openDatabase}.
    """

    def __init__(self, reactor: Any, path: str, *, sync: bool, flushInterval: float) -> None:
        self.path = path
        self._db = openDatabase(path)
        self._nextId = 1
        self._writer: Writer[Op] = Writer(
            reactor, self._apply, sync=sync, flushInterval=flushInterval, name="mqttd-sqlite"
        )
        self._record = self._writer.record

    # On the writer thread

    def _apply(self, ops: list[Op]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for sql, params in ops:
                db.execute(sql, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _read(self) -> dict[str, list[Any]]:
        db = self._db
        return {
            "nextId": db.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchall(),
            "messages": db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages"
            ).fetchall(),
            "sessions": db.execute("SELECT client_id, subscriptions FROM sessions").fetchall(),
            "deliveries": db.execute(
                "SELECT client_id, message_id, qos, retain, packet_id, state"
                " FROM deliveries ORDER BY seq"
            ).fetchall(),
            "awaiting": db.execute(
                "SELECT client_id, packet_id, received FROM awaiting_rel"
            ).fetchall(),
            "retained": db.execute("SELECT topic, payload, qos FROM retained").fetchall(),
            "wills": db.execute(
                "SELECT client_id, topic, payload, qos, retain FROM wills"
            ).fetchall(),
        }

    # IMessageStore

    def restore(self) -> Deferred[StoredState]:
        return self._writer.call(self._read).addCallback(self._restored)

    def _restored(self, rows: dict[str, list[Any]]) -> StoredState:
        self._nextId = rows["nextId"][0][0]
        messages: dict[int, Message] = {}
        for mid, topic, payload, qos, retain in rows["messages"]:
            message = messages[mid] = Message(topic, payload, qos, bool(retain))
            message.storeId = mid
        sessions: dict[str, StoredSession] = {
            clientId: StoredSession(json.loads(subscriptions))
            for clientId, subscriptions in rows["sessions"]
        }
        try:
            for clientId, mid, qos, retain, packetId, state in rows["deliveries"]:
                session = sessions[clientId]
                if packetId is None:
                    session.queue.append((messages[mid], qos, bool(retain)))
                else:
                    session.inflight[packetId] = [messages[mid], qos, bool(retain), state]
            for clientId, packetId, received in rows["awaiting"]:
                sessions[clientId].awaitingRel[packetId] = received
        except KeyError as e:
            raise StoreError(self.path, f"corrupt store: dangling reference {e}") from None
        states: list[SessionState] = [s.state(c) for c, s in sessions.items()]
        return StoredState(
            retained=[Message(t, p, q, True) for t, p, q in rows["retained"]],
            sessions=states,
            wills={c: Will(t, p, q, bool(r)) for c, t, p, q, r in rows["wills"]},
        )

    def flush(self) -> Deferred[None] | None:
        return self._writer.flush()

    def close(self) -> Deferred[None]:
        return self._writer.close(self._db.close)

    def _messageId(self, message: Message) -> int:
        mid = message.storeId
        if mid is None:
            mid = message.storeId = self._nextId
            self._nextId += 1
        # OR IGNORE: written once however many sessions reference it, and
        # written again if it comes back (a retained message) after its last
        # reference went.
        self._record(
            (_INSERT_MESSAGE, (mid, message.topic, message.payload, message.qos, message.retain))
        )
        return mid

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        self._record((_SAVE_SESSION, (clientId, json.dumps(dict(subscriptions)))))

    def sessionDeleted(self, clientId: str) -> None:
        record = self._record
        record(("DELETE FROM deliveries WHERE client_id = ?", (clientId,)))
        record(("DELETE FROM awaiting_rel WHERE client_id = ?", (clientId,)))
        record(("DELETE FROM sessions WHERE client_id = ?", (clientId,)))
        record((_FORGET_UNREFERENCED, ()))

    def messageQueued(self, clientId: str, message: Message, qos: int, retain: bool) -> None:
        self._record((_QUEUE, (clientId, self._messageId(message), qos, retain)))

    def messageSent(
        self,
        clientId: str,
        packetId: int,
        message: Message,
        qos: int,
        retain: bool,
        queued: bool,
    ) -> None:
        state = WAIT_PUBACK if qos == 1 else WAIT_PUBREC
        if queued:
            self._record((_SEND_QUEUED, (packetId, state, clientId)))
        else:
            mid = self._messageId(message)
            self._record((_SEND, (clientId, mid, qos, retain, packetId, state)))

    def messageReleased(self, clientId: str, packetId: int) -> None:
        self._record((_RELEASE, (WAIT_PUBCOMP, clientId, packetId)))

    def messageAcknowledged(self, clientId: str, packetId: int) -> None:
        self._record((_FORGET_MESSAGE, (clientId, packetId)))
        self._record((_ACKNOWLEDGE, (clientId, packetId)))

    def qos2Received(self, clientId: str, packetId: int, when: float) -> None:
        self._record(
            ("INSERT OR REPLACE INTO awaiting_rel VALUES (?, ?, ?)", (clientId, packetId, when))
        )

    def qos2Released(self, clientId: str, packetId: int) -> None:
        self._record(
            ("DELETE FROM awaiting_rel WHERE client_id = ? AND packet_id = ?", (clientId, packetId))
        )

    def willSet(self, clientId: str, will: Will) -> None:
        self._record(
            (
                "INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?)",
                (clientId, will.topic, will.payload, will.qos, will.retain),
            )
        )

    def willCleared(self, clientId: str) -> None:
        self._record(("DELETE FROM wills WHERE client_id = ?", (clientId,)))

    def retainedSet(self, message: Message) -> None:
        self._record(
            (
                "INSERT OR REPLACE INTO retained VALUES (?, ?, ?)",
                (message.topic, message.payload, message.qos),
            )
        )

    def retainedDeleted(self, topic: str) -> None:
        self._record(("DELETE FROM retained WHERE topic = ?", (topic,)))


@implementer(IPlugin, IPluginFactory)
class SQLiteStoreFactory:
    """Builds L{SQLiteStore} from C{[plugin:sqlite]}."""

    name = "sqlite"

    def build(self, options: Mapping[str, str], context: PluginContext) -> SQLiteStore:
        sync, flushInterval = durabilityOptions(options, frozenset({"path"}))
        path = os.path.normpath(context.path(options.get("path", "mqttd.db").strip()))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return SQLiteStore(context.reactor, path, sync=sync, flushInterval=flushInterval)
        except OSError as e:
            raise PluginConfigError("path", f"{path}: {e.strerror}") from None
        except StoreError as e:
            raise PluginConfigError("path", str(e)) from None


sqlite = SQLiteStoreFactory()
