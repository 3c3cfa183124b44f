"""
The message stores on their own: the memory store (the reference), the SQLite store and the file
store replay the same journal of events to the same state, across a restart with a new store
object on the same file, and refuse damaged files with one line naming them.

Durable stores run their writer thread against the real reactor (the e2e reactor thread); every
store call is made in that thread through L{e2e.in_reactor}.
"""

from __future__ import annotations

import importlib
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface.verify import verifyObject

from mqttd.codec.packets import Will
from mqttd.codec.properties import NO_PROPERTIES, Properties
from mqttd.config import BrokerConfig, ConfigError
from mqttd.interfaces import Group, IGroupStore, IMessageStore, PluginConfigError, PluginContext
from mqttd.message import Message, PropertiedMessage
from mqttd.plugin_loader import buildPlugin, findPlugins
from mqttd.session import WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC
from mqttd.store import MemoryStore, StoredState
from tests import e2e
from tests.redisserver import RedisServer
from tests.test_redisserver import command
from tests.test_twistd import freePort, startTwistd

pytestmark = pytest.mark.usefixtures("twisted_reactor")

Factory = Callable[[Path], Any]


def sqliteStore(path: Path, sync: bool = True) -> Any:
    return findPlugins()["sqlite"].build(
        {"path": "mqttd.db", "durability": "sync" if sync else "batched", "flush_ms": "10"},
        PluginContext(e2e.reactor, str(path), BrokerConfig()),
    )


def fileStore(path: Path, sync: bool = True, compactBytes: int = 1 << 20) -> Any:
    return findPlugins()["file"].build(
        {
            "path": "mqttd.log",
            "durability": "sync" if sync else "batched",
            "flush_ms": "10",
            "compact_bytes": str(compactBytes),
        },
        PluginContext(e2e.reactor, str(path), BrokerConfig()),
    )


# One redis-server for the module, started by the first Redis store a test opens; each test's
# stores keep their keys under a prefix of their own, the same for every store on one path.
_redis: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _redisServer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    _redis["directory"] = tmp_path_factory.mktemp("redis")
    yield
    server = _redis.pop("server", None)
    if server is not None:
        server.stop()


def redisServer() -> RedisServer:
    server = _redis.get("server")
    if server is None:
        server = _redis["server"] = RedisServer(_redis["directory"]).start()
    assert isinstance(server, RedisServer)
    return server


def redisStore(path: Path, sync: bool = True, node: str = "mqttd") -> Any:
    return findPlugins()["redis"].build(
        {
            "url": redisServer().url,
            "prefix": f"t{zlib.crc32(str(path).encode())}:",
            "node": node,
            "durability": "sync" if sync else "batched",
            "flush_ms": "10",
        },
        PluginContext(e2e.reactor, str(path), BrokerConfig()),
    )


DURABLE: dict[str, Factory] = {
    "redis-sync": redisStore,
    "redis-batched": lambda p: redisStore(p, sync=False),
    "sqlite-sync": sqliteStore,
    "sqlite-batched": lambda p: sqliteStore(p, sync=False),
    "file-sync": fileStore,
    "file-batched": lambda p: fileStore(p, sync=False),
    "file-compacting": lambda p: fileStore(p, compactBytes=1),
}


@pytest.fixture(autouse=True)
def _plugins() -> None:
    # Makes mqttd.plugins importable from the checkout, as the broker does.
    findPlugins()


def opened(factory: Factory, path: Path) -> Any:
    return e2e.in_reactor(factory, path)


def closed(store: Any) -> None:
    e2e.in_reactor(lambda: maybeDeferred(store.close))


def killed(store: Any) -> None:
    """
    What the OS does when a broker is killed (SIGKILL): its lock on the store goes with the
    process; the store's file is left as it was, with no close.
    """
    store._lock.release()


def restored(store: Any) -> StoredState:
    state: StoredState = e2e.in_reactor(lambda: maybeDeferred(store.restore))
    return state


def journal(store: Any) -> None:
    """
    Every kind of event, including the awkward ones: a message shared by two sessions, one sent
    from the queue and one sent directly, a QoS 2 delivery released, a session deleted with
    messages queued, wills set and cleared, retained messages replaced and deleted.
    """
    shared = Message("a/b", b"shared", 1)
    direct = Message("a/c", b"\x00binary\xff", 2)
    later = Message("a/d", b"later", 2)
    orphan = Message("x", b"orphan", 1)
    store.sessionSaved("s1", {})
    store.sessionSaved("s1", {"a/#": 2, "x": 1})
    store.sessionSaved("s2", {"a/b": 1})
    store.messageQueued("s1", shared, 1, False)
    store.messageQueued("s2", shared, 1, False)
    store.messageSent("s1", 1, shared, 1, False, True)
    store.messageSent("s1", 2, direct, 2, False, False)
    store.messageReleased("s1", 2)
    store.messageSent("s1", 3, later, 2, True, False)
    store.messageQueued("s1", later, 1, False)
    store.messageSent("s2", 65535, shared, 1, False, True)
    store.messageQueued("s2", direct, 2, False)
    store.messageSent("s2", 1, orphan, 1, False, False)
    store.messageAcknowledged("s2", 1)
    store.qos2Received("s1", 9, 100.5)
    store.qos2Received("s1", 10, 101.0)
    store.qos2Released("s1", 10)
    store.sessionSaved("gone", {"#": 1})
    store.messageQueued("gone", orphan, 1, False)
    store.qos2Received("gone", 1, 1.0)
    store.sessionDeleted("gone")
    store.willSet("s1", Will("wills/s1", b"bye", 1, True))
    store.willSet("clean", Will("wills/clean", b"", 0, False))
    store.willSet("cleared", Will("wills/cleared", b"x", 2, False))
    store.willCleared("cleared")
    store.retainedSet(Message("r/1", b"first", 1, True))
    store.retainedSet(Message("r/1", b"kept", 2, True))
    store.retainedSet(Message("r/2", b"deleted", 0, True))
    store.retainedDeleted("r/2")


