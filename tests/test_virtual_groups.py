"""
Virtual groups and direct messages (C{plugins/virtual_groups/}): the plugin on its own, then
each IM scenario of issue 6 end to end with paho-mqtt through the real broker, and membership
surviving a restart of a real C{twistd mqttd}.
"""

from __future__ import annotations

import importlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from zope.interface.verify import verifyObject

from mqttd import cli
from mqttd.config import BrokerConfig, ConfigError, load_config
from mqttd.interfaces import (
    Action,
    ClientInfo,
    Group,
    IAuthorizer,
    IBrokerAware,
    IGroupSource,
    IGroupStore,
    ISubscriberSelector,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message
from mqttd.plugin_loader import buildPlugin, findPlugins, pluginPackage
from mqttd.service import makeBrokerService
from tests import e2e
from tests.test_twistd import freePort, twistdCommand, waitForPort

pluginPackage()
vg: Any = importlib.import_module("mqttd.plugins.virtual_groups")
aclfile: Any = importlib.import_module("mqttd.plugins.aclfile")
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def context(
    directory: Path, sources: dict[str, Any] | None = None, storePlugin: str | None = None
) -> PluginContext:
    def lookup(name: str, interface: Any) -> Any:
        if sources is None or name not in sources:
            raise PluginConfigError(None, f"unknown plugin {name!r}")
        return sources[name]

    return PluginContext(e2e.reactor, str(directory), BrokerConfig(), lookup, storePlugin)


def build(directory: Path, options: dict[str, str], **sources: Any) -> Any:
    return vg.virtualGroups.build(options, context(directory, sources))


def sqliteStore(directory: Path) -> Any:
    """The broker's SQLite store, built (and so watched, polling) in the reactor thread."""
    return e2e.in_reactor(
        findPlugins()["sqlite"].build,
        {"path": "mqttd.db", "group_poll_interval": "0.05"},
        context(directory),
    )


def client(clientId: str, username: str | None = None) -> ClientInfo:
    return ClientInfo(clientId, username, "", "l")


# The plugin on its own


def test_providesItsInterfaces(tmp_path: Path) -> None:
    """The plugin, its store and the docs' example source provide what they declare."""
    plugin = build(tmp_path, {})
    assert verifyObject(ISubscriberSelector, plugin)
    assert verifyObject(IAuthorizer, plugin)
    assert verifyObject(IBrokerAware, plugin)
    assert verifyObject(IGroupStore, plugin.store)
    users = tmp_path / "users.db"
    with sqlite3.connect(users) as db:
        db.execute("CREATE TABLE users (username TEXT, region TEXT)")
    source = findPlugins([str(EXAMPLES)])["region_groups"].build(
        {"database": str(users)}, context(tmp_path)
    )
    assert verifyObject(IGroupSource, source)


def test_ordinaryTopicsAreNotTouched(tmp_path: Path) -> None:
    """A topic outside the prefixes selects nobody and counts nothing."""
    plugin = build(tmp_path, {"group.g": "a"})
    assert list(plugin.select(Message("chat/x", b""), client("a"))) == []
    assert list(plugin.select(Message("$SYS/x", b""), None)) == []
    assert plugin.dropped == 0


def test_groupRecipientsPreparedOncePerMembership(tmp_path: Path) -> None:
    """
    A group of client ids delivered under the published topic answers with one mapping, the
    same object for every message while its membership stands; the publisher is left out
    (from a copy); a change of membership makes a new one.
    """
    plugin = build(tmp_path, {"group.g": "a, b:1, c:0"})
    first = plugin.select(Message("$group/g/x", b""), client("z"))
    assert first == {"a": 2, "b": 1, "c": 0}
    assert plugin.select(Message("$group/g/y", b""), None) is first
    assert plugin.select(Message("$group/g/y", b""), client("a")) == {"b": 1, "c": 0}
    assert first == {"a": 2, "b": 1, "c": 0}
    plugin.store.save(Group("g", {"a": 2}))
    assert plugin.select(Message("$group/g/x", b""), None) == {"a": 2}


def test_emptyAndUnknownGroupsDropAndCount(tmp_path: Path) -> None:
    """A group with no members, no such group, or only the publisher: dropped and counted."""
    plugin = build(tmp_path, {"group.solo": "a"})
    plugin.store.save(Group("empty", {}))
    for topic, publisher in (("$group/empty/x", None), ("$group/nope/x", None)):
        assert list(plugin.select(Message(topic, b""), publisher)) == []
    assert list(plugin.select(Message("$group/solo/x", b""), client("a"))) == []
    assert plugin.dropped == 3


def test_templatesAndEcho(tmp_path: Path) -> None:
    """
    A templated group delivers one topic per member (the publisher too with echo); a templated
    direct message names its recipient and sender.
    """
    plugin = build(
        tmp_path,
        {
            "group.g": "a, b:1",
            "group.g.topic": "inbox/{member}/{group}/{rest}",
            "group.g.echo": "true",
            "p2p_topic": "dm/{clientid}/from/{publisher}",
        },
    )
    assert list(plugin.select(Message("$group/g/hi/there", b""), client("a"))) == [
        ("a", 2, "inbox/a/g/hi/there"),
        ("b", 1, "inbox/b/g/hi/there"),
    ]
    assert list(plugin.select(Message("$p2p/b/x", b""), client("a"))) == [("b", 2, "dm/b/from/a")]


def test_templatesPercentEncodeClientIds(tmp_path: Path) -> None:
    """
    A publisher's client id put into a group or direct-message template by C{{publisher}} is
    one topic level, percent-encoded: C{ev+l#} gives no wildcard topic name [MQTT-3.3.2-2] and
    C{x/y} (or C{%2F}) adds no level that would forge sender C{x} (as presence topics encode
    it); a member's client id by user name through C{{clientid}} too.
    """
    plugin = build(
        tmp_path,
        {
            "group.g": "a",
            "group.g.topic": "from/{publisher}/{rest}",
            "group.u": "alice",
            "group.u.by": "username",
            "group.u.topic": "to/{clientid}/{rest}",
            "p2p_topic": "dm/{publisher}/{rest}",
        },
    )
    for sender, level in (("ev+l#", "ev%2Bl%23"), ("x/y", "x%2Fy"), ("x%2Fy", "x%252Fy")):
        assert list(plugin.select(Message("$group/g/hi", b""), client(sender))) == [
            ("a", 2, f"from/{level}/hi")
        ]
        assert list(plugin.select(Message("$p2p/a/hi", b""), client(sender))) == [
            ("a", 2, f"dm/{level}/hi")
        ]
    # Only the broker's map of user names to client ids is read for a group by user name
    # (and its single broker's route table, which has no other node to ask).
    plugin.broker = SimpleNamespace(
        clientIdsByUsername={"alice": ["ph/one+"]},
        router=SimpleNamespace(
            reselecting=False, selectElsewhere=lambda: None, mayBeElsewhere=lambda: False
        ),
    )
    assert list(plugin.select(Message("$group/u/hi", b""), client("b"))) == [
        ("ph/one+", 2, "to/ph%2Fone%2B/hi")
    ]


def test_authorizesMembersAndAbstainsOtherwise(tmp_path: Path) -> None:
    """
    Members may publish to their group and receive what it delivers under its own topic, a
    client what is sent to its C{$p2p/} topic; anyone else and any other action gets no answer.
    """
    plugin = build(tmp_path, {"group.g": "a", "group.u": "alice", "group.u.by": "username"})
    assert plugin.authorize(client("a"), Action.PUBLISH, "$group/g/x") is True
    assert plugin.authorize(client("b"), Action.PUBLISH, "$group/g/x") is None
    assert plugin.authorize(client("b", "alice"), Action.PUBLISH, "$group/u/x") is True
    assert plugin.authorize(client("a"), Action.RECEIVE, "$group/g/x") is True
    assert plugin.authorize(client("b"), Action.RECEIVE, "$group/g/x") is None
    assert plugin.authorize(client("b"), Action.RECEIVE, "$p2p/b/x") is True
    assert plugin.authorize(client("a"), Action.RECEIVE, "$p2p/b/x") is None
    assert plugin.authorize(client("a"), Action.SUBSCRIBE, "$group/g/#") is None
    assert plugin.authorize(client("a"), Action.PUBLISH, "chat/x") is None


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"group.g.colour": "red"}, "group.g.colour"),
        ({"group.g.by": "username"}, "group.g"),
        ({"group.g": "a+b"}, "group.g"),
        ({"group.g": "a", "group.g.topic": "x/{who}"}, "group.g.topic"),
        ({"group.g": "a", "group.g.echo": "yes"}, "group.g.echo"),
        ({"p2p_topic": "x/#"}, "p2p_topic"),
        ({"group_prefix": "$group"}, "group_prefix"),
        ({"poll_interval": "0"}, "poll_interval"),
        ({"sources": "nope"}, "sources"),
    ],
)
def test_badOptionsNameFileSectionAndKey(tmp_path: Path, options: dict[str, str], key: str) -> None:
    """Every bad option stops start-up with one line naming the file, section and key."""
    with pytest.raises(ConfigError) as raised:
        buildPlugin(
            "virtual_groups", options, context(tmp_path), file="mqttd.ini", section="selectors"
        )
    assert str(raised.value).startswith(f"mqttd.ini: [plugin:virtual_groups] {key}: ")


