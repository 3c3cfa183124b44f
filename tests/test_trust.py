"""
Trust (issue 10): a session belongs to the identity that created it, and what it holds is read
again through the receive ACL when it resumes; one answer for every bad login.

The end-to-end tests run the broker on a real socket with the shipped C{passwordfile} (users
made by C{mosquitto_passwd}) and C{aclfile} plugins, as a new user would set them up, and talk
to it with paho-mqtt, or with a raw socket where a client must hold deliveries unacknowledged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from mqttd.codec import Decoder, encode
from mqttd.codec.packets import Connack, Connect, Puback, Publish, Pubrec, Suback, Subscribe
from mqttd.config import BrokerConfig, ConfigError, ListenerConfig, load_config
from mqttd.interfaces import Credentials, PluginContext
from mqttd.message import Message
from mqttd.plugin_loader import findPlugins, pluginPackage
from mqttd.store import MemoryStore
from tests import e2e
from tests.e2e import MQTTv5, MQTTv311
from tests.harness import World
from tests.redisserver import Start, redis_servers  # noqa: F401 -- a fixture, by name

pluginPackage()
passwordfile: Any = importlib.import_module("mqttd.plugins.passwordfile")
aclfile: Any = importlib.import_module("mqttd.plugins.aclfile")
virtualGroups: Any = importlib.import_module("mqttd.plugins.virtual_groups")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

# The ACL of the issue: alice reads and writes her tree, everyone their own users/NAME tree.
ACL = "user alice\ntopic readwrite alice/#\n\npattern readwrite users/%u/#\n"
PASSWORDS = {"alice": "secret", "bob": "hunter2", "backend": "b4ck", "carol": "c4r0l"}


def mosquittoPasswd(*args: str) -> None:
    assert MOSQUITTO_PASSWD, "mosquitto_passwd missing: apt-get install mosquitto (see .ci/run)"
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True)


@dataclass
class SecureBroker:
    """A broker with passwordfile and aclfile, the files in C{directory}."""

    running: e2e.RunningBroker
    directory: Path
    acl: Any
    clients: list[Any]
    groups: Any = None
    stopped: bool = False

    def stop(self) -> None:
        """Close every client and stop the broker (once)."""
        if self.stopped:
            return
        self.stopped = True
        for c in self.clients:
            c.close()
        if self.groups is not None:
            self.running.call(self.groups.detach)
        self.running.stop()

    @property
    def port(self) -> int:
        return self.running.port

    def client(
        self,
        clientId: str,
        user: str,
        *,
        clean: bool = True,
        protocol: MQTTProtocolVersion = MQTTv311,
        will: e2e.WillSpec | None = None,
    ) -> e2e.Client:
        def setup(p: paho.Client) -> None:
            p.username_pw_set(user, PASSWORDS[user])

        c = e2e.Client(self.port, clientId, clean=clean, protocol=protocol, setup=setup, will=will)
        self.clients.append(c)
        return c

    def reloadACL(self, text: str) -> None:
        """What SIGHUP does for the ACL: the plugin re-reads its file, the broker forgets."""
        (self.directory / "acl").write_text(text)

        def reload() -> None:
            self.acl.reload()
            self.running.broker.authorizationChanged()

        self.running.call(reload)


def startSecureBroker(
    directory: Path,
    groups: dict[str, str] | None = None,
    acl: str = ACL + "user backend\ntopic write #\ntopic write $group/#\ntopic write $p2p/#\n",
    store: str | None = None,
    storeOptions: dict[str, str] | None = None,
    **overrides: Any,
) -> SecureBroker:
    """
    @param groups: the options of a C{virtual_groups} plugin, which is then the selector and
        first in the ACL chain, as C{docs/virtual-groups.md} sets it up.
    @param store: C{"sqlite"} for the broker's SQLite store in C{directory}, else the memory
        store.
    @param storeOptions: the store plugin's options; by default its C{path} in C{directory}.
    """
    passwd = directory / "passwd"
    if not passwd.exists():
        mosquittoPasswd("-c", "-b", str(passwd), "alice", PASSWORDS["alice"])
        for user in ("bob", "backend", "carol"):
            mosquittoPasswd("-b", str(passwd), user, PASSWORDS[user])
    (directory / "acl").write_text(acl)
    context = PluginContext(e2e.reactor, str(directory), BrokerConfig())
    made: dict[str, Any] = {}

    def plugins() -> dict[str, Any]:
        made["acl"] = aclfile.aclfile.build({"file": "acl"}, context)
        extra: dict[str, Any] = {}
        if store is not None:
            extra["store"] = findPlugins()[store].build(
                storeOptions if storeOptions is not None else {"path": "mqttd.db"}, context
            )
        chain = [made["acl"]]
        if groups is not None:
            made["groups"] = virtualGroups.virtualGroups.build(
                {"poll_interval": "0.05", **groups}, context
            )
            extra["selectors"] = (made["groups"],)
            chain.insert(0, made["groups"])
        return {
            "authenticators": [passwordfile.passwordfile.build({"file": "passwd"}, context)],
            "authorizers": chain,
            **extra,
        }

    listener = ListenerConfig("secure", f"tcp:0:interface={e2e.HOST}")
    running = e2e.start_broker(listener=listener, plugins=plugins, **overrides)
    if groups is not None:
        running.call(made["groups"].attach, running.broker)
    return SecureBroker(running, directory, made["acl"], [], made.get("groups"))


@pytest.fixture
def startSecure(twisted_reactor: None, tmp_path: Path) -> Iterator[Any]:
    """C{startSecure(groups=..., acl=..., **brokerOverrides)}: brokers stopped at teardown."""
    started: list[SecureBroker] = []
    e2e.REACTOR.takeErrors()

    def start(**kwargs: Any) -> SecureBroker:
        made = startSecureBroker(tmp_path, **kwargs)
        started.append(made)
        return made

    yield start
    for made in started:
        made.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


@pytest.fixture
def secure(startSecure: Any, request: pytest.FixtureRequest) -> SecureBroker:
    marker = request.node.get_closest_marker("broker_config")
    made: SecureBroker = startSecure(**(dict(marker.kwargs) if marker is not None else {}))
    return made


def connack(
    port: int, clientId: str, user: str | None, password: str | None, protocol: int = 4
) -> tuple[int, bool]:
    """
    The CONNACK return code (3.1.1) or reason code (5.0) and Session Present of one CONNECT,
    read from a raw socket, so that nothing between the wire and the test translates it.
    """
    raw = e2e.RawClient(port)
    try:
        raw.send(
            encode(
                Connect(
                    protocol,
                    clientId,
                    clean_session=False,
                    username=user,
                    password=None if password is None else password.encode(),
                ),
                protocol,
            )
        )
        decoder = Decoder(server=False, protocol_level=5 if protocol == 5 else None)
        raw.sock.settimeout(e2e.TIMEOUT)
        packets: list[Any] = []
        while not packets:
            data = raw.sock.recv(65536)
            assert data, "closed without CONNACK"
            packets = decoder.feed(data)
        answer = packets[0]
        assert isinstance(answer, Connack)
        return answer.return_code, answer.session_present
    finally:
        raw.close()


class RawHolder:
    """
    A client that receives PUBLISHes and never acknowledges them, so that they stay in flight,
    then vanishes (TCP reset) as a crashed device does.
    """

    def __init__(self, port: int, clientId: str, user: str) -> None:
        self.raw = e2e.RawClient(port)
        self.decoder = Decoder(server=False)
        self.raw.send(
            encode(
                Connect(
                    4,
                    clientId,
                    clean_session=False,
                    username=user,
                    password=PASSWORDS[user].encode(),
                )
            )
        )
        (answer,) = self.read(1)
        assert isinstance(answer, Connack) and answer.return_code == 0

    def read(self, n: int) -> list[Any]:
        got: list[Any] = []
        self.raw.sock.settimeout(e2e.TIMEOUT)
        while len(got) < n:
            data = self.raw.sock.recv(65536)
            assert data, f"closed after {got}"
            got.extend(self.decoder.feed(data))
        return got

    def subscribe(self, *filters: str) -> None:
        self.raw.send(encode(Subscribe(1, [(f, 1) for f in filters])))
        (answer,) = self.read(1)
        assert isinstance(answer, Suback) and all(c == 1 for c in answer.return_codes)

    def vanish(self) -> None:
        self.raw.abort()


def quiet(*clients: e2e.Client) -> None:
    """Nothing more arrived for any of C{clients}."""
    time.sleep(0.2)
    for c in clients:
        assert c.pending() == []


def holdFourForAlice(secure: SecureBroker) -> None:
    """
    alice's persistent session ends up with two messages in flight (sent, never acknowledged)
    and two queued behind them (max_inflight is 2), then her connection vanishes.
    """
    holder = RawHolder(secure.port, "alice-phone", "alice")
    holder.subscribe("alice/#")
    backend = secure.client("backend-1", "backend")
    for n in range(4):
        backend.publish(f"alice/private/{n}", b"for alice only %d" % n, qos=1)
    sent = holder.read(2)
    assert [p.topic for p in sent if isinstance(p, Publish)] == [
        "alice/private/0",
        "alice/private/1",
    ]
    holder.vanish()
    secure.running.wait_gone("alice-phone")


# A session has an owner


@pytest.mark.broker_config(max_inflight=2)
@pytest.mark.parametrize(
    ("protocol", "refusal"), [(MQTTv311, 5), (MQTTv5, 0x87)], ids=["3.1.1", "5.0"]
)
def test_bobCannotTakeAlicesSession(
    secure: SecureBroker, protocol: MQTTProtocolVersion, refusal: int
) -> None:
    """
    bob, logged in with his own password and with no right to read C{alice/#}, connects with the
    client id of alice's persistent session, which holds two messages in flight and two queued:
    he is refused (CONNACK 5, at 5.0 0x87) and gets none of them; alice, coming back, gets all
    four, the two in flight again with DUP [MQTT-4.4.0-1].
    """
    holdFourForAlice(secure)
    level = 5 if protocol == MQTTv5 else 4
    assert connack(secure.port, "alice-phone", "bob", PASSWORDS["bob"], level) == (refusal, False)
    alice = secure.client("alice-phone", "alice", clean=False)
    assert alice.session_present is True
    got = alice.wait_for(4)
    assert sorted(m.payload for m in got) == [b"for alice only %d" % n for n in range(4)]
    quiet(alice)


@pytest.mark.broker_config(max_inflight=2, session_owner_conflict="discard")
def test_discardPolicyEndsTheOldSessionAndInheritsNothing(secure: SecureBroker) -> None:
    """
    With C{session_owner_conflict = discard}, bob's CONNECT with alice's client id is accepted
    as a new session (Session Present 0) holding none of her messages, and her session is gone:
    alice coming back, in turn, discards bob's and finds none of her own (Session Present 0).
    """
    holdFourForAlice(secure)
    bob = secure.client("alice-phone", "bob", clean=False)
    assert bob.session_present is False
    quiet(bob)
    bob.disconnect()
    secure.running.wait_gone("alice-phone")
    assert connack(secure.port, "alice-phone", "alice", PASSWORDS["alice"]) == (0, False)


def test_anonymousCannotTakeAUsersSession(tmp_path: Path, twisted_reactor: None) -> None:
    """
    On a listener allowing anonymous clients, an anonymous CONNECT with a user's client id is
    refused too: "no user name" is an identity of its own.
    """
    from tests.harness import World

    world = World()
    alice = world.client()
    alice.send(Connect(4, "alice-phone", clean_session=False, username="alice"))
    assert isinstance(alice.read()[0], Connack)
    alice.drop()
    anonymous = world.client()
    anonymous.send(Connect(4, "alice-phone", clean_session=False))
    (answer,) = anonymous.read()
    assert isinstance(answer, Connack) and answer.return_code == 5
    again = world.client()
    again.send(Connect(4, "alice-phone", clean_session=False, username="alice"))
    (answer,) = again.read()
    assert isinstance(answer, Connack) and (answer.return_code, answer.session_present) == (0, True)


@pytest.mark.parametrize("store", [None, "sqlite", "redis"], ids=["memory", "sqlite", "redis"])
def test_aclReloadWhileOfflineAppliesOnResume(
    startSecure: Any, store: str | None, request: pytest.FixtureRequest
) -> None:
    """
    alice's session holds messages on C{alice/...} (two in flight, two queued) and on
    C{users/alice/...}; while she is offline the ACL is reloaded without her C{alice/#} right.
    On resume only C{users/alice/...} arrives: what she may no longer read is dropped and
    counted, in flight and queued alike, and the subscription itself is gone.  On the SQLite
    and Redis stores, what was dropped stays dropped after a restart.
    """
    options = {"url": _redisURL(request)} if store == "redis" else None
    secure = startSecure(store=store, storeOptions=options, max_inflight=2)
    holder = RawHolder(secure.port, "alice-phone", "alice")
    holder.subscribe("alice/#", "users/alice/#")
    backend = secure.client("backend-1", "backend")
    for n in range(4):
        backend.publish(f"alice/private/{n}", b"revoked %d" % n, qos=1)
    holder.read(2)
    holder.vanish()
    secure.running.wait_gone("alice-phone")
    backend.publish("users/alice/inbox", b"still yours", qos=1)
    dropped = secure.running.call(lambda: secure.running.broker.stats.messagesDropped)
    secure.reloadACL("pattern readwrite users/%u/#\nuser backend\ntopic write #\n")
    alice = secure.client("alice-phone", "alice", clean=False)
    assert alice.session_present is True
    (got,) = alice.wait_for(1)
    assert (got.topic, got.payload) == ("users/alice/inbox", b"still yours")
    quiet(alice)
    assert secure.running.call(lambda: secure.running.broker.stats.messagesDropped) == dropped + 4
    subscriptions = secure.running.call(
        lambda: dict(secure.running.broker.sessions["alice-phone"].subscriptions)
    )
    assert list(subscriptions) == ["users/alice/#"]
    if store is None:
        return
    alice.disconnect()
    secure.stop()
    again = startSecure(store=store, storeOptions=options)
    alice = again.client("alice-phone", "alice", clean=False)
    assert alice.session_present is True
    quiet(alice)


# The owner in every store


def _redisURL(request: pytest.FixtureRequest) -> str:
    """A redis-server started for this test (C{redis_servers}), stopped at its teardown."""
    start: Start = request.getfixturevalue("redis_servers")
    return start().url


def _durable(kind: str, directory: Path, url: str = "") -> Any:
    options = {"path": "mqttd.db" if kind == "sqlite" else "mqttd.log"}
    if kind == "redis":
        options = {"url": url}
    return e2e.in_reactor(
        findPlugins()[kind].build, options, PluginContext(e2e.reactor, str(directory), None)
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "redis"])
def test_everyStoreKeepsTheOwner(
    kind: str, tmp_path: Path, twisted_reactor: None, request: pytest.FixtureRequest
) -> None:
    """
    Every store restores a session's owner (a user, or C{""} for anonymous clients); a session
    told of no owner restores with none.
    """
    from twisted.internet.defer import maybeDeferred

    url = _redisURL(request) if kind == "redis" else ""
    store = MemoryStore() if kind == "memory" else _durable(kind, tmp_path, url)

    def journal() -> None:
        store.sessionSaved("phone", {"a/#": 1})
        store.sessionOwned("phone", "alice")
        store.sessionSaved("sensor", {})
        store.sessionOwned("sensor", "")
        store.sessionSaved("old", {})
        store.messageQueued("phone", Message("a/b", b"x", 1), 1, False)

    e2e.in_reactor(journal)
    if kind != "memory":
        e2e.in_reactor(lambda: maybeDeferred(store.close))
        store = _durable(kind, tmp_path, url)
    state = e2e.in_reactor(lambda: maybeDeferred(store.restore))
    assert {s.clientId: s.owner for s in state.sessions} == {
        "phone": "alice",
        "sensor": "",
        "old": None,
    }
    if kind != "memory":
        e2e.in_reactor(lambda: maybeDeferred(store.close))


def test_sqliteVersion3SessionsHaveNoOwnerUntilClaimed(
    tmp_path: Path, twisted_reactor: None
) -> None:
    """
    A version 3 store (before owners) is migrated to the current version: its sessions restore
    without an owner, and an owner told afterwards is kept.
    """
    from twisted.internet.defer import maybeDeferred

    sqliteSchema: Any = importlib.import_module("mqttd.plugins.sqlite_schema")
    old = sqlite3.connect(tmp_path / "mqttd.db", isolation_level=None)
    old.executescript(f"BEGIN; {sqliteSchema.SCHEMA} COMMIT;")
    old.execute("BEGIN")
    for version in (1, 2):
        for statement in sqliteSchema.MIGRATIONS[version]:
            old.execute(statement)
    old.execute("PRAGMA user_version = 3")
    old.execute("""INSERT INTO sessions (client_id, subscriptions) VALUES ('s', '{"q": 1}')""")
    old.execute("COMMIT")
    old.close()
    store = _durable("sqlite", tmp_path)
    (session,) = e2e.in_reactor(lambda: maybeDeferred(store.restore)).sessions
    assert (session.clientId, session.owner, session.subscriptions) == ("s", None, {"q": 1})
    e2e.in_reactor(store.sessionOwned, "s", "alice")
    e2e.in_reactor(lambda: maybeDeferred(store.close))
    with sqlite3.connect(tmp_path / "mqttd.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (sqliteSchema.SCHEMA_VERSION,)
    store = _durable("sqlite", tmp_path)
    (session,) = e2e.in_reactor(lambda: maybeDeferred(store.restore)).sessions
    assert session.owner == "alice"
    e2e.in_reactor(lambda: maybeDeferred(store.close))


def test_fileFormat2SessionsHaveNoOwnerUntilClaimed(tmp_path: Path, twisted_reactor: None) -> None:
    """
    A format 2 log (before owners) replays with sessions without an owner and is rewritten in
    format 3, which keeps an owner told afterwards.
    """
    from twisted.internet.defer import maybeDeferred

    fileLog: Any = importlib.import_module("mqttd.plugins.file_log")
    (tmp_path / "mqttd.log").write_bytes(
        b"MQTTDLOG\x00\x00\x00\x02" + fileLog.record(b"S", ["s", {"q": 1}])
    )
    store = _durable("file", tmp_path)
    (session,) = e2e.in_reactor(lambda: maybeDeferred(store.restore)).sessions
    assert (session.clientId, session.owner) == ("s", None)
    assert (tmp_path / "mqttd.log").read_bytes()[:12] == b"MQTTDLOG\x00\x00\x00\x04"
    e2e.in_reactor(store.sessionOwned, "s", "alice")
    e2e.in_reactor(lambda: maybeDeferred(store.close))
    store = _durable("file", tmp_path)
    (session,) = e2e.in_reactor(lambda: maybeDeferred(store.restore)).sessions
    assert session.owner == "alice"
    e2e.in_reactor(lambda: maybeDeferred(store.close))


def test_restoredSessionWithoutOwnerIsClaimedByTheFirstClient() -> None:
    """
    A session restored without an owner (from a store before owners) belongs to the first
    identity that resumes it, which the store is told; another identity is then refused.
    """
    from tests.harness import World

    store = MemoryStore()
    store.sessionSaved("phone", {})
    world = World(store=store)
    alice = world.client()
    alice.send(Connect(4, "phone", clean_session=False, username="alice"))
    (answer,) = alice.read()
    assert isinstance(answer, Connack) and (answer.return_code, answer.session_present) == (0, True)
    assert store.sessions["phone"].owner == "alice"
    alice.drop()
    bob = world.client()
    bob.send(Connect(4, "phone", clean_session=False, username="bob"))
    (answer,) = bob.read()
    assert isinstance(answer, Connack) and answer.return_code == 5


# Client ids from identities, per listener


def test_usernameAsClientId(secure: SecureBroker, twisted_reactor: None) -> None:
    """
    On a listener with C{use_username_as_clientid = true} (mosquitto's), the session is the
    user's, whatever client id the CONNECT names: alice's two devices share one session, the
    second taking it over; a CONNECT without a user name is refused (CONNACK 5).
    """
    context = PluginContext(e2e.reactor, str(secure.directory), BrokerConfig())

    def plugins() -> dict[str, Any]:
        return {
            "authenticators": [passwordfile.passwordfile.build({"file": "passwd"}, context)],
        }

    listener = ListenerConfig(
        "byname", f"tcp:0:interface={e2e.HOST}", use_username_as_clientid=True
    )
    running = e2e.start_broker(listener=listener, plugins=plugins)
    try:

        def setup(p: paho.Client) -> None:
            p.username_pw_set("alice", PASSWORDS["alice"])

        first = e2e.Client(running.port, "phone", clean=False, setup=setup)
        first.subscribe("news", 1)
        assert running.call(lambda: sorted(running.broker.sessions)) == ["alice"]
        second = e2e.Client(running.port, "laptop", clean=False, setup=setup)
        assert second.session_present is True
        first.disconnected.wait(e2e.TIMEOUT)
        assert first.disconnected.is_set()
        second.close()
        first.close()
        raw = e2e.RawClient(running.port)
        raw.send(e2e.connect_packet("anonymous"))
        assert raw.wait_closed() == b"\x20\x02\x00\x05"
        raw.close()
    finally:
        running.stop()


def test_identityAsClientId(pki: Any, listen: Any) -> None:
    """
    On a mutual-TLS listener with C{identity = cn} and C{use_identity_as_clientid = true}, the
    client id is the certificate's common name, whatever the CONNECT says.
    """
    from tests.test_tls import mutualListener, pahoTLS

    started = listen(mutualListener(pki, use_identity_as_clientid=True))
    c = e2e.Client(started.port, "anything", setup=pahoTLS(pki, pki.client))
    try:
        assert started.broker.call(lambda: sorted(started.broker.broker.sessions)) == ["alice"]
    finally:
        c.close()


@pytest.mark.parametrize(
    ("body", "key", "why"),
    [
        ("use_identity_as_clientid = true\n", "use_identity_as_clientid", "needs identity"),
        ("use_username_as_clientid = maybe\n", "use_username_as_clientid", "true or false"),
    ],
)
def test_clientIdKeysChecked(tmp_path: Path, body: str, key: str, why: str) -> None:
    """A clientid key that cannot work stops start-up with one line naming its key."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text(f"[listener:l]\nendpoint = tcp:1883\n{body}")
    with pytest.raises(ConfigError) as info:
        load_config(str(ini))
    assert (info.value.section, info.value.key) == ("listener:l", key)
    assert why in info.value.why


def test_sessionOwnerConflictChecked(tmp_path: Path) -> None:
    """C{[broker] session_owner_conflict} is refuse or discard; anything else names the key."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text("[broker]\nsession_owner_conflict = allow\n[listener:l]\nendpoint = tcp:1883\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(ini))
    assert (info.value.section, info.value.key) == ("broker", "session_owner_conflict")
    ini.write_text(
        "[broker]\nsession_owner_conflict = discard\n[listener:l]\nendpoint = tcp:1883\n"
    )
    assert load_config(str(ini)).broker.session_owner_conflict == "discard"


# One answer for a bad login


def pahoConnack(port: int, user: str, password: str, protocol: MQTTProtocolVersion) -> int:
    """The CONNACK code paho-mqtt reports for one login (paho 2 reports 3.1.1 codes as 5.0's)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, "login", protocol=protocol)
    client.username_pw_set(user, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(int(rc.value))
    client.connect(e2e.HOST, port)
    client.loop_start()
    try:
        e2e.wait_until(lambda: bool(codes), "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def test_badLoginsLookTheSame(secure: SecureBroker) -> None:
    """
    A wrong password for an existing user and any password for an unknown user get the same
    CONNACK, byte for byte: 5 (not authorized) at 3.1.1 and 0x86 (bad user name or password) at
    5.0 [MQTT-3.2.2-6, MQTT-3.2.2-8]; paho-mqtt sees one answer for both.
    """
    wrong = ("alice", "not her password")
    unknown = ("mallory", "secret")
    for level, expected in ((4, (5, False)), (5, (0x86, False))):
        assert connack(secure.port, "x", *wrong, level) == expected
        assert connack(secure.port, "x", *unknown, level) == expected
    for protocol in (MQTTv311, MQTTv5):
        assert pahoConnack(secure.port, *wrong, protocol) == pahoConnack(
            secure.port, *unknown, protocol
        )
    # A good login still works, at either level.
    assert connack(secure.port, "x", "alice", PASSWORDS["alice"], 5) == (0, False)


def test_unknownUserCostsWhatAWrongPasswordDoes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    passwordfile hashes an unknown user's password as it hashes a known user's, against a dummy
    entry of the file's hash form (iterations, salt and digest length), so response time does
    not reveal which user names exist.
    """
    mosquittoPasswd("-c", "-b", str(tmp_path / "passwd"), "alice", "secret")
    plugin = passwordfile.PasswordFileAuthenticator(str(tmp_path / "passwd"))
    calls: list[tuple[Any, ...]] = []
    real = hashlib.pbkdf2_hmac

    def counted(name: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
        calls.append((name, len(salt), iterations, length))
        return real(name, password, salt, iterations, length)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)

    def work(user: str) -> list[tuple[Any, ...]]:
        calls.clear()
        plugin.authenticate(Credentials("c", user, b"guess", None, "127.0.0.1", "l"))
        return list(calls)

    known = work("alice")
    assert len(known) == 1
    assert work("mallory") == known


# Server namespaces are the server's

# The ACL docs/virtual-groups.md recommended before: it let anyone read every group.
OLD_DOC_ACL = (
    "user backend\ntopic write $group/#\ntopic write $p2p/#\n\n"
    "pattern read $group/#\npattern read $p2p/#\npattern read inbox/%c/#\npattern write $p2p/#\n"
    "pattern readwrite users/%u/#\n"
)


@pytest.mark.parametrize(
    ("protocol", "refused"), [(MQTTv311, 0x80), (MQTTv5, 0x87)], ids=["3.1.1", "5.0"]
)
def test_nonMemberCannotReadGroupsOrDirectMessages(
    startSecure: Any, protocol: MQTTProtocolVersion, refused: int
) -> None:
    """
    Even with an ACL granting read on C{$group/#} and C{$p2p/#} (the one the document used to
    recommend), bob, who is no member of alice's family group, cannot subscribe to its topic,
    to alice's direct messages, to the control topics or through a shared subscription: SUBACK
    0x80 (0x87 at 5.0) [MQTT-3.9.3-2]; and he receives none of what is sent there, while the
    members do.
    """
    secure = startSecure(
        groups={"group.family": "alice, carol", "group.family.by": "username", "control": "true"},
        acl=OLD_DOC_ACL,
    )
    bob = secure.client("bob-1", "bob", protocol=protocol)
    for topicFilter in (
        "$group/family/#",
        "$group/#",
        "$p2p/alice-1/#",
        "$p2p/#",
        "$CONTROL/#",
        "$share/spy/$group/family/#",
    ):
        assert bob.subscribe(topicFilter, 1) == refused, topicFilter
    alice = secure.client("alice-1", "alice")
    carol = secure.client("carol", "carol")
    backend = secure.client("backend-1", "backend")
    backend.publish("$group/family/dinner", b"at eight", qos=1)
    backend.publish("$p2p/alice-1/secret", b"for alice", qos=1)
    assert [m.payload for m in carol.wait_for(1)] == [b"at eight"]
    assert sorted(m.payload for m in alice.wait_for(2)) == [b"at eight", b"for alice"]
    quiet(bob, alice, carol)


def test_controlReplyOnlyWhereTheCallerMayPublish(startSecure: Any) -> None:
    """
    A control request naming C{$SYS/x}, another user's inbox or a group topic as its response
    topic gets no reply there (nothing is published); naming a topic the caller may publish to
    itself, it is answered there.
    """
    acl = ACL + "user alice\ntopic write $CONTROL/mqttd/groups/#\n\npattern read $SYS/#\n"
    secure = startSecure(
        groups={"group.family": "alice, bob", "group.family.by": "username", "control": "true"},
        acl=acl,
    )
    bob = secure.client("bob-1", "bob")
    assert bob.subscribe("users/bob/#", 1) == 1
    watcher = secure.client("bob-2", "bob")
    assert watcher.subscribe("$SYS/#", 0) == 0
    alice = secure.client("alice-1", "alice")
    assert alice.subscribe("users/alice/#", 1) == 1
    for responseTopic in ("$SYS/x", "users/bob/inbox", "$group/family/x", "users/alice/replies"):
        body = {"group": "family", "response_topic": responseTopic, "correlation": responseTopic}
        alice.publish("$CONTROL/mqttd/groups/list", json.dumps(body).encode(), qos=1)
    (reply,) = alice.wait_for(1)
    assert reply.topic == "users/alice/replies"
    answer = json.loads(reply.payload)
    assert (answer["ok"], answer["correlation"]) == (True, "users/alice/replies")
    quiet(alice, bob, watcher)


def test_controlReplyTopicMustBeATopicName(startSecure: Any) -> None:
    """
    A control request whose JSON C{response_topic} is no topic name (a C{#} or C{+}, U+0000,
    more than 128 levels) is refused: nothing is published on it, though the caller may write
    there and subscribes to it, and the request does not act (carol is still in alpha); with a
    valid one it is answered [MQTT-3.3.2-2, MQTT-1.5.4-2].
    """
    secure = startSecure(groups=ROLES, acl=ROLES_ACL)
    carol = secure.client("carol-1", "carol")
    assert carol.subscribe("users/carol/#", 1) == 1
    deep = "users/carol/" + "/".join("x" * 130)
    for responseTopic in ("users/carol/#", "users/carol/+/r", "users/carol/a\0b", deep):
        body = {"group": "alpha", "response_topic": responseTopic}
        carol.publish("$CONTROL/mqttd/groups/leave", json.dumps(body).encode(), qos=1)
    body = {"response_topic": "users/carol/replies"}
    carol.publish("$CONTROL/mqttd/groups/mine", json.dumps(body).encode(), qos=1)
    (reply,) = carol.wait_for(1)
    assert reply.topic == "users/carol/replies"
    assert [g["group"] for g in json.loads(reply.payload)["groups"]] == ["alpha"]
    quiet(carol)


def test_willOnSysIsNotRetained(clients: Any, e2e_broker: e2e.RunningBroker) -> None:
    """
    On a broker without an ACL, a client whose will would plant a retained
    C{$SYS/broker/version} loses its connection: the will is never published, so nothing is
    retained there and a later C{$SYS/#} subscriber gets nothing [MQTT-4.7.2-1]: C{$} topics
    are the server's.
    """
    will = e2e.WillSpec("$SYS/broker/version", b"mqttd 0.0-pwned", qos=1, retain=True)
    liar = clients("liar", will=will)
    liar.drop()
    e2e_broker.wait_gone("liar")
    assert e2e_broker.call(lambda: len(e2e_broker.broker.retained)) == 0
    reader = clients("reader")
    assert reader.subscribe("$SYS/#", 0) == 0
    quiet(reader)


def test_willNeverSpeaksInAGroup(startSecure: Any) -> None:
    """
    A will on a group topic, from a client the ACL lets publish there (the document's old ACL),
    is not published when its connection is lost: the members get nothing in its name.
    """
    secure = startSecure(
        groups={"group.family": "alice", "group.family.by": "username"}, acl=OLD_DOC_ACL
    )
    alice = secure.client("alice-1", "alice")
    will = e2e.WillSpec("$group/family/gone", b"backend died", qos=1)
    backend = secure.client("backend-1", "backend", will=will)
    backend.drop()
    secure.running.wait_gone("backend-1")
    quiet(alice)


def test_retainedNeverKeptOnServerTopics(startSecure: Any) -> None:
    """
    A retained PUBLISH to a group topic reaches the members, but nothing is retained under the
    server's topics (and nothing under C{$SYS}, which clients cannot write).
    """
    secure = startSecure(groups={"group.family": "alice", "group.family.by": "username"})
    alice = secure.client("alice-1", "alice")
    backend = secure.client("backend-1", "backend")
    backend.publish("$group/family/news", b"kept?", qos=1, retain=True)
    backend.publish("$SYS/broker/version", b"fake", qos=1, retain=True)
    assert [(m.payload, m.retain) for m in alice.wait_for(1)] == [(b"kept?", False)]
    assert secure.running.call(lambda: len(secure.running.broker.retained)) == 0


# Receipts


def pubackCodes(c: e2e.Client, *publishes: tuple[str, int]) -> list[int]:
    """The reason codes of the PUBACK / PUBREC answering each QoS 1 or 2 publish, in order."""
    codes: dict[int, int] = {}

    def published(client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        codes[mid] = int(rc.value)

    c.paho.on_publish = published
    mids = [c.publish(topic, b"x", qos=qos).mid for topic, qos in publishes]
    e2e.wait_until(lambda: all(m in codes for m in mids), "acknowledgements")
    return [codes[m] for m in mids]


def test_receiptNoMatchingSubscribers(startSecure: Any) -> None:
    """
    An MQTT 5 publish that reaches nobody is acknowledged with 0x10 (No matching subscribers),
    at QoS 1 in PUBACK and at QoS 2 in PUBREC (the flow then completes) [MQTT-3.4.2-1]: no
    subscriber, an empty group, an unknown group, a direct message to a client id without a
    session.  One that matched a subscriber or a group member gets 0x00; a 3.1.1 client is
    never told.
    """
    secure = startSecure(groups={"group.family": "carol", "group.empty": ""})
    secure.client("carol", "carol")
    listener = secure.client("alice-1", "alice")
    assert listener.subscribe("alice/#", 1) == 1
    backend = secure.client("backend-1", "backend", protocol=MQTTv5)
    assert pubackCodes(
        backend,
        ("nobody/listens", 1),
        ("$group/empty/x", 1),
        ("$group/nosuch/x", 1),
        ("$p2p/nobody/x", 1),
        ("alice/x", 1),
        ("$group/family/x", 1),
        ("$p2p/carol/x", 1),
    ) == [0x10, 0x10, 0x10, 0x10, 0, 0, 0]
    old = secure.client("backend-2", "backend")
    assert pubackCodes(old, ("nobody/listens", 1)) == [0]
    # paho reports PUBCOMP's code for QoS 2, so PUBREC is read off a raw socket.
    raw = e2e.RawClient(secure.port)
    decoder = Decoder(server=False, protocol_level=5)
    raw.send(encode(Connect(5, "raw5", username="backend", password=b"b4ck"), 5))
    for packetId, topic in ((1, "nobody/listens"), (2, "alice/y")):
        raw.send(encode(Publish(topic, b"x", 2, packet_id=packetId), 5))
    got: list[Any] = []
    raw.sock.settimeout(e2e.TIMEOUT)
    while len(got) < 3:
        got.extend(decoder.feed(raw.sock.recv(65536)))
    raw.close()
    assert [(p.packet_id, p.reason_code) for p in got if isinstance(p, Pubrec)] == [
        (1, 0x10),
        (2, 0),
    ]


def test_publishToSysRefusedNotAuthorized() -> None:
    """
    A client's QoS 1 or 2 PUBLISH to C{$SYS/...} is dropped; an MQTT 5 client is told so with
    0x87 (Not authorized) in PUBACK and PUBREC, as mosquitto answers, and its packet identifier
    is free again [MQTT-4.3.3-9]; a 3.1.1 client gets a plain PUBACK (it has no reason codes).
    """
    world = World()
    five = world.connect("five", level=5)
    five.send(Publish("$SYS/broker/x", b"1", 1, packet_id=1))
    five.send(Publish("$SYS/broker/x", b"2", 2, packet_id=2))
    five.send(Publish("$SYS/broker/x", b"3", 2, packet_id=2))
    acks: list[Any] = [
        (type(p).__name__, p.packet_id, p.reason_code)
        for p in five.read()
        if isinstance(p, (Puback, Pubrec))
    ]
    assert acks == [("Puback", 1, 0x87), ("Pubrec", 2, 0x87), ("Pubrec", 2, 0x87)]
    old = world.connect("old")
    old.send(Publish("$SYS/broker/x", b"1", 1, packet_id=1))
    (ack,) = old.read()
    assert isinstance(ack, Puback) and ack.packet_id == 1
    assert world.broker.stats.messagesDropped == 4


# Group roles

ROLES_ACL = ACL + "pattern write $CONTROL/mqttd/groups/#\nuser backend\ntopic write $group/#\n"
ROLES = {
    "control": "true",
    "admins": "backend",
    "group.alpha": "alice, carol",
    "group.alpha.by": "username",
    "group.alpha.owners": "alice",
    "group.beta": "bob",
    "group.beta.by": "username",
    "group.beta.owners": "bob",
}


def ask(c: e2e.Client, action: str, **body: Any) -> Any:
    """A control request from C{c} (client id USER-N), answered on C{users/USER/replies}."""
    user = c.client_id.partition("-")[0]
    body["response_topic"] = f"users/{user}/replies"
    c.publish(f"$CONTROL/mqttd/groups/{action}", json.dumps(body).encode(), qos=1)
    (answer,) = c.wait_for(1)
    assert answer.topic == f"users/{user}/replies"
    return json.loads(answer.payload)


def member(secure: SecureBroker, clientId: str, user: str) -> e2e.Client:
    """A client of C{user} that takes its control replies."""
    c = secure.client(clientId, user)
    assert c.subscribe(f"users/{user}/replies", 1) == 1
    return c


def test_ownerManagesHerGroupAndNotAnother(startSecure: Any) -> None:
    """
    alice owns group alpha and is no member of beta: she adds bob to alpha (who then receives
    it) and removes him again; she can neither add to, remove from, list nor delete beta, nor
    create or delete groups (operators do), and bob, a plain member of alpha for a while, cannot
    manage it.  The administrator (an identity in C{admins}) can do all of it.
    """
    secure = startSecure(groups=ROLES, acl=ROLES_ACL)
    alice = member(secure, "alice-1", "alice")
    bob = member(secure, "bob-1", "bob")
    backend = member(secure, "backend-1", "backend")
    added = ask(alice, "add", group="alpha", members=["bob"])
    assert (added["ok"], added["members"]) == (True, {"alice": 2, "bob": 2, "carol": 2})
    assert ask(bob, "add", group="alpha", members=["mallory"])["ok"] is False
    backend.publish("$group/alpha/x", b"hello alpha", qos=1)
    assert [m.payload for m in bob.wait_for(1)] == [b"hello alpha"]
    assert [m.payload for m in alice.wait_for(1)] == [b"hello alpha"]
    for action, body in (
        ("add", {"group": "beta", "members": ["alice"]}),
        ("remove", {"group": "beta", "members": ["bob"]}),
        ("list", {"group": "beta"}),
        ("delete", {"group": "beta"}),
        ("delete", {"group": "alpha"}),
        ("create", {"group": "gamma", "members": ["alice"]}),
        ("list", {}),
    ):
        answer = ask(alice, action, **body)
        assert answer["ok"] is False, (action, body, answer)
    assert secure.running.call(lambda: secure.groups.find("beta").members) == {"bob": 2}
    assert ask(alice, "remove", group="alpha", members=["bob"])["ok"]
    assert ask(backend, "create", group="gamma", members=["alice"], by="username")["ok"]
    assert ask(backend, "list") == {"ok": True, "groups": ["alpha", "beta", "gamma"]}
    assert ask(backend, "delete", group="beta")["ok"]
    quiet(alice, bob)


def test_memberLeavesAndAsksForItsGroupsInOneRequest(startSecure: Any) -> None:
    """
    carol asks which groups she is in (one request, with her role in each), leaves alpha, and
    gets nothing sent to it afterwards; leaving a group she is not in is refused.
    """
    secure = startSecure(groups=ROLES, acl=ROLES_ACL)
    alice = member(secure, "alice-1", "alice")
    carol = member(secure, "carol-1", "carol")
    backend = member(secure, "backend-1", "backend")
    assert ask(alice, "mine") == {
        "ok": True,
        "groups": [{"group": "alpha", "role": "owner", "publish": "members"}],
    }
    assert ask(carol, "mine")["groups"] == [
        {"group": "alpha", "role": "member", "publish": "members"}
    ]
    assert ask(carol, "leave", group="beta")["ok"] is False
    left = ask(carol, "leave", group="alpha")
    assert (left["ok"], left["members"]) == (True, {"alice": 2})
    assert ask(carol, "mine")["groups"] == []
    backend.publish("$group/alpha/x", b"after carol left", qos=1)
    assert [m.payload for m in alice.wait_for(1)] == [b"after carol left"]
    quiet(carol)


def test_announcementChannelOwnersOnly(startSecure: Any) -> None:
    """
    A group with C{publish = owners} is an announcement channel: its owner's messages reach the
    members; a member's, and even a backend's the ACL lets write C{$group/#}, reach nobody.
    """
    groups = {
        **ROLES,
        "group.news": "alice, bob, carol",
        "group.news.by": "username",
        "group.news.owners": "alice",
        "group.news.publish": "owners",
    }
    secure = startSecure(groups=groups, acl=ROLES_ACL)
    alice = secure.client("alice-1", "alice")
    bob = secure.client("bob-1", "bob")
    carol = secure.client("carol-1", "carol")
    backend = secure.client("backend-1", "backend")
    bob.publish("$group/news/x", b"from a member", qos=1)
    backend.publish("$group/news/x", b"from the backend", qos=1)
    alice.publish("$group/news/x", b"from the owner", qos=1)
    assert [m.payload for m in bob.wait_for(1)] == [b"from the owner"]
    assert [m.payload for m in carol.wait_for(1)] == [b"from the owner"]
    quiet(alice, bob, carol)


def test_membershipEvents(startSecure: Any) -> None:
    """
    A group with C{events = true} tells its members who joined and left, on
    C{$group/NAME/$membership} with a JSON body; no client may publish there itself.
    """
    groups = {**ROLES, "group.alpha.events": "true"}
    secure = startSecure(groups=groups, acl=ROLES_ACL)
    alice = member(secure, "alice-1", "alice")
    bob = member(secure, "bob-1", "bob")

    def request(c: e2e.Client, action: str, **body: Any) -> list[Any]:
        # The event (to the group) and the answer (to the caller) may come in either order.
        user = "alice" if c is alice else "bob"
        body["response_topic"] = f"users/{user}/replies"
        c.publish(f"$CONTROL/mqttd/groups/{action}", json.dumps(body).encode(), qos=1)
        return sorted(((m.topic, json.loads(m.payload)) for m in c.wait_for(2)), key=str)

    joined = {"event": "joined", "group": "alpha", "member": "bob"}
    (event, answer) = request(alice, "add", group="alpha", members=["bob"])
    assert event == ("$group/alpha/$membership", joined)
    assert answer[0] == "users/alice/replies" and answer[1]["ok"]
    assert [json.loads(m.payload) for m in bob.wait_for(1)] == [joined]
    (answer,) = [ask(bob, "leave", group="alpha")]
    assert answer["ok"]
    (left,) = alice.wait_for(1)
    assert json.loads(left.payload) == {"event": "left", "group": "alpha", "member": "bob"}
    alice.publish("$group/alpha/$membership", b'{"event": "joined", "member": "fake"}', qos=1)
    quiet(alice, bob)


# Inboxes

INBOX = {
    "group.chat": "alice, bob, carol",
    "group.chat.by": "username",
    "group.chat.inbox": "true",
}


def test_neverConnectedMemberReceivesTheInboxOnFirstConnect(startSecure: Any) -> None:
    """
    bob has never connected when alice writes to their group chat, which keeps an inbox; his
    first connection, with a clean session, receives the three messages in order, and after he
    was away again, only what came meanwhile.  carol, connected all along, got each once.
    """
    secure = startSecure(groups=INBOX)
    alice = secure.client("alice-1", "alice")
    carol = secure.client("carol-1", "carol")
    for n in range(3):
        alice.publish("$group/chat/room", b"first %d" % n, qos=1)
    bob = secure.client("bob-phone", "bob")
    assert [m.payload for m in bob.wait_for(3)] == [b"first %d" % n for n in range(3)]
    bob.disconnect()
    secure.running.wait_gone("bob-phone")
    for n in range(2):
        alice.publish("$group/chat/room", b"while away %d" % n, qos=1)
    bob = secure.client("bob-phone", "bob")
    got = bob.wait_for(2)
    assert [(m.topic, m.payload) for m in got] == [
        ("$group/chat/room", b"while away 0"),
        ("$group/chat/room", b"while away 1"),
    ]
    assert len(carol.wait_for(5)) == 5
    quiet(alice, bob, carol)


def test_inboxLimitsDropCountedAndLogged(startSecure: Any) -> None:
    """
    The inbox keeps the last C{inbox_max_messages}: bob, away for five messages, gets the last
    three, and the two he never gets are counted as dropped, by the plugin and in the broker's
    dropped messages (the warning logged with them is not checked here).
    """
    secure = startSecure(groups={**INBOX, "inbox_max_messages": "3"})
    alice = secure.client("alice-1", "alice")
    for n in range(5):
        alice.publish("$group/chat/room", b"%d" % n, qos=1)
    before = secure.running.call(lambda: secure.running.broker.stats.messagesDropped)
    bob = secure.client("bob-1", "bob")
    assert [m.payload for m in bob.wait_for(3)] == [b"2", b"3", b"4"]
    quiet(bob)
    assert secure.running.call(lambda: secure.groups.dropped) == 2
    after = secure.running.call(lambda: secure.running.broker.stats.messagesDropped)
    assert after - before == 2


def test_inboxAgeLimit(startSecure: Any) -> None:
    """Messages older than C{inbox_max_age} are not handed out, and are counted as dropped."""
    secure = startSecure(groups={**INBOX, "inbox_max_age": "0.3"})
    alice = secure.client("alice-1", "alice")
    alice.publish("$group/chat/room", b"stale", qos=1)
    time.sleep(0.5)
    alice.publish("$group/chat/room", b"fresh", qos=1)
    bob = secure.client("bob-1", "bob")
    assert [m.payload for m in bob.wait_for(1)] == [b"fresh"]
    quiet(bob)
    assert secure.running.call(lambda: secure.groups.dropped) == 1


def test_newMemberGetsTheLastN(startSecure: Any) -> None:
    """
    With C{history = 2}, a member added later is given the group's last two messages: at once
    if connected, else on its first connect; an earlier member who was there all along is
    given nothing more.
    """
    groups = {
        **ROLES,
        "group.alpha.inbox": "true",
        "group.alpha.history": "2",
    }
    secure = startSecure(groups=groups, acl=ROLES_ACL)
    alice = member(secure, "alice-1", "alice")
    bob = member(secure, "bob-1", "bob")
    for n in range(4):
        alice.publish("$group/alpha/x", b"%d" % n, qos=1)
    assert ask(alice, "add", group="alpha", members=["bob", "backend"])["ok"]
    assert [m.payload for m in bob.wait_for(2)] == [b"2", b"3"]
    backend = secure.client("backend-1", "backend")
    assert [m.payload for m in backend.wait_for(2)] == [b"2", b"3"]
    quiet(alice, bob, backend)


def test_inboxSurvivesARestart(startSecure: Any) -> None:
    """
    The inbox is in the store (here the plugin's own groups file): a broker restarted on it
    hands bob what was written to the group before the restart.
    """
    first = startSecure(groups=INBOX)
    alice = first.client("alice-1", "alice")
    alice.publish("$group/chat/room", b"before the restart", qos=1)
    alice.close()
    first.stop()
    second = startSecure(groups=INBOX)
    bob = second.client("bob-1", "bob")
    assert [m.payload for m in bob.wait_for(1)] == [b"before the restart"]


# Inboxes and group settings in both group stores


def _groupStore(kind: str, directory: Path) -> Any:
    if kind == "sqlite":
        return _durable("sqlite", directory)
    return e2e.in_reactor(
        lambda: virtualGroups.SQLiteGroupStore(e2e.reactor, str(directory / "groups.db"))
    )


def _closeGroupStore(kind: str, store: Any) -> None:
    from twisted.internet.defer import maybeDeferred

    if kind == "sqlite":
        e2e.in_reactor(lambda: maybeDeferred(store.close))
    else:
        # The plugin's own file is written through, one write at a time: wait for the last.
        e2e.in_reactor(lambda: store._lock.run(lambda: None))


@pytest.mark.parametrize("kind", ["sqlite", "groupsfile"])
def test_groupStoresKeepInboxesAndSettings(
    kind: str, tmp_path: Path, twisted_reactor: None
) -> None:
    """
    The broker's SQLite store and the plugin's own groups file both keep a group's roles and
    policies and its inbox (entries, trimming, readers) across a reopening, and provide
    IGroupInbox.
    """
    from twisted.internet.defer import maybeDeferred
    from zope.interface.verify import verifyObject

    from mqttd.groupinbox import InboxEntry
    from mqttd.interfaces import IGroupInbox

    store = _groupStore(kind, tmp_path)
    assert verifyObject(IGroupInbox, store)
    group = virtualGroups.makeGroup(
        "family",
        {"alice": 1},
        byUsername=True,
        owners=["bob"],
        publish="owners",
        events=True,
        inbox=True,
        history=3,
    )

    def write() -> Any:
        for seq in (1, 2, 3):
            store.inboxAppended(
                "family", InboxEntry(seq, 10.0 + seq, "$group/family/x", b"%d" % seq, 1, "c")
            )
        store.inboxTrimmed("family", 2)
        store.inboxRead("family", "c:alice-phone", 3)
        store.inboxRead("family", "m:bob", 1)
        store.inboxAppended("gone", InboxEntry(1, 1.0, "$group/gone/x", b"", 0, ""))
        store.inboxDeleted("gone")
        return maybeDeferred(store.save, group)

    e2e.in_reactor(write)
    _closeGroupStore(kind, store)
    again = _groupStore(kind, tmp_path)
    assert again.group("family") == group
    inboxes = again.inboxes()
    assert list(inboxes) == ["family"]
    inbox = inboxes["family"]
    assert [(e.seq, e.payload) for e in inbox.entries] == [(2, b"2"), (3, b"3")]
    assert (inbox.readers, inbox.lastSeq) == ({"c:alice-phone": 3, "m:bob": 1}, 3)
    _closeGroupStore(kind, again)


def test_groupsFileVersion1Migrates(tmp_path: Path) -> None:
    """
    A groups file of version 1 (before roles and inboxes) is brought to version 2 when opened:
    its groups keep their members and get the default roles and policies.
    """
    path = tmp_path / "groups.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        f"BEGIN; {virtualGroups.SCHEMA} PRAGMA application_id = {virtualGroups.APPLICATION_ID};"
        " PRAGMA user_version = 1;"
        " INSERT INTO groups VALUES ('g', 0, NULL, 0); INSERT INTO members VALUES ('g', 'a', 1);"
        " COMMIT;"
    )
    old.close()
    db = virtualGroups.openGroupDatabase(str(path))
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        (group,) = virtualGroups.readGroups(db).values()
        assert (group.members, group.owners, group.publish, group.inbox) == (
            {"a": 1},
            frozenset(),
            "members",
            False,
        )
    finally:
        db.close()


def test_inboxOfAClientIdMemberBelongsToWhoClaimedIt(startSecure: Any) -> None:
    """
    In a group of client ids with an inbox, carol-phone is claimed by carol, its first
    connection.  While she is away, bob connects with her client id (no persistent session
    protects it): he is given nothing, neither the inbox nor what is sent while he is
    connected, and her position does not move: carol, back, gets all three messages in order.
    """
    secure = startSecure(
        groups={"group.chat": "alice-phone, carol-phone", "group.chat.inbox": "true"}
    )
    carol = secure.client("carol-phone", "carol")
    carol.disconnect()
    secure.running.wait_gone("carol-phone")
    alice = secure.client("alice-phone", "alice")
    for n in range(2):
        alice.publish("$group/chat/room", b"away %d" % n, qos=1)
    bob = secure.client("carol-phone", "bob")
    alice.publish("$group/chat/room", b"while bob is there", qos=1)
    quiet(bob)
    bob.disconnect()
    secure.running.wait_gone("carol-phone")
    carol = secure.client("carol-phone", "carol")
    assert [m.payload for m in carol.wait_for(3)] == [b"away 0", b"away 1", b"while bob is there"]
    quiet(carol, alice)


def test_inboxClaimSurvivesARestart(startSecure: Any) -> None:
    """
    Who claimed a client-id member is in the group store: carol claims carol-phone, the broker
    restarts on the same file, and bob connecting with carol-phone is still given nothing of
    what was kept for her.
    """
    groups = {"group.chat": "alice-phone, carol-phone", "group.chat.inbox": "true"}
    first = startSecure(groups=groups)
    carol = first.client("carol-phone", "carol")
    carol.disconnect()
    first.running.wait_gone("carol-phone")
    first.stop()
    second = startSecure(groups=groups)
    alice = second.client("alice-phone", "alice")
    alice.publish("$group/chat/room", b"for carol", qos=1)
    bob = second.client("carol-phone", "bob")
    quiet(bob)
    bob.disconnect()
    second.running.wait_gone("carol-phone")
    carol = second.client("carol-phone", "carol")
    assert [m.payload for m in carol.wait_for(1)] == [b"for carol"]


def test_setRefusesWhatItCannotChangeAndTheLastOwnerStays(startSecure: Any) -> None:
    """
    C{set} never answers ok for a change it does not make: C{by} (for anyone), a setting only an
    administrator may change (for an owner), an unknown key, each is an error naming the key,
    and the group is unchanged.  alpha's only owner cannot leave it (nobody would manage it);
    once the administrator made carol an owner too, she can.
    """
    secure = startSecure(groups=ROLES, acl=ROLES_ACL)
    alice = member(secure, "alice-1", "alice")
    backend = member(secure, "backend-1", "backend")
    before = secure.running.call(lambda: virtualGroups.describe(secure.groups.find("alpha")))
    for caller, body, key in (
        (alice, {"by": "clientid"}, "'by'"),
        (backend, {"by": "clientid"}, "'by'"),
        (alice, {"inbox": True}, "'inbox'"),
        (alice, {"owners": ["alice", "bob"]}, "'owners'"),
        (alice, {"members": ["bob"]}, "'members'"),
    ):
        answer = ask(caller, "set", group="alpha", **body)
        assert answer["ok"] is False and key in answer["error"], (body, answer)
    after = secure.running.call(lambda: virtualGroups.describe(secure.groups.find("alpha")))
    assert after == before
    refused = ask(alice, "leave", group="alpha")
    assert refused["ok"] is False and "last owner" in refused["error"]
    assert ask(backend, "set", group="alpha", owners=["alice", "carol"])["ok"]
    left = ask(alice, "leave", group="alpha")
    assert (left["ok"], left["owners"], left["members"]) == (True, ["carol"], {"carol": 2})