def normal(state: StoredState) -> dict[str, Any]:
    """C{state} as plain values, in an order-independent form where order does not matter."""

    def message(m: Message) -> tuple[str, bytes, int]:
        return (m.topic, m.payload, m.qos)

    return {
        "retained": sorted((m.topic, m.payload, m.qos, m.retain) for m in state.retained),
        "sessions": {
            s.clientId: (
                s.subscriptions,
                [(p, message(m), q, r, st) for p, m, q, r, st in s.inflight],
                [(message(m), q, r) for m, q, r in s.pending],
                s.awaitingRel,
                s.nextPacketId,
            )
            for s in state.sessions
        },
        "wills": state.wills,
    }


EXPECTED = {
    "retained": [("r/1", b"kept", 2, True)],
    "sessions": {
        "s1": (
            {"a/#": 2, "x": 1},
            [
                (1, ("a/b", b"shared", 1), 1, False, WAIT_PUBACK),
                (2, ("a/c", b"\x00binary\xff", 2), 2, False, WAIT_PUBCOMP),
                (3, ("a/d", b"later", 2), 2, True, WAIT_PUBREC),
            ],
            [(("a/d", b"later", 2), 1, False)],
            {9: 100.5},
            4,
        ),
        "s2": (
            {"a/b": 1},
            [(65535, ("a/b", b"shared", 1), 1, False, WAIT_PUBACK)],
            [(("a/c", b"\x00binary\xff", 2), 2, False)],
            {},
            1,
        ),
    },
    "wills": {
        "s1": Will("wills/s1", b"bye", 1, True),
        "clean": Will("wills/clean", b"", 0, False),
    },
}


def test_memoryStoreIsTheReference() -> None:
    """
    The memory store, which every durable store must match, restores exactly the journal's
    outcome: subscriptions, in-flight deliveries in send order with their QoS 2 state for re-sending
    with DUP=1 or as PUBREL [MQTT-4.4.0-1], queued QoS 1/2 messages [MQTT-3.1.2-5], inbound QoS 2
    identifiers awaiting PUBREL [MQTT-4.3.3-2], wills and retained messages; a deleted session
    leaves nothing [MQTT-3.1.2-6].
    """
    store = MemoryStore()
    journal(store)
    assert normal(store.restore()) == EXPECTED


@pytest.mark.parametrize("kind", sorted(DURABLE))
def test_roundTrip(kind: str, tmp_path: Path) -> None:
    """
    A durable store given the journal, closed, and opened again as a new object on the same file
    restores what the memory store does; a third opening after more events still agrees, so a
    restored store carries on writing correctly (message ids do not collide).
    """
    factory = DURABLE[kind]
    store = opened(factory, tmp_path)
    assert normal(restored(store)) == normal(StoredState())
    e2e.in_reactor(journal, store)
    closed(store)

    again = opened(factory, tmp_path)
    state = restored(again)
    assert normal(state) == EXPECTED

    def more() -> None:
        fresh = Message("a/e", b"after restart", 1)
        again.messageQueued("s2", fresh, 1, False)
        again.messageAcknowledged("s1", 1)
        again.messageAcknowledged("s2", 65535)

    e2e.in_reactor(more)
    closed(again)
    third = restored(opened(factory, tmp_path))
    s1, s2 = (
        normal(third)["sessions"]["s1"],
        normal(third)["sessions"]["s2"],
    )
    assert [p for p, *_ in s1[1]] == [2, 3]
    assert s2[1] == []
    assert s2[2] == [
        (("a/c", b"\x00binary\xff", 2), 2, False),
        (("a/e", b"after restart", 1), 1, False),
    ]


