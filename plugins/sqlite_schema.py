"""
The SQLite store's file: its tables (version 1 and the migrations that bring any file to
L{SCHEMA_VERSION}, the file's C{PRAGMA user_version}), opening and checking it (WAL,
C{synchronous=FULL}), and starting anew from what can be read of a damaged one.  The broker's
store (L{mqttd.plugins.sqlite_store}) and C{mqttd groups} open the file here.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

from mqttd.groupinbox import INBOX_SCHEMA
from mqttd.store import StoreError

SCHEMA_VERSION = 5

# Version 1; a new file is made with it and brought up to date by the same
# MIGRATIONS an old file goes through, so the two never differ.
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

# From version N (the key) to N + 1: statements run one by one in the
# transaction that sets the new user_version (executescript would commit
# that transaction first).  group_changes holds one row, which every writer
# of groups, the broker or mqttd groups, adds one to.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE groups (
            name TEXT PRIMARY KEY,
            by_username INTEGER NOT NULL,
            topic TEXT,
            echo INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE group_members (
            group_name TEXT NOT NULL,
            member TEXT NOT NULL,
            qos INTEGER NOT NULL,
            PRIMARY KEY (group_name, member)
        ) WITHOUT ROWID""",
        "CREATE TABLE group_changes (changes INTEGER NOT NULL)",
        "INSERT INTO group_changes VALUES (0)",
    ),
    # MQTT 5: properties as mqttd.store.dumpProperties' JSON, deadlines on the broker's clock.
    # A session from before has the 3.1.1 meaning of a persistent one: it never expires.
    2: (
        "ALTER TABLE messages ADD COLUMN properties TEXT",
        "ALTER TABLE messages ADD COLUMN expires_at REAL",
        "ALTER TABLE retained ADD COLUMN properties TEXT",
        "ALTER TABLE retained ADD COLUMN expires_at REAL",
        "ALTER TABLE wills ADD COLUMN properties TEXT",
        "ALTER TABLE sessions ADD COLUMN expiry_interval INTEGER NOT NULL DEFAULT 4294967295",
        "ALTER TABLE sessions ADD COLUMN expires_at REAL",
    ),
    # The identity a session belongs to; NULL for a session from before, which the next client
    # to resume it claims (its deliveries still pass that client's receive check).
    3: ("ALTER TABLE sessions ADD COLUMN owner TEXT",),
    # Virtual groups' roles and policies (mqttd.groupinbox.dumpSettings' JSON) and inboxes.
    4: INBOX_SCHEMA,
}


class DamagedStore(StoreError):
    """The store file is damaged: empty, not readable as SQLite, or corrupt."""


def openDatabase(path: str) -> sqlite3.Connection:
    """
    Open (creating if need be) the store at C{path} and check it is one this
    mqttd can use.

    @raise DamagedStore: the file is empty (mqttd never leaves one so), not
        an SQLite database, or corrupt.
    @raise StoreError: the file is not an mqttd store, or has another
        schema version.
    """
    if os.path.isfile(path) and not os.path.getsize(path) and not _walSize(path):
        raise DamagedStore(path, "empty file where an SQLite store was expected")
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(path, f"cannot open the SQLite store: {e}") from None
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables == 0:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = 1; COMMIT;")
            version = 1
        elif version == 0:
            raise StoreError(path, "an SQLite database, but not an mqttd store")
        elif version > SCHEMA_VERSION:
            raise StoreError(
                path,
                f"store schema version {version}; this mqttd reads version {SCHEMA_VERSION}",
            )
        while version < SCHEMA_VERSION:
            # IMMEDIATE, and the version read again inside: a second process opening the file
            # at the same time (mqttd groups beside the broker) must not migrate it twice.
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] == version:
                    for statement in MIGRATIONS[version]:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {version + 1}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise DamagedStore(path, f"corrupt SQLite store: {check}")
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk, not only in the WAL's page cache, before
        # the broker acknowledges what it holds.
        db.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as e:
        db.close()
        raise DamagedStore(path, f"not a usable SQLite store: {e}") from None
    except StoreError:
        db.close()
        raise
    return db


def _walSize(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


# What recoverDatabase copies, parents first; group_changes is the fresh file's own.
_SALVAGED = (
    "messages",
    "sessions",
    "deliveries",
    "awaiting_rel",
    "retained",
    "wills",
    "groups",
    "group_members",
    "group_inbox",
    "group_readers",
)


def recoverDatabase(path: str) -> tuple[sqlite3.Connection, str]:
    """
    Start a new store at C{path} from what can be read of the damaged one,
    which is kept beside it as C{PATH.damaged-TIMESTAMP}.

    @return: the new store's connection and, for the log, what was kept
        and what was dropped.
    """
    kept = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    empty = not os.path.getsize(path) and not _walSize(path)
    shutil.copy2(path, kept)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            if suffix == "-wal":
                shutil.copy2(path + suffix, kept + suffix)
            os.remove(path + suffix)
    os.remove(path)
    db = openDatabase(path)
    if empty:
        return db, f"kept the empty file as {kept}; no records to drop"
    copied: dict[str, int] = {}
    unreadable: list[str] = []
    try:
        db.execute("ATTACH DATABASE ? AS damaged", (kept,))
    except sqlite3.DatabaseError:
        unreadable = list(_SALVAGED)
    else:
        try:
            version = db.execute("PRAGMA damaged.user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            version = None
        for table in _SALVAGED:
            if version != SCHEMA_VERSION:
                # Another version's columns are not this one's: nothing is copied blindly.
                unreadable.append(table)
                continue
            try:
                cursor = db.execute(
                    f"INSERT OR IGNORE INTO main.{table} SELECT * FROM damaged.{table}"
                )
                copied[table] = cursor.rowcount
            except sqlite3.DatabaseError:
                unreadable.append(table)
        db.execute("DETACH DATABASE damaged")
    # What refers to rows that were not read goes too: a restore must not meet a dangling row.
    dangling = 0
    for statement in (
        "DELETE FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)"
        " OR client_id NOT IN (SELECT client_id FROM sessions)",
        "DELETE FROM awaiting_rel WHERE client_id NOT IN (SELECT client_id FROM sessions)",
    ):
        dangling += db.execute(statement).rowcount
    rows = ", ".join(f"{count} {table}" for table, count in copied.items())
    lost = ", ".join(unreadable) if unreadable else "none"
    return db, (
        f"kept the damaged file as {kept}; copied {rows or 'no rows'}; tables that could"
        f" not be read (all their records dropped): {lost}; {dangling} records dropped that"
        " referred to those"
    )