def test_foreignDatabaseRefused(tmp_path: Path) -> None:
    """An SQLite file that is not a groups file (the broker's own store, say) is never used."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(PluginConfigError, match="not an mqttd groups file"):
        build(tmp_path, {"path": str(other)})


def test_groupsInTheBrokersStoreWhenItKeepsGroups(twisted_reactor: None, tmp_path: Path) -> None:
    """
    The plugin keeps its groups in the broker's store when that is an L{IGroupStore} (the SQLite
    store), and in a file of its own when it is not (the file store, like the memory store).
    """
    for name, options in (("sqlite", {"path": "mqttd.db"}), ("file", {"path": "mqttd.log"})):
        store = e2e.in_reactor(findPlugins()[name].build, options, context(tmp_path))
        plugin = e2e.in_reactor(
            vg.virtualGroups.build, {"group.g": "a"}, context(tmp_path, {name: store}, name)
        )
        assert plugin.find("g") == Group("g", {"a": 2})
        if name == "sqlite":
            assert plugin.store is store
            assert not (tmp_path / "groups.db").exists()
        else:
            assert plugin.store.path == str(tmp_path / "groups.db")
        e2e.in_reactor(store.close)


def test_twistdConfigurationWiresTheSelector(tmp_path: Path) -> None:
    """
    C{[selectors] chain = virtual_groups} makes the plugin the broker's selector and, since it
    is the same plugin object, its authorizer in C{[acl] chain}, and has it attached at start.
    """
    ini = tmp_path / "mqttd.ini"
    ini.write_text(
        "[listener:l]\nendpoint = tcp:0:interface=127.0.0.1\n"
        "[selectors]\nchain = virtual_groups\n[acl]\nchain = virtual_groups\n"
        "[plugin:virtual_groups]\ngroup.g = a\n"
    )
    service = makeBrokerService(load_config(str(ini)), e2e.reactor)
    plugin: Any
    (plugin,) = service.broker.selectors
    assert service.broker.authorizers == (plugin,)
    assert service.brokerAware == [plugin]
    assert plugin.store.path == str(tmp_path / "groups.db")


# Through the real broker, with paho-mqtt


class GroupBroker:
    """A broker on a real port with the virtual groups plugin as selector (and authorizer)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[tuple[e2e.RunningBroker, Any]] = []
        self.clients: list[e2e.Client] = []

    def start(
        self,
        options: dict[str, str],
        authorizers: Callable[[Any], tuple[Any, ...]] = lambda plugin: (),
        store: Any = None,
        **sources: Any,
    ) -> tuple[e2e.RunningBroker, Any]:
        """
        @param store: the broker's store, given to the plugin as plugin C{store}; the memory
            store by default, and the plugin then keeps groups in a file of its own.
        """
        made = context(
            self.directory,
            {**sources, "store": store},
            storePlugin=None if store is None else "store",
        )
        plugin = e2e.in_reactor(vg.virtualGroups.build, {"poll_interval": "0.05", **options}, made)

        def plugins() -> dict[str, Any]:
            extra = {} if store is None else {"store": store}
            return {"selectors": (plugin,), "authorizers": authorizers(plugin), **extra}

        running = e2e.start_broker(plugins=plugins)
        running.call(plugin.attach, running.broker)
        self.running.append((running, plugin))
        return running, plugin

    def stop(self, running: e2e.RunningBroker, plugin: Any) -> None:
        self.running.remove((running, plugin))
        running.call(plugin.detach)
        running.stop()

    def client(self, port: int, clientId: str, username: str | None = None, **kw: Any) -> Any:
        def setup(p: paho.Client) -> None:
            if username is not None:
                p.username_pw_set(username)

        c = e2e.Client(port, clientId, setup=setup, **kw)
        self.clients.append(c)
        return c