def journal5(store: Any) -> None:
    """The MQTT 5 state: message, retained and will properties, deadlines, session expiry."""
    properties = Properties(
        payload_format_indicator=1,
        content_type="text/plain",
        response_topic="replies/x",
        correlation_data=b"\x00\xff",
        user_properties=(("b", "1"), ("a", "2"), ("b", "3")),
    )
    message = PropertiedMessage(
        "a/b", b"m", 1, False, replace(properties, message_expiry_interval=60), 1000.0
    )
    bare = PropertiedMessage("a/c", b"e", 2, False, Properties(message_expiry_interval=5), 10.0)
    # QoS, No Local, Retain As Published and Subscription Identifier 300 in one int.
    store.sessionSaved("s5", {"a/#": 1 | 4 | 8 | (300 << 8)})
    store.sessionExpiry("s5", 3600, None)
    store.messageQueued("s5", message, 1, False)
    store.messageSent("s5", 1, bare, 2, False, False)
    store.sessionSaved("offline", {})
    store.sessionExpiry("offline", 60, 1234.5)
    store.sessionSaved("old", {})
    store.retainedSet(message)
    store.willSet("s5", Will("w", b"bye", 1, False, replace(properties, will_delay_interval=30)))


def normal5(state: StoredState) -> dict[str, Any]:
    def message(m: Message) -> tuple[Any, ...]:
        return (m.topic, m.payload, m.properties, m.expiresAt)

    sessions = {s.clientId: s for s in state.sessions}
    s5 = sessions["s5"]
    return {
        "s5": (
            s5.subscriptions,
            s5.expiryInterval,
            s5.expiresAt,
            [message(m) for m, _, _ in s5.pending],
            [message(m) for _, m, _, _, _ in s5.inflight],
        ),
        "expiry": {c: (s.expiryInterval, s.expiresAt) for c, s in sessions.items()},
        "retained": [message(m) for m in state.retained],
        "wills": state.wills,
    }


EXPECTED5 = {
    "s5": (
        {"a/#": 1 | 4 | 8 | (300 << 8)},
        3600,
        None,
        [
            (
                "a/b",
                b"m",
                Properties(
                    payload_format_indicator=1,
                    content_type="text/plain",
                    response_topic="replies/x",
                    correlation_data=b"\x00\xff",
                    user_properties=(("b", "1"), ("a", "2"), ("b", "3")),
                ),
                1060.0,
            )
        ],
        [("a/c", b"e", NO_PROPERTIES, 15.0)],
    ),
    "expiry": {"s5": (3600, None), "offline": (60, 1234.5), "old": (0xFFFFFFFF, None)},
    "retained": [
        (
            "a/b",
            b"m",
            Properties(
                payload_format_indicator=1,
                content_type="text/plain",
                response_topic="replies/x",
                correlation_data=b"\x00\xff",
                user_properties=(("b", "1"), ("a", "2"), ("b", "3")),
            ),
            1060.0,
        )
    ],
    "wills": {
        "s5": Will(
            "w",
            b"bye",
            1,
            False,
            Properties(
                payload_format_indicator=1,
                content_type="text/plain",
                response_topic="replies/x",
                correlation_data=b"\x00\xff",
                user_properties=(("b", "1"), ("a", "2"), ("b", "3")),
                will_delay_interval=30,
            ),
        )
    },
}


@pytest.mark.parametrize("kind", ["memory", *sorted(DURABLE)])
def test_mqtt5RoundTrip(kind: str, tmp_path: Path) -> None:
    """
    Every store keeps what MQTT 5 adds: a message's Payload Format Indicator, Content Type,
    Response Topic, Correlation Data and User Properties in order [MQTT-3.3.2-15 to
    MQTT-3.3.2-18], its expiry as a deadline so the interval forwarded after a restart is what is
    left [MQTT-3.3.2-6], the same for a retained message, a will's properties with its Will Delay
    Interval, a session's Session Expiry Interval and the deadline of an offline one
    [MQTT-3.1.2-23], and subscription options with the Subscription Identifier [MQTT-3.8.3-3].
    """
    if kind == "memory":
        memory = MemoryStore()
        journal5(memory)
        assert normal5(memory.restore()) == EXPECTED5
        return
    factory = DURABLE[kind]
    store = opened(factory, tmp_path)
    e2e.in_reactor(journal5, store)
    closed(store)
    again = opened(factory, tmp_path)
    assert normal5(restored(again)) == EXPECTED5
    closed(again)


def test_providesIMessageStore(tmp_path: Path) -> None:
    """Every store, and what each shipped store plugin builds, provides IMessageStore."""
    assert verifyObject(IMessageStore, MemoryStore())
    for kind, factory in DURABLE.items():
        (tmp_path / kind).mkdir()
        store = opened(factory, tmp_path / kind)
        assert verifyObject(IMessageStore, store)
        closed(store)
    for name in ("sqlite", "file"):
        store = e2e.in_reactor(build, name, {"path": str(tmp_path / f"built-{name}")}, tmp_path)
        assert verifyObject(IMessageStore, store)
        closed(store)


def build(name: str, options: dict[str, str], directory: Path) -> Any:
    context = PluginContext(e2e.reactor, str(directory), BrokerConfig())
    return buildPlugin(name, options, context, file="mqttd.ini", section="store", key="plugin")


