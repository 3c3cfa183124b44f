"""
Virtual groups in SQLite: reading them (and the count of changes every writer adds one to, which
tells a reader another process changed them) and the statements that replace or delete them.
One L{GroupTables} serves both files that hold groups, which differ only in two table names: the
broker's SQLite store (L{STORE_TABLES}: run by its writer thread or, in one transaction of its
own, by C{mqttd groups}) and the virtual groups plugin's own file
(L{mqttd.plugins.virtual_groups.store}).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mqttd.groupinbox import dumpSettings, withSettings
from mqttd.interfaces import Group

Op = tuple[str, tuple[object, ...]]


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction of C{db}'s own (a connection in autocommit mode), for its block."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def runOps(db: sqlite3.Connection, ops: Iterable[Op]) -> None:
    """Run C{ops} in one transaction of C{db}'s own."""
    with transaction(db):
        for sql, params in ops:
            db.execute(sql, params)


@dataclass(frozen=True)
class GroupTables:
    """
    Where a file keeps groups: the table C{groups} (name, by_username, topic, echo, settings),
    the table of their members named C{members} (group_name, member, qos) and the one-row
    table named C{changes} (changes).
    """

    members: str
    changes: str

    def groupOps(self, groups: Iterable[Group], deleted: Iterable[str]) -> list[Op]:
        """The statements that replace C{groups} and delete the groups named C{deleted}."""
        deleteMembers = f"DELETE FROM {self.members} WHERE group_name = ?"
        addMember = f"INSERT INTO {self.members} VALUES (?, ?, ?)"
        ops: list[Op] = []
        for name in deleted:
            ops.append((deleteMembers, (name,)))
            ops.append(("DELETE FROM groups WHERE name = ?", (name,)))
        for group in groups:
            ops.append((deleteMembers, (group.name,)))
            ops.append(
                (
                    "INSERT OR REPLACE INTO groups (name, by_username, topic, echo, settings)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (group.name, group.byUsername, group.topic, group.echo, dumpSettings(group)),
                )
            )
            ops.extend(
                (addMember, (group.name, member, qos)) for member, qos in group.members.items()
            )
        ops.append((f"UPDATE {self.changes} SET changes = changes + 1", ()))
        return ops

    def readChanges(self, db: sqlite3.Connection) -> int:
        """How many changes to groups the file has seen, from any process."""
        changes: int = db.execute(f"SELECT changes FROM {self.changes}").fetchone()[0]
        return changes

    def readGroups(self, db: sqlite3.Connection) -> dict[str, Group]:
        """Every group in the file."""
        members: dict[str, dict[str, int]] = {}
        for groupName, member, qos in db.execute(
            f"SELECT group_name, member, qos FROM {self.members}"
        ):
            members.setdefault(groupName, {})[member] = qos
        return {
            name: withSettings(
                Group(name, members.get(name, {}), bool(byUsername), topic, bool(echo)), settings
            )
            for name, byUsername, topic, echo, settings in db.execute(
                "SELECT name, by_username, topic, echo, settings FROM groups"
            )
        }

    def writeGroups(
        self, db: sqlite3.Connection, groups: Iterable[Group], deleted: Iterable[str]
    ) -> int:
        """
        L{groupOps} in one transaction of C{db}'s own (another process than the broker's, or
        the plugin's own file).

        @return: the file's change count after it.
        """
        with transaction(db):
            for sql, params in self.groupOps(groups, deleted):
                db.execute(sql, params)
            # Read inside the transaction, so that it is this write's count.
            return self.readChanges(db)

    def readGroupsIfChanged(
        self, db: sqlite3.Connection, known: int
    ) -> tuple[int, dict[str, Group] | None]:
        """The count of changes, and every group if it is not C{known}."""
        # One read transaction, so that the count and the groups agree.
        db.execute("BEGIN")
        try:
            changes = self.readChanges(db)
            return changes, (self.readGroups(db) if changes != known else None)
        finally:
            db.execute("COMMIT")


# The broker's SQLite store (plugins/sqlite_schema.py).
STORE_TABLES = GroupTables(members="group_members", changes="group_changes")

# The module's names for the store's layout, as the store and C{mqttd groups} call them.
groupOps = STORE_TABLES.groupOps
readGroupChanges = STORE_TABLES.readChanges
readGroups = STORE_TABLES.readGroups
writeGroups = STORE_TABLES.writeGroups
readGroupsIfChanged = STORE_TABLES.readGroupsIfChanged
