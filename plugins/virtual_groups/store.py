"""
The plugin's own SQLite file of groups (and their inboxes), used when the broker's store
keeps none: L{SQLiteGroupStore}, polled for changes another process makes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.groupinbox import (
    INBOX_SCHEMA,
    Inbox,
    InboxEntry,
    appendOps,
    deleteOps,
    readInboxes,
    readOps,
    trimOps,
)
from mqttd.interfaces import Group, IGroupInbox, IGroupStore

from ..sqlite_groups import GroupTables, Op, runOps
from .model import GroupError

SCHEMA_VERSION = 2


# The application_id of a groups file ("mqgr"), so that mqttd never mistakes another SQLite
# database, the broker's own store included, for one.
APPLICATION_ID = 0x6D716772


SCHEMA = """
CREATE TABLE version (changes INTEGER NOT NULL);
INSERT INTO version VALUES (0);
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    by_username INTEGER NOT NULL,
    topic TEXT,
    echo INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (
    group_name TEXT NOT NULL,
    member TEXT NOT NULL,
    qos INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
) WITHOUT ROWID;
"""


# From version 1 to 2: roles, policies and inboxes, as in the broker's SQLite store.
MIGRATION_2 = INBOX_SCHEMA


def openGroupDatabase(path: str) -> sqlite3.Connection:
    """
    Open, creating it if missing, the groups file at C{path}.

    @raise GroupError: it is not a groups file of this version, or cannot be opened.
    """
    try:
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    except sqlite3.Error as e:
        raise GroupError(f"{path}: cannot open: {e}") from None
    try:
        application = db.execute("PRAGMA application_id").fetchone()[0]
        if application == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise GroupError(f"{path}: an SQLite database, but not an mqttd groups file")
        if application == 0:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(
                f"BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
                " PRAGMA user_version = 1; COMMIT;"
            )
        elif application != APPLICATION_ID:
            raise GroupError(f"{path}: an SQLite database, but not an mqttd groups file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:
            # IMMEDIATE and read again inside, as the broker's store migrates.
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                    for statement in MIGRATION_2:
                        db.execute(statement)
                    db.execute("PRAGMA user_version = 2")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise GroupError(
                f"{path}: groups file version {version}; this mqttd reads version {SCHEMA_VERSION}"
            )
        db.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as e:
        db.close()
        raise GroupError(f"{path}: not a usable groups file: {e}") from None
    except GroupError:
        db.close()
        raise
    return db


# The plugin's file keeps groups as the broker's store does, under two other table names.
FILE_TABLES = GroupTables(members="members", changes="version")
readChanges = FILE_TABLES.readChanges
readGroups = FILE_TABLES.readGroups
writeGroups = FILE_TABLES.writeGroups


def _execute(path: str, ops: Sequence[Op]) -> None:
    with closing(openGroupDatabase(path)) as db:
        runOps(db, ops)


def _write(path: str, groups: Sequence[Group], deleted: Sequence[str]) -> int:
    with closing(openGroupDatabase(path)) as db:
        return writeGroups(db, groups, deleted)


def _readIfChanged(path: str, known: int) -> tuple[int, dict[str, Group] | None]:
    with closing(openGroupDatabase(path)) as db:
        return FILE_TABLES.readGroupsIfChanged(db, known)


Runner = Callable[..., "Deferred[Any]"]


@implementer(IGroupStore, IGroupInbox)
class SQLiteGroupStore:
    """
    Groups in an SQLite file: held in memory for the routing, written through to the file off the
    reactor thread, one write at a time in order; changes other processes make to the file (the
    command line) are read back every C{pollInterval} seconds.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        initial: Sequence[Group] = (),
        *,
        pollInterval: float = 1.0,
        runner: Runner | None = None,
    ) -> None:
        """
        Open the file, write C{initial} to it and read every group (synchronously: at start-up).

        @param runner: runs a blocking call and returns a L{Deferred} of its result; by default
            in the reactor's thread pool.
        @raise GroupError: the file cannot be used.
        """
        self.path = path
        self._reactor = reactor
        self._run = runner or self._inThread
        self._lock = DeferredLock()
        self._watchers: list[Callable[[], None]] = []
        with closing(openGroupDatabase(path)) as db:
            self._changes = writeGroups(db, initial, ()) if initial else readChanges(db)
            self._groups = readGroups(db)
            self._inboxes = readInboxes(db)
        self._poll = LoopingCall(self._pollFile)
        self._poll.clock = reactor
        self._pollInterval = pollInterval

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def start(self) -> None:
        """Start reading back other processes' changes."""
        self._poll.start(self._pollInterval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop polling; the L{Deferred} fires once every write asked for so far is done."""
        if self._poll.running:
            self._poll.stop()
        return self._lock.run(lambda: None)

    # IGroupInbox: written through, in order, as group changes are.

    def inboxes(self) -> dict[str, Inbox]:
        return self._inboxes

    def _inboxWrite(self, ops: list[Op]) -> None:
        d = self._lock.run(self._run, _execute, self.path, ops)
        d.addErrback(self._inboxWriteFailed)

    def _inboxWriteFailed(self, failure: Failure) -> None:
        self.log.failure("virtual groups: cannot write an inbox to {path}", failure, path=self.path)

    def inboxAppended(self, group: str, entry: InboxEntry) -> None:
        self._inboxWrite(appendOps(group, entry))

    def inboxTrimmed(self, group: str, firstSeq: int) -> None:
        self._inboxWrite(trimOps(group, firstSeq))

    def inboxRead(self, group: str, reader: str, seq: int) -> None:
        self._inboxWrite(readOps(group, reader, seq))

    def inboxDeleted(self, group: str) -> None:
        self._inboxWrite(deleteOps(group))

    # IGroupSource

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def groupNames(self) -> Iterable[str]:
        return self._groups.keys()

    def watch(self, changed: Callable[[], None]) -> None:
        self._watchers.append(changed)

    # IGroupStore

    def save(self, group: Group) -> Deferred[None]:
        self._groups[group.name] = group
        self._changed()
        return self._lock.run(self._writeThrough, (group,), ())

    def delete(self, name: str) -> Deferred[None]:
        if self._groups.pop(name, None) is not None:
            self._changed()
        return self._lock.run(self._writeThrough, (), (name,))

    def _writeThrough(self, groups: Sequence[Group], deleted: Sequence[str]) -> Deferred[None]:
        return self._run(_write, self.path, groups, deleted).addCallback(self._written)

    def _written(self, changes: int) -> None:
        # Another process wrote in between when the count moved by more than this write; the
        # next poll then sees the difference and reads the file.
        if changes == self._changes + 1:
            self._changes = changes

    def _pollFile(self) -> Deferred[None]:
        return self._lock.run(self._readBack).addErrback(self._pollFailed)

    def _readBack(self) -> Deferred[None]:
        return self._run(_readIfChanged, self.path, self._changes).addCallback(self._readIn)

    def _readIn(self, result: tuple[int, dict[str, Group] | None]) -> None:
        changes, groups = result
        if groups is None:
            return
        # Unchanged groups keep their objects, and so what the selector prepared from them.
        for name, group in groups.items():
            if self._groups.get(name) == group:
                groups[name] = self._groups[name]
        self._changes = changes
        self._groups = groups
        self.log.info(
            "virtual groups: read {count} groups changed in {path}",
            count=len(groups),
            path=self.path,
        )
        self._changed()

    def _pollFailed(self, failure: Failure) -> None:
        # Logged and retried at the next poll; the groups in memory keep routing meanwhile.
        self.log.failure("virtual groups: cannot read {path}", failure, path=self.path)

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()