def test_fanOutWrittenOnce(tmp_path: Path) -> None:
    """
    A message queued for many persistent sessions is one row of the SQLite store's message
    table, referenced by each session, and goes with its last reference.
    """
    store = opened(sqliteStore, tmp_path)

    def fanOut() -> Deferred[None] | None:
        message = Message("t", b"x" * 100, 1)
        for n in range(50):
            store.sessionSaved(f"c{n}", {"t": 1})
            store.messageQueued(f"c{n}", message, 1, False)
        return store.flush()

    e2e.in_reactor(fanOut)
    db = sqlite3.connect(tmp_path / "mqttd.db")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (50,)

    def acknowledged() -> Deferred[None] | None:
        for n in range(50):
            store.messageSent(f"c{n}", 1, None, 1, False, True)
        for n in range(49):
            store.messageAcknowledged(f"c{n}", 1)
        return store.flush()

    e2e.in_reactor(acknowledged)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    e2e.in_reactor(lambda: store.messageAcknowledged("c49", 1) or store.flush())
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    db.close()
    closed(store)


@pytest.mark.parametrize("kind", ["sqlite-sync", "file-sync"])
def test_syncFlush(kind: str, tmp_path: Path) -> None:
    """
    In sync mode L{IMessageStore.flush} gives a Deferred that fires once the change is on disk: a
    new store opened on the file then (as after a crash) sees it.  With nothing recorded, flush
    returns None so the broker acknowledges at once.
    """
    store = opened(DURABLE[kind], tmp_path)
    assert e2e.in_reactor(store.flush) is None

    def retained() -> Deferred[None]:
        store.retainedSet(Message("r", b"on disk", 1, True))
        d: Deferred[None] = store.flush()
        assert isinstance(d, Deferred)
        return d

    e2e.in_reactor(retained)
    # Not closed: the second store reads what the first has committed, as after SIGKILL.
    killed(store)
    reader = opened(DURABLE[kind], tmp_path)
    assert [m.payload for m in restored(reader).retained] == [b"on disk"]
    closed(reader)
    closed(store)


@pytest.mark.parametrize("kind", ["sqlite-batched", "file-batched"])
def test_batchedFlush(kind: str, tmp_path: Path) -> None:
    """
    In batched mode flush returns None (acknowledgements do not wait) and the change still
    reaches the disk within the flush interval, without a close.
    """
    store = opened(DURABLE[kind], tmp_path)

    def retained() -> object:
        store.retainedSet(Message("r", b"soon", 1, True))
        return store.flush()

    assert e2e.in_reactor(retained) is None

    def onDisk() -> bool:
        if kind.startswith("sqlite"):
            db = sqlite3.connect(tmp_path / "mqttd.db")
            try:
                return db.execute("SELECT count(*) FROM retained").fetchone() == (1,)
            finally:
                db.close()
        return b"soon" in (tmp_path / "mqttd.log").read_bytes()

    e2e.wait_until(onDisk, "the batch to be written")
    closed(store)


def test_fileTornTail(tmp_path: Path) -> None:
    """
    A record cut short by a crash mid-write (bad-inputs entry 25: truncated input) is dropped
    and cut off the log: the state is the journal's up to the last whole record, and events
    written after reopening are read back too.
    """
    store = opened(fileStore, tmp_path)
    e2e.in_reactor(journal, store)
    closed(store)
    log = tmp_path / "mqttd.log"
    whole = log.read_bytes()
    body = b'P\x00\x00\x00\x0a["r/t",1]never finished'
    torn = struct.pack(">II", len(body), zlib.crc32(body)) + body
    for cut in (1, 7, 8, len(torn) - 1):
        log.write_bytes(whole + torn[:cut])
        again = opened(fileStore, tmp_path)
        assert normal(restored(again)) == EXPECTED
        e2e.in_reactor(again.retainedSet, Message("r/after", b"appended", 0, True))
        closed(again)
        reread = opened(fileStore, tmp_path)
        assert {m.topic for m in restored(reread).retained} == {"r/1", "r/after"}
        closed(reread)


def test_fileCorruptMiddle(tmp_path: Path) -> None:
    """
    A damaged record with whole records after it is not a torn tail but corruption: the store
    refuses to open with one line naming the file and the record, rather than silently dropping
    every later change (bad-inputs entry 25).
    """
    store = opened(fileStore, tmp_path)
    e2e.in_reactor(journal, store)
    closed(store)
    log = tmp_path / "mqttd.log"
    data = bytearray(log.read_bytes())
    data[40] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(PluginConfigError) as raised:
        fileStore(tmp_path)
    message = raised.value.why
    assert message.startswith(f"{log}: corrupt log: record ")
    assert "\n" not in message


def test_fileNotALog(tmp_path: Path) -> None:
    """A file that is not an mqttd log, or is one of another format version, is refused."""
    log = tmp_path / "mqttd.log"
    log.write_bytes(b"some other file entirely")
    with pytest.raises(PluginConfigError, match="not an mqttd log file"):
        fileStore(tmp_path)
    log.write_bytes(b"MQTTDLOG\x00\x00\x00\x63")
    with pytest.raises(
        PluginConfigError, match="log format version 99; this mqttd reads versions 1 to 4"
    ):
        fileStore(tmp_path)