@pytest.fixture
def groups(twisted_reactor: None, tmp_path: Path) -> Iterator[GroupBroker]:
    e2e.REACTOR.takeErrors()
    made = GroupBroker(tmp_path)
    yield made
    for c in made.clients:
        c.close()
    for running, plugin in list(made.running):
        made.stop(running, plugin)
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


def quiet(*clients: e2e.Client) -> None:
    """Nothing more arrived: a last message routed after everything else has come through."""
    time.sleep(0.1)
    for c in clients:
        assert c.pending() == []


def request(c: e2e.Client, action: str, **body: Any) -> Any:
    """A control-topic request from C{c}, which is subscribed to C{reply/<id>}; its answer."""
    body["response_topic"] = f"reply/{c.client_id}"
    c.publish(f"$CONTROL/mqttd/groups/{action}", json.dumps(body).encode(), qos=1)
    (answer,) = c.wait_for(1)
    assert answer.topic == f"reply/{c.client_id}"
    return json.loads(answer.payload)


def test_friendRequestToInboxByDirectMessage(groups: GroupBroker) -> None:
    """
    alice sends bob a friend request to C{$p2p/bob/...}: bob, who subscribed to nothing, gets
    it under his inbox topic naming the sender; nobody else does, and a direct message to a
    client without a session is dropped and counted.
    """
    running, plugin = groups.start({"p2p_topic": "inbox/{clientid}/{rest}/{publisher}"})
    alice = groups.client(running.port, "alice")
    bob = groups.client(running.port, "bob")
    carol = groups.client(running.port, "carol")
    carol.subscribe("#")
    alice.publish("$p2p/bob/friend-request", b"alice wants to be friends", qos=1)
    (got,) = bob.wait_for(1)
    assert (got.topic, got.payload, got.qos) == (
        "inbox/bob/friend-request/alice",
        b"alice wants to be friends",
        1,
    )
    alice.publish("$p2p/nobody/friend-request", b"?", qos=1)
    quiet(alice, bob, carol)
    assert plugin.dropped == 1


