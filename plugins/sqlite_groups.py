"""
Virtual groups in the SQLite store's file: reading them (and the count of changes every writer
adds one to, which tells the broker another process changed them) and the statements that
replace or delete them, run by the broker's writer thread or, in one transaction of its own,
by C{mqttd groups}.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from mqttd.groupinbox import dumpSettings, withSettings
from mqttd.interfaces import Group

Op = tuple[str, tuple[object, ...]]


def groupOps(groups: Iterable[Group], deleted: Iterable[str]) -> list[Op]:
    """The statements that replace C{groups} and delete the groups named C{deleted}."""
    ops: list[Op] = []
    for name in deleted:
        ops.append(("DELETE FROM group_members WHERE group_name = ?", (name,)))
        ops.append(("DELETE FROM groups WHERE name = ?", (name,)))
    for group in groups:
        ops.append(("DELETE FROM group_members WHERE group_name = ?", (group.name,)))
        ops.append(
            (
                "INSERT OR REPLACE INTO groups (name, by_username, topic, echo, settings)"
                " VALUES (?, ?, ?, ?, ?)",
                (group.name, group.byUsername, group.topic, group.echo, dumpSettings(group)),
            )
        )
        ops.extend(
            ("INSERT INTO group_members VALUES (?, ?, ?)", (group.name, member, qos))
            for member, qos in group.members.items()
        )
    ops.append(("UPDATE group_changes SET changes = changes + 1", ()))
    return ops


def readGroupChanges(db: sqlite3.Connection) -> int:
    """How many changes to groups the file has seen, from any process."""
    changes: int = db.execute("SELECT changes FROM group_changes").fetchone()[0]
    return changes


def readGroups(db: sqlite3.Connection) -> dict[str, Group]:
    """Every group in the file."""
    members: dict[str, dict[str, int]] = {}
    for groupName, member, qos in db.execute("SELECT group_name, member, qos FROM group_members"):
        members.setdefault(groupName, {})[member] = qos
    return {
        name: withSettings(
            Group(name, members.get(name, {}), bool(byUsername), topic, bool(echo)), settings
        )
        for name, byUsername, topic, echo, settings in db.execute(
            "SELECT name, by_username, topic, echo, settings FROM groups"
        )
    }


def writeGroups(db: sqlite3.Connection, groups: Iterable[Group], deleted: Iterable[str]) -> None:
    """
    For another process than the broker's (C{mqttd groups}): L{groupOps} in
    one transaction of its own connection.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in groupOps(groups, deleted):
            db.execute(sql, params)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def readGroupsIfChanged(db: sqlite3.Connection, known: int) -> tuple[int, dict[str, Group] | None]:
    """The count of changes, and every group if it is not C{known}."""
    # One read transaction, so that the count and the groups agree.
    db.execute("BEGIN")
    try:
        changes = readGroupChanges(db)
        return changes, (readGroups(db) if changes != known else None)
    finally:
        db.execute("COMMIT")