def test_fileCompaction(tmp_path: Path) -> None:
    """
    Compaction replaces the log with the live state only: after many delivered and acknowledged
    messages the log is small, and it restores the same state.
    """
    store = opened(lambda p: fileStore(p, compactBytes=4096), tmp_path)

    def traffic() -> Deferred[None] | None:
        store.sessionSaved("s", {"t": 1})
        for n in range(2000):
            store.messageSent("s", n % 100 + 1, Message("t", b"%d" % n * 20, 1), 1, False, False)
            store.messageAcknowledged("s", n % 100 + 1)
        store.messageQueued("s", Message("t", b"still queued", 1), 1, False)
        return store.flush()

    e2e.in_reactor(traffic)
    closed(store)
    assert (tmp_path / "mqttd.log").stat().st_size < 8192
    assert not (tmp_path / "mqttd.log.compacting").exists()
    (session,) = restored(opened(fileStore, tmp_path)).sessions
    assert [m.payload for m, _, _ in session.pending] == [b"still queued"]
    assert session.inflight == []


def test_sqliteNotADatabase(tmp_path: Path) -> None:
    """A store file that is not SQLite (bad-inputs entry 25: garbage input) stops start-up."""
    path = tmp_path / "mqttd.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(PluginConfigError) as raised:
        sqliteStore(tmp_path)
    assert raised.value.why.startswith(f"{path}: not a usable SQLite store: ")


def test_sqliteForeignDatabase(tmp_path: Path) -> None:
    """An SQLite database that mqttd did not create is refused, not written into."""
    db = sqlite3.connect(tmp_path / "mqttd.db")
    db.execute("CREATE TABLE theirs (x)")
    db.commit()
    db.close()
    with pytest.raises(PluginConfigError, match="an SQLite database, but not an mqttd store"):
        sqliteStore(tmp_path)


def test_sqliteSchemaVersion(tmp_path: Path) -> None:
    """A store of a schema version this mqttd does not know is refused, naming both versions."""
    closed(opened(sqliteStore, tmp_path))
    db = sqlite3.connect(tmp_path / "mqttd.db")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    with pytest.raises(
        PluginConfigError, match="store schema version 7; this mqttd reads version 5"
    ):
        sqliteStore(tmp_path)


def test_sqliteMigratesFromVersion1(tmp_path: Path) -> None:
    """
    A version 1 store (before groups) is brought to version 5 through versions 2 to 4 when
    opened: what it held is restored, it has no groups, it takes groups, and its schema is that
    of a new store.
    """
    sqliteSchema: Any = importlib.import_module("mqttd.plugins.sqlite_schema")
    old = sqlite3.connect(tmp_path / "mqttd.db", isolation_level=None)
    old.executescript(
        f"BEGIN; {sqliteSchema.SCHEMA} PRAGMA user_version = 1;"
        " INSERT INTO retained VALUES ('r', x'6b657074', 1); COMMIT;"
    )
    old.close()
    store = opened(sqliteStore, tmp_path)
    assert [(m.topic, m.payload) for m in restored(store).retained] == [("r", b"kept")]
    assert list(store.groupNames()) == []
    e2e.in_reactor(lambda: maybeDeferred(store.save, Group("g", {"a": 1})))
    closed(store)

    def schema(path: Path) -> list[Any]:
        with closing(sqlite3.connect(path)) as db:
            version = db.execute("PRAGMA user_version").fetchall()
            return version + db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()

    (tmp_path / "new").mkdir()
    closed(opened(sqliteStore, tmp_path / "new"))
    assert schema(tmp_path / "mqttd.db") == schema(tmp_path / "new" / "mqttd.db")
    store = opened(sqliteStore, tmp_path)
    assert store.group("g") == Group("g", {"a": 1})
    closed(store)


def test_sqliteMigratesFromVersion2(tmp_path: Path) -> None:
    """
    A version 2 store (before MQTT 5 state) is brought to version 5 when opened: its messages,
    retained messages and wills have no properties and never expire, and its sessions keep the
    3.1.1 meaning of a persistent session, never expiring; new MQTT 5 state is then kept.
    """
    sqliteSchema: Any = importlib.import_module("mqttd.plugins.sqlite_schema")
    old = sqlite3.connect(tmp_path / "mqttd.db", isolation_level=None)
    old.executescript(f"BEGIN; {sqliteSchema.SCHEMA} COMMIT;")
    old.execute("BEGIN")
    for statement in sqliteSchema.MIGRATIONS[1]:
        old.execute(statement)
    old.execute("PRAGMA user_version = 2")
    old.execute("INSERT INTO messages VALUES (1, 'q', x'6d', 1, 0)")
    old.execute("""INSERT INTO sessions VALUES ('s', '{"q": 1}')""")
    old.execute("INSERT INTO deliveries (client_id, message_id, qos, retain) VALUES ('s', 1, 1, 0)")
    old.execute("INSERT INTO retained VALUES ('r', x'6b', 1)")
    old.execute("INSERT INTO wills VALUES ('s', 'w', x'62', 0, 0)")
    old.execute("COMMIT")
    old.close()
    store = opened(sqliteStore, tmp_path)
    state = restored(store)
    ((message, _, _),) = state.sessions[0].pending
    (retained,) = state.retained
    assert [(m.topic, m.properties, m.expiresAt) for m in (message, retained)] == [
        ("q", NO_PROPERTIES, None),
        ("r", NO_PROPERTIES, None),
    ]
    assert (state.sessions[0].expiryInterval, state.sessions[0].expiresAt) == (0xFFFFFFFF, None)
    assert state.wills == {"s": Will("w", b"b", 0, False)}
    e2e.in_reactor(store.sessionExpiry, "s", 10, 5.0)
    closed(store)
    store = opened(sqliteStore, tmp_path)
    assert (restored(store).sessions[0].expiryInterval, restored(store).sessions[0].expiresAt) == (
        10,
        5.0,
    )
    closed(store)


