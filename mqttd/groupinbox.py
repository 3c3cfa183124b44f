"""
Virtual groups' inboxes and settings as the group stores keep them.

An inbox is one log per group: its last messages, each with a sequence number, and per reader (a
client id, or a member not yet connected) the number of the last entry it was given.  Both shipped
group stores (the broker's SQLite store and the plugin's own groups file) hold them in the same two
tables, so the SQL is written down once, here, with the JSON form of a group's settings.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from .interfaces import Group

# The tables both group stores add for inboxes, and the column for a group's settings.
INBOX_SCHEMA = (
    """CREATE TABLE group_inbox (
        group_name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        publisher TEXT NOT NULL,
        PRIMARY KEY (group_name, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE group_readers (
        group_name TEXT NOT NULL,
        reader TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (group_name, reader)
    ) WITHOUT ROWID""",
    "ALTER TABLE groups ADD COLUMN settings TEXT",
)

Op = tuple[str, tuple[object, ...]]

# How a member's claim is kept among the readers: see Inbox.claims.
CLAIM = "o:"


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One message kept in a group's inbox, as published (to C{$group/NAME/...})."""

    seq: int
    at: float
    topic: str
    payload: bytes
    qos: int
    publisher: str


@dataclass
class Inbox:
    """
    One group's inbox.

    @ivar readers: reader to the sequence number of the last entry it was given.  A reader is
        C{"c:" + clientId} once that client has been connected, and C{"m:" + member} where the
        member as a whole got to (set when it is added, less the group's history), which is
        where a client id the member never used before starts.
    @ivar claims: member of a group of client ids to the identity (user name, C{""} for
        anonymous) that first connected with that client id while a member: the inbox is that
        identity's, as a session is its owner's.  The store keeps a claim as the reader
        C{"o:" + member + "/" + identity} (a member name holds no C{/}), its number unused.
    """

    entries: deque[InboxEntry] = field(default_factory=deque)
    readers: dict[str, int] = field(default_factory=dict)
    lastSeq: int = 0
    claims: dict[str, str] = field(default_factory=dict)


def dumpSettings(group: Group) -> str | None:
    """The JSON a group store keeps of C{group}'s roles and policies; L{None} for the defaults."""
    settings: dict[str, Any] = {}
    if group.owners:
        settings["owners"] = sorted(group.owners)
    if group.publish != "members":
        settings["publish"] = group.publish
    if group.events:
        settings["events"] = True
    if group.inbox:
        settings["inbox"] = True
    if group.history:
        settings["history"] = group.history
    return json.dumps(settings, separators=(",", ":")) if settings else None


def withSettings(group: Group, text: str | None) -> Group:
    """C{group} with the settings L{dumpSettings} wrote as C{text}."""
    if text is None:
        return group
    settings = json.loads(text)
    return replace(
        group,
        owners=frozenset(settings.get("owners", ())),
        publish=settings.get("publish", "members"),
        events=bool(settings.get("events", False)),
        inbox=bool(settings.get("inbox", False)),
        history=int(settings.get("history", 0)),
    )


def appendOps(group: str, entry: InboxEntry) -> list[Op]:
    return [
        (
            "INSERT OR REPLACE INTO group_inbox VALUES (?, ?, ?, ?, ?, ?, ?)",
            (group, entry.seq, entry.at, entry.topic, entry.payload, entry.qos, entry.publisher),
        )
    ]


def trimOps(group: str, firstSeq: int) -> list[Op]:
    return [("DELETE FROM group_inbox WHERE group_name = ? AND seq < ?", (group, firstSeq))]


def readOps(group: str, reader: str, seq: int) -> list[Op]:
    return [("INSERT OR REPLACE INTO group_readers VALUES (?, ?, ?)", (group, reader, seq))]


def claimReader(member: str, identity: str) -> str:
    """The reader a store keeps C{identity}'s claim of C{member} as (see L{Inbox.claims})."""
    return f"{CLAIM}{member}/{identity}"


def deleteOps(group: str) -> list[Op]:
    return [
        ("DELETE FROM group_inbox WHERE group_name = ?", (group,)),
        ("DELETE FROM group_readers WHERE group_name = ?", (group,)),
    ]


def readInboxes(db: sqlite3.Connection) -> dict[str, Inbox]:
    """Every group's inbox in a group store's file."""
    inboxes: dict[str, Inbox] = {}
    for name, seq, at, topic, payload, qos, publisher in db.execute(
        "SELECT group_name, seq, at, topic, payload, qos, publisher FROM group_inbox"
        " ORDER BY group_name, seq"
    ):
        inbox = inboxes.setdefault(name, Inbox())
        inbox.entries.append(InboxEntry(seq, at, topic, bytes(payload), qos, publisher))
        inbox.lastSeq = seq
    for name, reader, seq in db.execute("SELECT group_name, reader, seq FROM group_readers"):
        inbox = inboxes.setdefault(name, Inbox())
        if reader.startswith(CLAIM):
            member, _, identity = reader[len(CLAIM) :].partition("/")
            inbox.claims[member] = identity
            continue
        inbox.readers[reader] = seq
        inbox.lastSeq = max(inbox.lastSeq, seq)
    return inboxes