def test_greetingToFriendsGroupWhereNoMemberSubscribed(groups: GroupBroker) -> None:
    """
    A group from mqttd.ini: one PUBLISH reaches every member, none of whom subscribed, each at
    the lower of the published and its own QoS, under the published topic; a member publishing
    does not get its own message back from the group; non-members get nothing.  No member can
    subscribe to the group's topic (SUBACK 0x80): it is the server's.
    """
    running, _ = groups.start({"group.friends": "bob, carol:0, dave"})
    alice = groups.client(running.port, "alice")
    bob = groups.client(running.port, "bob")
    assert bob.subscribe("$group/friends/#", 0) == 0x80
    carol = groups.client(running.port, "carol")
    alice.publish("$group/friends/greeting", b"happy new year", qos=1)
    assert [(m.topic, m.payload, m.qos) for m in bob.wait_for(1)] == [
        ("$group/friends/greeting", b"happy new year", 1)
    ]
    assert [m.qos for m in carol.wait_for(1)] == [0]
    bob.publish("$group/friends/greeting", b"same to you", qos=1)
    assert [m.payload for m in carol.wait_for(1)] == [b"same to you"]
    quiet(alice, bob, carol)


def test_groupChatNewMemberFromNextMessageRemovedMemberStops(groups: GroupBroker) -> None:
    """
    A group managed over the control topics by an administrator (C{admins}): created with alice
    and bob, carol added, then bob removed, each answered on the request's response topic; carol
    gets messages from the one after her addition on, bob none after his removal, and everyone's
    order is the publisher's.
    """
    running, _ = groups.start({"control": "true", "admins": "ops"})
    admin = groups.client(running.port, "admin", "ops")
    admin.subscribe("reply/admin", 1)
    alice = groups.client(running.port, "alice")
    bob = groups.client(running.port, "bob")
    carol = groups.client(running.port, "carol")
    created = request(admin, "create", group="chat", members=["alice", "bob"], correlation=7)
    assert created == {
        "ok": True,
        "group": "chat",
        "by": "clientid",
        "topic": None,
        "echo": False,
        "members": {"alice": 2, "bob": 2},
        "owners": [],
        "publish": "members",
        "events": False,
        "inbox": False,
        "history": 0,
        "correlation": 7,
    }
    for n in range(3):
        alice.publish("$group/chat/room", b"before %d" % n, qos=1)
    assert request(admin, "add", group="chat", members={"carol": 1})["ok"]
    for n in range(3):
        alice.publish("$group/chat/room", b"after %d" % n, qos=1)
    assert request(admin, "remove", group="chat", members=["bob"])["members"] == {
        "alice": 2,
        "carol": 1,
    }
    alice.publish("$group/chat/room", b"last", qos=1)
    assert [m.payload for m in bob.wait_for(6)] == [
        *(b"before %d" % n for n in range(3)),
        *(b"after %d" % n for n in range(3)),
    ]
    assert [m.payload for m in carol.wait_for(4)] == [
        *(b"after %d" % n for n in range(3)),
        b"last",
    ]
    assert request(admin, "list") == {"ok": True, "groups": ["chat"]}
    assert request(admin, "create", group="chat") == {"ok": False, "error": "group 'chat' exists"}
    assert request(admin, "delete", group="chat")["ok"]
    quiet(alice, bob, carol)