def test_fileMigratesFromFormat1(tmp_path: Path) -> None:
    """
    A format 1 log (before MQTT 5 state) replays as before, without properties and with sessions
    that never expire, and is rewritten in format 3 when opened, keeping new MQTT 5 state.
    """
    fileLog: Any = importlib.import_module("mqttd.plugins.file_log")
    record = fileLog.record
    (tmp_path / "mqttd.log").write_bytes(
        b"MQTTDLOG\x00\x00\x00\x01"
        + record(b"M", [1, "q", 1, False], b"m")
        + record(b"S", ["s", {"q": 1}])
        + record(b"Q", ["s", 1, 1, False])
        + record(b"P", ["r", 1], b"k")
        + record(b"W", ["s", "w", 0, False], b"b")
    )
    store = opened(fileStore, tmp_path)
    state = restored(store)
    ((message, _, _),) = state.sessions[0].pending
    (retained,) = state.retained
    assert [(m.topic, m.properties, m.expiresAt) for m in (message, retained)] == [
        ("q", NO_PROPERTIES, None),
        ("r", NO_PROPERTIES, None),
    ]
    assert (state.sessions[0].expiryInterval, state.sessions[0].expiresAt) == (0xFFFFFFFF, None)
    assert state.wills == {"s": Will("w", b"b", 0, False)}
    assert (tmp_path / "mqttd.log").read_bytes()[:12] == b"MQTTDLOG\x00\x00\x00\x04"
    e2e.in_reactor(store.sessionExpiry, "s", 10, 5.0)
    closed(store)
    session = restored(opened(fileStore, tmp_path)).sessions[0]
    assert (session.expiryInterval, session.expiresAt, len(session.pending)) == (10, 5.0, 1)


@pytest.mark.parametrize("durability", ["sync", "batched"])
def test_sqliteGroupStore(durability: str, tmp_path: Path) -> None:
    """
    The SQLite store is an L{IGroupStore}: saves and deletes answer at once and fire once on
    disk (batched too, long before C{flush_ms}), are in the file for the next store on it, and
    another process's change to the file (C{mqttd groups}) reaches the watchers within the poll
    interval, while the store's own changes do not come back.
    """
    sqliteSchema: Any = importlib.import_module("mqttd.plugins.sqlite_schema")
    sqliteGroups: Any = importlib.import_module("mqttd.plugins.sqlite_groups")
    options = {"durability": durability, "flush_ms": "60000", "group_poll_interval": "0.02"}
    store = e2e.in_reactor(
        lambda: findPlugins()["sqlite"].build(
            options, PluginContext(e2e.reactor, str(tmp_path), BrokerConfig())
        )
    )
    verifyObject(IGroupStore, store)
    changes: list[None] = []
    e2e.in_reactor(store.watch, lambda: changes.append(None))
    friends = Group("friends", {"bob": 2, "carol": 1}, byUsername=True, topic="in/{member}/{rest}")
    e2e.in_reactor(lambda: maybeDeferred(store.save, friends))
    e2e.in_reactor(lambda: maybeDeferred(store.save, Group("gone", {"x": 0}, echo=True)))
    assert store.group("friends") is friends
    e2e.in_reactor(lambda: maybeDeferred(store.delete, "gone"))
    assert store.group("gone") is None
    assert changes == [None, None, None]
    time.sleep(0.1)
    assert changes == [None, None, None]

    with closing(sqliteSchema.openDatabase(str(tmp_path / "mqttd.db"))) as db:
        assert sqliteGroups.readGroups(db) == {"friends": friends}
        sqliteGroups.writeGroups(db, [Group("other", {"dave": 0})], ["friends"])
    e2e.wait_until(lambda: list(store.groupNames()) == ["other"], "the store to read the change")
    assert len(changes) == 4
    closed(store)
    store = opened(sqliteStore, tmp_path)
    assert store.group("other") == Group("other", {"dave": 0})
    closed(store)


