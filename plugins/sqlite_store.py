"""
The SQLite L{IMessageStore}: mqttd's embedded default (C{[store] plugin =
sqlite}), and the L{IGroupStore} that holds virtual groups' membership.

One table per kind of state.  A message queued for many persistent sessions
is one row of C{messages} referenced by one C{deliveries} row per session,
and is deleted with its last reference.  The database runs in WAL mode with
C{synchronous=FULL}; every write happens on one writer thread (see
L{mqttd.durable.Writer}), the schema version is C{PRAGMA user_version}.

Groups are read into memory when the store opens and are written through the
writer thread like everything else.  C{mqttd groups} changes them in the same
file with its own connection (WAL lets it write while the broker runs) and
adds one to C{group_changes}; the store reads that count every
C{group_poll_interval} seconds once someone watches its groups, and the
groups again when the count moved.

The file's tables, their migrations and opening the file are in L{mqttd.plugins.sqlite_schema},
the statements on virtual groups in L{mqttd.plugins.sqlite_groups}; what the store records, and
reads back on restore, is here.  Why this module is a little over 500 lines: it is the one class
that implements the three interfaces over one file, sharing its connection, its writer thread
and its message ids; each journal event is a statement or two, and splitting the class by
interface would only scatter that shared state.

Options (C{[plugin:sqlite]}):
  - C{path}: the database file, relative to the configuration file's
    directory (created if missing, with its directory); default C{mqttd.db}.
  - C{durability}: C{sync} (default; a QoS 1/2 message is committed before
    its PUBACK/PUBREC) or C{batched} (committed every C{flush_ms}).
  - C{flush_ms}: the C{batched} commit interval in milliseconds; default 50.
  - C{group_poll_interval}: seconds between looks for group changes made by
    another process; default 1.
  - C{recover}: C{true} to start from what can be read of a damaged file
    (empty, unreadable or corrupt), kept beside it as
    C{PATH.damaged-TIMESTAMP}; default C{false}, which refuses to start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.codec.packets import Will
from mqttd.durable import (
    StoreLock,
    Writer,
    durabilityOptions,
    openStoreFile,
    recoverOption,
)
from mqttd.groupinbox import (
    Inbox,
    InboxEntry,
    appendOps,
    deleteOps,
    readInboxes,
    readOps,
    trimOps,
)
from mqttd.interfaces import (
    Group,
    IGroupInbox,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message
from mqttd.session import WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, SessionState
from mqttd.store import (
    StoredSession,
    StoredState,
    StoreError,
    dumpProperties,
    loadProperties,
    storedMessage,
)

from .polled_groups import PolledGroups
from .sqlite_groups import Op, groupOps, readGroupChanges, readGroups, readGroupsIfChanged
from .sqlite_schema import DamagedStore, openDatabase, recoverDatabase

_INSERT_MESSAGE = "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
_SAVE_SESSION = (
    "INSERT INTO sessions (client_id, subscriptions) VALUES (?, ?)"
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


@implementer(IMessageStore, IGroupStore, IGroupInbox)
class SQLiteStore(PolledGroups):
    """
    L{IMessageStore} and L{IGroupStore} in one SQLite file.

    @param path: the database file; opened and checked here, synchronously,
        so that a bad file stops start-up before anything listens.
    @param groupPollInterval: seconds between looks for group changes other
        processes made.
    @param recover: start from what can be read of a damaged file (see
        L{recoverDatabase}) rather than refuse it.
    @raise StoreError: see L{openDatabase}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        *,
        sync: bool,
        flushInterval: float,
        groupPollInterval: float = 1.0,
        recover: bool = False,
    ) -> None:
        self.path = path
        # Before the file is even read: another broker may be writing it.
        self._lock = StoreLock(path)
        try:
            try:
                self._db = openDatabase(path)
            except DamagedStore as e:
                if not recover:
                    raise StoreError(
                        path, f"{e.why}; set recover = true to start from what can be read"
                    ) from None
                self._db, what = recoverDatabase(path)
                self.log.warn(
                    "{path}: {why}; recover = true: {what}", path=path, why=e.why, what=what
                )
            # Read here, before the writer thread owns the connection: the
            # routing asks for groups synchronously from the first message on.
            self._groupChanges = readGroupChanges(self._db)
            self._groups = readGroups(self._db)
            self._inboxes = readInboxes(self._db)
        except BaseException:
            self._lock.release()
            raise
        self._openedBy = os.getpid()
        self._nextId = 1
        self._closed = False
        self._writer: Writer[Op] = Writer(
            reactor, self._apply, sync=sync, flushInterval=flushInterval, name="mqttd-sqlite"
        )
        self._record = self._writer.record
        self._initGroups(reactor, groupPollInterval, self._pollGroups)

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
                "SELECT id, topic, payload, qos, retain, properties, expires_at FROM messages"
            ).fetchall(),
            "sessions": db.execute(
                "SELECT client_id, subscriptions, expiry_interval, expires_at, owner FROM sessions"
            ).fetchall(),
            "deliveries": db.execute(
                "SELECT client_id, message_id, qos, retain, packet_id, state"
                " FROM deliveries ORDER BY seq"
            ).fetchall(),
            "awaiting": db.execute(
                "SELECT client_id, packet_id, received FROM awaiting_rel"
            ).fetchall(),
            "retained": db.execute(
                "SELECT topic, payload, qos, properties, expires_at FROM retained"
            ).fetchall(),
            "wills": db.execute(
                "SELECT client_id, topic, payload, qos, retain, properties FROM wills"
            ).fetchall(),
        }

    # IMessageStore

    def restore(self) -> Deferred[StoredState]:
        if os.getpid() != self._openedBy:
            # twistd forked into the background since the file was opened and checked: SQLite's
            # locks stay with the parent, so the child must not use that connection (another
            # process could then take the database for unused and drop its WAL).  It is left
            # unclosed, as closing could touch those files too.  Reopened before the writer
            # thread, or anything else, uses the database in this process.
            self._db = openDatabase(self.path)
            self._openedBy = os.getpid()
            self._lock.claimed()
        return self._writer.call(self._read).addCallback(self._restored)

    def _restored(self, rows: dict[str, list[Any]]) -> StoredState:
        self._nextId = rows["nextId"][0][0]
        messages: dict[int, Message] = {}
        for mid, topic, payload, qos, retain, properties, expiresAt in rows["messages"]:
            message = messages[mid] = storedMessage(
                topic, payload, qos, bool(retain), properties, expiresAt
            )
            message.storeId = mid
        sessions: dict[str, StoredSession] = {}
        for clientId, subscriptions, expiryInterval, expiresAt, owner in rows["sessions"]:
            session = sessions[clientId] = StoredSession(json.loads(subscriptions))
            session.expiryInterval = expiryInterval
            session.expiresAt = expiresAt
            session.owner = owner
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
            retained=[storedMessage(t, p, q, True, pr, e) for t, p, q, pr, e in rows["retained"]],
            sessions=states,
            wills={
                c: Will(t, p, q, bool(r), loadProperties(pr)) for c, t, p, q, r, pr in rows["wills"]
            },
        )

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        return self._writer.flush(exactlyOnce)

    def close(self) -> Deferred[None]:
        self._closed = True
        self._stopGroups()
        return self._writer.close(self._closeFile)

    def _closeFile(self) -> None:
        self._db.close()
        self._lock.release()

    def _messageId(self, message: Message) -> int:
        mid = message.storeId
        if mid is None:
            mid = message.storeId = self._nextId
            self._nextId += 1
        # OR IGNORE: written once however many sessions reference it, and
        # written again if it comes back (a retained message) after its last
        # reference went.
        self._record(
            (
                _INSERT_MESSAGE,
                (
                    mid,
                    message.topic,
                    message.payload,
                    message.qos,
                    message.retain,
                    dumpProperties(message.properties),
                    message.expiresAt,
                ),
            )
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

    def sessionOwned(self, clientId: str, owner: str) -> None:
        self._record(("UPDATE sessions SET owner = ? WHERE client_id = ?", (owner, clientId)))

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        self._record(
            (
                "UPDATE sessions SET expiry_interval = ?, expires_at = ? WHERE client_id = ?",
                (interval, expiresAt, clientId),
            )
        )

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
                "INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?, ?)",
                (
                    clientId,
                    will.topic,
                    will.payload,
                    will.qos,
                    will.retain,
                    dumpProperties(will.properties),
                ),
            )
        )

    def willCleared(self, clientId: str) -> None:
        self._record(("DELETE FROM wills WHERE client_id = ?", (clientId,)))

    def retainedSet(self, message: Message) -> None:
        self._record(
            (
                "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)",
                (
                    message.topic,
                    message.payload,
                    message.qos,
                    dumpProperties(message.properties),
                    message.expiresAt,
                ),
            )
        )

    def retainedDeleted(self, topic: str) -> None:
        self._record(("DELETE FROM retained WHERE topic = ?", (topic,)))

    # IGroupInbox

    def inboxes(self) -> dict[str, Inbox]:
        return self._inboxes

    def inboxAppended(self, group: str, entry: InboxEntry) -> None:
        for op in appendOps(group, entry):
            self._record(op)

    def inboxTrimmed(self, group: str, firstSeq: int) -> None:
        for op in trimOps(group, firstSeq):
            self._record(op)

    def inboxRead(self, group: str, reader: str, seq: int) -> None:
        for op in readOps(group, reader, seq):
            self._record(op)

    def inboxDeleted(self, group: str) -> None:
        for op in deleteOps(group):
            self._record(op)

    # IGroupStore (IGroupSource: PolledGroups)

    def save(self, group: Group) -> Deferred[None]:
        self._groups[group.name] = group
        return self._groupsWritten(groupOps((group,), ()))

    def delete(self, name: str) -> Deferred[None]:
        # Written even for a group not in memory: another process may have just made it.
        self._groups.pop(name, None)
        return self._groupsWritten(groupOps((), (name,)))

    def _groupsWritten(self, ops: list[Op]) -> Deferred[None]:
        for op in ops:
            self._record(op)
        self._groupsRecorded()
        # Committed now even when batched: a group change is rare, and whoever made it (a
        # control-topic request) is answered once it is on disk.
        return self._writer.commitNow()

    def _pollGroups(self) -> Deferred[None]:
        writes = self._groupWrites
        # After the commit of what this process recorded, so that the file is
        # never older than the groups in memory.
        read = self._writer.commitNow().addCallback(self._readGroupsIfChanged)
        return read.addCallback(self._groupsRead, writes).addErrback(self._pollFailed)

    def _readGroupsIfChanged(self, ignored: None) -> Deferred[tuple[int, dict[str, Group] | None]]:
        if self._closed:
            return succeed((self._groupChanges, None))
        return self._writer.call(readGroupsIfChanged, self._db, self._groupChanges)

    def _groupsRead(self, result: tuple[int, dict[str, Group] | None], writes: int) -> None:
        changes, groups = result
        # A save or delete made while the file was read is not in what was read: the next
        # poll reads again, after its commit.
        if groups is None or writes != self._groupWrites:
            return
        self._groupChanges = changes
        if self._groupsReadBack(groups):
            self.log.info(
                "read {count} groups changed in {path}", count=len(groups), path=self.path
            )

    def _pollFailed(self, failure: Failure) -> None:
        # Retried at the next poll; the groups in memory keep routing meanwhile.
        self.log.failure("cannot read the groups in {path}", failure, path=self.path)


@implementer(IPlugin, IPluginFactory)
class SQLiteStoreFactory:
    """Builds L{SQLiteStore} from C{[plugin:sqlite]}."""

    name = "sqlite"

    def build(self, options: Mapping[str, str], context: PluginContext) -> SQLiteStore:
        sync, flushInterval = durabilityOptions(options, frozenset({"path", "group_poll_interval"}))
        recover = recoverOption(options)
        text = options.get("group_poll_interval", "1").strip()
        try:
            groupPollInterval = float(text)
        except ValueError:
            groupPollInterval = 0.0
        if not groupPollInterval > 0:
            raise PluginConfigError(
                "group_poll_interval", f"expected a positive number of seconds, got {text!r}"
            )
        return openStoreFile(
            options,
            context,
            "mqttd.db",
            lambda path: SQLiteStore(
                context.reactor,
                path,
                sync=sync,
                flushInterval=flushInterval,
                groupPollInterval=groupPollInterval,
                recover=recover,
            ),
        )


sqlite = SQLiteStoreFactory()