def test_regionalBroadcastToComputedGroup(groups: GroupBroker, tmp_path: Path) -> None:
    """
    docs/examples/region_groups.py computes C{region-beijing} from an application's user table:
    a message from the backend reaches every session of the users in Beijing (both of alice's
    devices), by user name, and nobody elsewhere.
    """
    users = tmp_path / "users.db"
    with sqlite3.connect(users) as db:
        db.execute("CREATE TABLE users (username TEXT, region TEXT)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?)",
            [("alice", "beijing"), ("bob", "beijing"), ("carol", "shanghai")],
        )
    region = findPlugins([str(EXAMPLES)])["region_groups"].build(
        {"database": str(users)}, context(tmp_path)
    )
    running, _ = groups.start({"sources": "regions"}, regions=region)
    phone = groups.client(running.port, "alice-phone", "alice")
    laptop = groups.client(running.port, "alice-laptop", "alice")
    bob = groups.client(running.port, "bob-phone", "bob")
    carol = groups.client(running.port, "carol-phone", "carol")
    backend = groups.client(running.port, "backend")
    backend.publish("$group/region-beijing/news", b"snow tomorrow", qos=1)
    for member in (phone, laptop, bob):
        (got,) = member.wait_for(1)
        assert (got.topic, got.payload, got.qos) == (
            "$group/region-beijing/news",
            b"snow tomorrow",
            1,
        )
    quiet(carol, backend)


def test_offlineMemberReceivesQueuedGroupMessagesOnReconnect(groups: GroupBroker) -> None:
    """
    bob, a member with a persistent session, is offline: the group's QoS 1 messages are queued
    for him and arrive in order when he reconnects; QoS 0 ones are not queued [MQTT-3.1.2-5].
    """
    running, _ = groups.start({"group.team": "bob"})
    bob = groups.client(running.port, "bob", clean=False)
    bob.close()
    running.wait_gone("bob")
    alice = groups.client(running.port, "alice")
    alice.publish("$group/team/standup", b"dropped", qos=0)
    for n in range(5):
        alice.publish("$group/team/standup", b"%d" % n, qos=1)
    back = groups.client(running.port, "bob", clean=False)
    assert back.session_present
    got = back.wait_for(5)
    assert [(m.payload, m.qos) for m in got] == [(b"%d" % n, 1) for n in range(5)]
    quiet(back)


def test_aclRefusingNonMemberPublisher(groups: GroupBroker, tmp_path: Path) -> None:
    """
    With C{[acl] chain = virtual_groups, aclfile}: a member may publish to the group, a backend
    identity may by an aclfile rule, a non-member may not (its message is acknowledged and
    dropped); membership is the right to receive what the group delivers under its own topic,
    so no ACL rule needs to grant reading C{$group/...}.
    """
    (tmp_path / "acl").write_text("user backend\ntopic write $group/#\n")
    rules = aclfile.ACLFileAuthorizer(str(tmp_path / "acl"))
    running, _ = groups.start(
        {"group.team": "bob, carol, dave", "group.team.by": "username"},
        authorizers=lambda plugin: (plugin, rules),
    )
    bob = groups.client(running.port, "bob-1", "bob")
    carol = groups.client(running.port, "carol-1", "carol")
    dave = groups.client(running.port, "dave-1", "dave")
    mallory = groups.client(running.port, "mallory-1", "mallory")
    backend = groups.client(running.port, "backend-1", "backend")
    mallory.publish("$group/team/x", b"spam", qos=1)
    bob.publish("$group/team/x", b"from bob", qos=1)
    backend.publish("$group/team/x", b"from backend", qos=1)
    assert [m.payload for m in carol.wait_for(2)] == [b"from bob", b"from backend"]
    assert [m.payload for m in bob.wait_for(1)] == [b"from backend"]
    assert [m.payload for m in dave.wait_for(2)] == [b"from bob", b"from backend"]
    quiet(bob, carol, dave, mallory)