@pytest.mark.parametrize("name", ["sqlite", "file"])
def test_pluginOptions(name: str, tmp_path: Path) -> None:
    """
    The store plugins check their options and their file when built, so start-up stops with one
    line naming the configuration file, the plugin's section and key, and the store's file.
    """
    with pytest.raises(ConfigError) as raised:
        build(name, {"durability": "sometimes"}, tmp_path)
    assert str(raised.value) == (
        f"mqttd.ini: [plugin:{name}] durability: expected sync or batched, got 'sometimes'"
    )
    with pytest.raises(ConfigError, match=r"\[plugin:\w+\] flush_ms: expected a positive"):
        build(name, {"flush_ms": "0"}, tmp_path)
    with pytest.raises(ConfigError, match=r"\[plugin:\w+\] colour: unknown key"):
        build(name, {"colour": "blue"}, tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(ConfigError) as raised:
        build(name, {"path": "bad"}, tmp_path)
    assert str(raised.value).startswith(f"mqttd.ini: [plugin:{name}] path: {bad}: ")


# The Redis store


def redisKeys(path: Path, pattern: str) -> int:
    """How many keys of the Redis store on C{path} match C{pattern} (after its prefix)."""
    reply = command(
        redisServer().port,
        "EVAL",
        "return #redis.call('KEYS', ARGV[1])",
        "0",
        f"t{zlib.crc32(str(path).encode())}:{pattern}",
    )
    return int(reply[1:].split(b"\r\n")[0])


def test_redisSyncFlushSurvivesAKilledRedis(tmp_path: Path) -> None:
    """
    In sync mode the Redis store's flush fires once Redis has answered the batch; with
    C{appendfsync always} that is on disk, so what a broker acknowledged after flush is there
    when Redis itself is killed (SIGKILL) and restarted, for a new store object to restore.
    """
    store = opened(redisStore, tmp_path)

    def recorded() -> Deferred[None]:
        store.sessionSaved("s", {"t": 1})
        store.messageQueued("s", Message("t", b"acknowledged", 1), 1, False)
        store.retainedSet(Message("r", b"on disk", 1, True))
        d = store.flush()
        assert isinstance(d, Deferred)
        return d

    e2e.in_reactor(recorded)
    server = redisServer()
    server.stop(kill=True)
    server.start()
    reader = opened(redisStore, tmp_path)
    state = restored(reader)
    assert [m.payload for m in state.retained] == [b"on disk"]
    assert [[m.payload for m, _, _ in s.pending] for s in state.sessions] == [[b"acknowledged"]]
    closed(reader)
    closed(store)


def test_redisStoreRidesOutARedisRestart(tmp_path: Path) -> None:
    """
    Changes recorded while Redis is down (killed with SIGKILL), or on the connection it took
    with it, are written once it is back: the flush waiting for them fires then, and a store
    opened afterwards finds each exactly once and in order.
    """
    store = opened(redisStore, tmp_path)

    def first() -> Deferred[None] | None:
        store.sessionSaved("s", {"t": 1})
        store.messageQueued("s", Message("t", b"before", 1), 1, False)
        return store.flush()

    e2e.in_reactor(first)
    server = redisServer()
    waiting: list[Deferred[None]] = []

    def during() -> None:
        # Killed from the reactor's thread, which has not seen the connection go yet: the
        # batch is written to the lost connection.
        server.stop(kill=True)
        for n in range(3):
            store.messageQueued("s", Message("t", b"during %d" % n, 1), 1, False)
            d = store.flush()
            assert d is not None
            waiting.append(d)

    e2e.in_reactor(during)
    server.start()
    for d in waiting:
        e2e.in_reactor(lambda d=d: d)
    reader = opened(redisStore, tmp_path)
    (session,) = restored(reader).sessions
    assert [m.payload for m, _, _ in session.pending] == [
        b"before",
        b"during 0",
        b"during 1",
        b"during 2",
    ]
    assert redisKeys(tmp_path, "message:*") == 4
    closed(reader)
    closed(store)


def test_redisBatchedFlush(tmp_path: Path) -> None:
    """
    In batched mode the Redis store's flush returns None (acknowledgements do not wait) and the
    change still reaches Redis within the flush interval, without a close.
    """
    store = opened(lambda p: redisStore(p, sync=False), tmp_path)

    def retained() -> object:
        store.retainedSet(Message("r", b"soon", 1, True))
        return store.flush()

    assert e2e.in_reactor(retained) is None
    e2e.wait_until(lambda: redisKeys(tmp_path, "store:retained") == 1, "the batch to be written")
    closed(store)


def test_redisFanOutWrittenOnce(tmp_path: Path) -> None:
    """
    A message queued for many persistent sessions is one Redis key referenced by each session,
    and goes with its last reference.
    """
    store = opened(redisStore, tmp_path)

    message = Message("t", b"x" * 100, 1)

    def fanOut() -> Deferred[None] | None:
        for n in range(50):
            store.sessionSaved(f"c{n}", {"t": 1})
            store.messageQueued(f"c{n}", message, 1, False)
        return store.flush()

    e2e.in_reactor(fanOut)
    assert redisKeys(tmp_path, "message:*") == 1

    def acknowledged() -> Deferred[None] | None:
        for n in range(50):
            store.messageSent(f"c{n}", 1, message, 1, False, True)
        for n in range(49):
            store.messageAcknowledged(f"c{n}", 1)
        return store.flush()

    e2e.in_reactor(acknowledged)
    assert redisKeys(tmp_path, "message:*") == 1
    e2e.in_reactor(lambda: store.messageAcknowledged("c49", 1) or store.flush())
    assert redisKeys(tmp_path, "message:*") == 0
    closed(store)


def test_redisFencedWritesAreRefused(tmp_path: Path) -> None:
    """
    Once another run of a broker (node "b") has claimed a session, the run that held it (node
    "a") can no longer change it: its writes are refused in Redis and reported, while a message
    it still queued for the session is kept in the session's queue (a stray), so that the owner
    delivers what the publisher was told was taken.
    """
    a = opened(lambda p: redisStore(p, node="a"), tmp_path)
    b = opened(lambda p: redisStore(p, node="b"), tmp_path)
    reported: list[tuple[list[str], list[tuple[str, str]]]] = []
    a.fenced = lambda fenced, strays: reported.append((fenced, strays))

    def held() -> Deferred[None] | None:
        a.sessionSaved("s", {"t": 1})
        a.messageQueued("s", Message("t", b"first", 1), 1, False)
        return a.flush()

    e2e.in_reactor(held)
    (claimed,) = e2e.in_reactor(b.claim, ["s"])
    assert [m.payload for m, _, _ in claimed.pending] == [b"first"]

    def lost() -> Deferred[None] | None:
        a.sessionSaved("s", {"other": 2})
        a.messageQueued("s", Message("t", b"stray", 1), 1, False)
        a.messageSent("s", 1, Message("t", b"first", 1), 1, False, True)
        a.sessionDeleted("s")
        return a.flush()

    e2e.in_reactor(lost)
    assert reported == [(["s"], [("s", "b")])]
    state = restored(b)
    (session,) = state.sessions
    assert session.subscriptions == {"t": 1}
    assert session.inflight == []
    assert [m.payload for m, _, _ in session.pending] == [b"first", b"stray"]
    assert restored(a).sessions == []
    closed(a)
    closed(b)


def test_redisStoreProvidesIGroupStore(tmp_path: Path) -> None:
    """
    The Redis store keeps virtual groups too (a cluster's membership): a group saved is
    there at once, fires once Redis has it, and a new store on the same Redis reads it back
    with its roles and policies.
    """
    store = opened(redisStore, tmp_path)
    assert verifyObject(IGroupStore, store)
    restored(store)
    team = Group("team", {"alice": 1, "bob": 2}, owners=frozenset({"alice"}), publish="owners")
    e2e.in_reactor(lambda: store.save(team))
    assert store.group("team") is team
    again = opened(redisStore, tmp_path)
    restored(again)
    assert again.group("team") == team
    e2e.in_reactor(lambda: again.delete("team"))
    third = opened(redisStore, tmp_path)
    restored(third)
    assert list(third.groupNames()) == []
    for s in (store, again, third):
        closed(s)


def test_redisPluginOptions(tmp_path: Path) -> None:
    """
    The Redis store checks its options when built: start-up stops with one line naming the
    configuration file, the plugin's section and the key.
    """
    with pytest.raises(ConfigError) as raised:
        build("redis", {"url": "http://localhost/"}, tmp_path)
    assert str(raised.value) == (
        "mqttd.ini: [plugin:redis] url: expected redis://HOST[:PORT][/DB], got 'http://localhost/'"
    )
    with pytest.raises(ConfigError, match=r"\[plugin:redis\] url: 'redis://h:port'"):
        build("redis", {"url": "redis://h:port"}, tmp_path)
    with pytest.raises(ConfigError, match=r"\[plugin:redis\] node: expected a name"):
        build("redis", {"node": "two words"}, tmp_path)
    with pytest.raises(ConfigError, match=r"\[plugin:redis\] durability: expected sync"):
        build("redis", {"durability": "sometimes"}, tmp_path)


def test_redisStoreUnderTwistd(tmp_path: Path) -> None:
    """
    A broker started by C{twistd mqttd} with C{[store] plugin = redis} (and no cluster) keeps
    a persistent session in Redis: after the broker is killed with SIGKILL and started again,
    the client resumes it (Session Present [MQTT-3.2.2-2]) and gets the QoS 1 message queued
    for it while it was offline [MQTT-3.1.2-5].
    """
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:mqtt]\nendpoint = tcp:{port}:interface=127.0.0.1\nallow_anonymous = true\n"
        f"[store]\nplugin = redis\n[plugin:redis]\nurl = {redisServer().url}\n"
        f"prefix = t{zlib.crc32(str(tmp_path).encode())}:\n"
    )

    process = startTwistd(tmp_path, config, port)
    try:
        sub = e2e.Client(port, "sleeper", clean=False)
        sub.subscribe("news/#", 1)
        sub.disconnect()
        e2e.Client(port, "pub").publish("news/1", b"queued", 1)
        process.kill()
        process.wait()
        process = startTwistd(tmp_path, config, port)
        back = e2e.Client(port, "sleeper", clean=False)
        assert back.session_present
        assert [m.payload for m in back.wait_for(1)] == [b"queued"]
        back.close()
    finally:
        process.kill()
        process.wait()
