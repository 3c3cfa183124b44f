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
    dumpSettings,
    readInboxes,
    readOps,
    trimOps,
    withSettings,
)
from mqttd.interfaces import Group, IGroupInbox, IGroupStore

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


def readChanges(db: sqlite3.Connection) -> int:
    """How many changes the file has seen: any writer, this process or another, adds one."""
    changes: int = db.execute("SELECT changes FROM version").fetchone()[0]
    return changes


def readGroups(db: sqlite3.Connection) -> dict[str, Group]:
    """Every group in the file."""
    members: dict[str, dict[str, int]] = {}
    for groupName, member, qos in db.execute("SELECT group_name, member, qos FROM members"):
        members.setdefault(groupName, {})[member] = qos
    return {
        name: withSettings(
            Group(name, members.get(name, {}), bool(byUsername), topic, bool(echo)), settings
        )
        for name, byUsername, topic, echo, settings in db.execute(
            "SELECT name, by_username, topic, echo, settings FROM groups"
        )
    }


def writeGroups(db: sqlite3.Connection, groups: Iterable[Group], deleted: Iterable[str]) -> int:
    """
    Replace C{groups} and delete the groups named C{deleted}, in one transaction.

    @return: the file's change count after it.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for name in deleted:
            db.execute("DELETE FROM members WHERE group_name = ?", (name,))
            db.execute("DELETE FROM groups WHERE name = ?", (name,))
        for group in groups:
            db.execute("DELETE FROM members WHERE group_name = ?", (group.name,))
            db.execute(
                "INSERT OR REPLACE INTO groups (name, by_username, topic, echo, settings)"
                " VALUES (?, ?, ?, ?, ?)",
                (group.name, group.byUsername, group.topic, group.echo, dumpSettings(group)),
            )
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?)",
                ((group.name, member, qos) for member, qos in group.members.items()),
            )
        db.execute("UPDATE version SET changes = changes + 1")
        changes = readChanges(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return changes


def _execute(path: str, ops: Sequence[tuple[str, tuple[object, ...]]]) -> None:
    with closing(openGroupDatabase(path)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in ops:
                db.execute(sql, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _write(path: str, groups: Sequence[Group], deleted: Sequence[str]) -> int:
    with closing(openGroupDatabase(path)) as db:
        return writeGroups(db, groups, deleted)


def _readIfChanged(path: str, known: int) -> tuple[int, dict[str, Group] | None]:
    with closing(openGroupDatabase(path)) as db:
        # One read transaction, so the count and the groups agree.
        db.execute("BEGIN")
        try:
            changes = readChanges(db)
            return changes, (readGroups(db) if changes != known else None)
        finally:
            db.execute("COMMIT")


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

    def _inboxWrite(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
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