def test_commandLineChangeReachesRunningBroker(groups: GroupBroker, tmp_path: Path) -> None:
    """
    C{mqttd groups add} on the file a running broker uses: the next message after the broker
    has read the change reaches the new member, without a restart.
    """
    running, plugin = groups.start({"group.g": "bob"})
    bob = groups.client(running.port, "bob")
    carol = groups.client(running.port, "carol")
    assert cli.main(["groups", "--file", plugin.store.path, "add", "g", "carol:1"]) == 0
    e2e.wait_until(
        lambda: running.call(lambda: plugin.find("g").members) == {"bob": 2, "carol": 1},
        "the broker to read the change",
    )
    bob.publish("$group/g/x", b"hello", qos=1)
    assert [m.qos for m in carol.wait_for(1)] == [1]
    quiet(bob, carol)


def test_commandLineChangeReachesRunningBrokerOnItsStore(
    groups: GroupBroker, tmp_path: Path
) -> None:
    """
    With the broker's SQLite store, groups live in it (no file of the plugin's own), and
    C{mqttd groups}, by C{--file} or by C{--config}, edits that file while the broker writes to
    it: the next message after the store has read the change follows it.
    """
    store = sqliteStore(tmp_path)
    running, plugin = groups.start({"group.g": "bob"}, store=store)
    assert plugin.store is store
    bob = groups.client(running.port, "bob")
    carol = groups.client(running.port, "carol")
    assert cli.main(["groups", "--file", store.path, "add", "g", "carol:1"]) == 0
    e2e.wait_until(
        lambda: running.call(lambda: plugin.find("g").members) == {"bob": 2, "carol": 1},
        "the broker to read the change",
    )
    bob.publish("$group/g/x", b"hello", qos=1)
    assert [m.qos for m in carol.wait_for(1)] == [1]
    config = tmp_path / "mqttd.ini"
    config.write_text(
        "[listener:l]\nendpoint = tcp:1883\n"
        "[store]\nplugin = sqlite\n[plugin:sqlite]\npath = mqttd.db\n"
    )
    assert cli.main(["groups", "--config", str(config), "remove", "g", "carol"]) == 0
    e2e.wait_until(
        lambda: running.call(lambda: plugin.find("g").members) == {"bob": 2},
        "the broker to read the removal",
    )
    bob.publish("$group/g/x", b"not for carol", qos=1)
    quiet(bob, carol)
    assert not (tmp_path / "groups.db").exists()


def test_membershipSurvivesBrokerRestartOnSQLite(tmp_path: Path, capsys: Any) -> None:
    """
    A real C{twistd mqttd} with C{[selectors] chain = virtual_groups} and the SQLite store: a
    group created over the control topics is in the broker's store after SIGTERM (no groups
    file is made), and the restarted broker delivers to its members from the first message.
    """
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:e2e]\nendpoint = tcp:{port}:interface=127.0.0.1\nallow_anonymous = true\n"
        "[store]\nplugin = sqlite\n[plugin:sqlite]\npath = var/mqttd.db\n"
        "[selectors]\nchain = virtual_groups\n"
        "[plugin:virtual_groups]\ncontrol = true\nadmins = ops\n"
    )
    for run in ("first", "restarted"):
        log = tmp_path / f"{run}.log"
        command, env = twistdCommand(tmp_path, "--config", str(config))
        with log.open("wb") as output:
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=output)
        try:
            waitForPort(process, port, log)
            member = e2e.Client(port, "member")
            admin = e2e.Client(port, "admin", setup=lambda p: p.username_pw_set("ops"))
            try:
                if run == "first":
                    admin.subscribe("reply/admin", 1)
                    assert request(admin, "add", group="g", members=["member"])["ok"]
                else:
                    admin.publish("$group/g/x", b"still here", qos=1)
                    assert [m.payload for m in member.wait_for(1)] == [b"still here"]
            finally:
                member.close()
                admin.close()
            process.send_signal(signal.SIGTERM)
            assert process.wait(e2e.TIMEOUT * 2) == -signal.SIGTERM, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not list(tmp_path.glob("**/groups.db"))
    capsys.readouterr()
    assert cli.main(["groups", "--config", str(config), "list", "g"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == {"member": 2}
