"""
The shipped auth plugins (passwordfile, aclfile, http_auth), their discovery, C{mqttd passwd},
and plugins loaded by a real C{twistd mqttd}.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from mqttd.cli import main as cli
from mqttd.config import BrokerConfig, ConfigError, ListenerConfig
from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    Deny,
    IAuthenticator,
    IAuthorizer,
    IReloadable,
    PluginConfigError,
    PluginContext,
    ReloadError,
)
from mqttd.plugin_loader import buildPlugin, findPlugins, pluginPackage
from tests import e2e
from tests.test_twistd import freePort, twistdCommand

pluginPackage()
passwordfile = importlib.import_module("mqttd.plugins.passwordfile")
aclfile = importlib.import_module("mqttd.plugins.aclfile")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def context(directory: Path, reactor: Any = None) -> PluginContext:
    return PluginContext(
        reactor=reactor, configDirectory=str(directory), brokerConfig=BrokerConfig()
    )


def credentials(username: str | None, password: bytes | None) -> Credentials:
    return Credentials("c", username, password, None, "127.0.0.1", "l")


def mosquittoPasswd(*args: str) -> None:
    assert MOSQUITTO_PASSWD, "mosquitto_passwd missing: apt-get install mosquitto (see .ci/run)"
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True)


def test_shippedPluginsDiscovered() -> None:
    """getPlugins over mqttd.plugins finds the three auth plugins by their config names."""
    assert {"passwordfile", "aclfile", "http_auth"} <= set(findPlugins())


def test_shippedPluginsProvideTheirInterfaces(tmp_path: Path) -> None:
    """Every shipped auth plugin passes verifyObject for each interface it declares."""
    (tmp_path / "pw").write_text("")
    (tmp_path / "acl").write_text("")
    built = {
        "passwordfile": buildPlugin(
            "passwordfile", {"file": "pw"}, context(tmp_path), file="f", section="auth"
        ),
        "aclfile": buildPlugin(
            "aclfile", {"file": "acl"}, context(tmp_path), file="f", section="acl"
        ),
        "http_auth": buildPlugin(
            "http_auth",
            {"url": "http://127.0.0.1:1/", "acl_url": "http://127.0.0.1:1/"},
            context(tmp_path, e2e.reactor),
            file="f",
            section="auth",
        ),
    }
    assert verifyObject(IAuthenticator, built["passwordfile"])
    assert verifyObject(IReloadable, built["passwordfile"])
    assert verifyObject(IAuthorizer, built["aclfile"])
    assert verifyObject(IReloadable, built["aclfile"])
    assert verifyObject(IAuthenticator, built["http_auth"])
    assert verifyObject(IAuthorizer, built["http_auth"])


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("passwordfile", {}, "file"),
        ("passwordfile", {"file": "pw", "hash": "md5"}, "hash"),
        ("passwordfile", {"file": "missing"}, "file"),
        ("http_auth", {"url": "ftp://x"}, "url"),
        ("http_auth", {"url": "http://x", "timeout": "soon"}, "timeout"),
    ],
)
def test_badOptionsNamePluginSectionAndKey(
    tmp_path: Path, name: str, options: dict[str, str], key: str
) -> None:
    """A missing, unknown or malformed option is a ConfigError naming [plugin:NAME] and the key."""
    (tmp_path / "pw").write_text("")
    with pytest.raises(ConfigError) as caught:
        buildPlugin(name, options, context(tmp_path), file="m.ini", section="auth", key="chain")
    assert (caught.value.section, caught.value.key) == (f"plugin:{name}", key)
    assert "\n" not in str(caught.value)


def test_unknownPluginNamed() -> None:
    """A misnamed plugin is reported against the section and key that named it."""
    with pytest.raises(ConfigError) as caught:
        buildPlugin("pasword", {}, context(Path(".")), file="m.ini", section="auth", key="chain")
    assert str(caught.value).startswith("m.ini: [auth] chain: unknown plugin 'pasword'")


# passwordfile


def test_mosquittoPasswordFileAcceptedUnchanged(tmp_path: Path) -> None:
    """
    A file written by Debian's mosquitto_passwd, with both $7$ (PBKDF2-SHA512, its default)
    and $6$ (salted SHA-512, -H sha512) entries, authenticates exactly its users.
    """
    path = tmp_path / "passwd"
    mosquittoPasswd("-c", "-b", str(path), "alice", "wonder land")
    mosquittoPasswd("-H", "sha512", "-b", str(path), "bob", "b:b")
    text = path.read_text()
    assert "alice:$7$" in text and "bob:$6$" in text
    plugin = passwordfile.PasswordFileAuthenticator(str(path))
    assert plugin.authenticate(credentials("alice", b"wonder land")) == Allow("alice")
    assert plugin.authenticate(credentials("bob", b"b:b")) == Allow("bob")
    assert plugin.authenticate(credentials("alice", b"wonderland")) == Deny(4, "wrong password")
    assert plugin.authenticate(credentials("carol", b"x")) is None
    assert plugin.authenticate(credentials(None, None)) is None


def test_passwdCommandWritesWhatMosquittoFormatReads(tmp_path: Path) -> None:
    """
    C{mqttd passwd} creates, updates and deletes $7$ entries; the plugin (and so mosquitto's
    format) accepts them, and SIGHUP's reload picks up the change.
    """
    path = str(tmp_path / "passwd")
    assert cli(["passwd", "-c", "-b", path, "alice", "one"]) == 0
    assert cli(["passwd", "-b", path, "bob", "two"]) == 0
    plugin = passwordfile.PasswordFileAuthenticator(path)
    assert plugin.authenticate(credentials("alice", b"one")) == Allow("alice")
    assert cli(["passwd", "-b", path, "alice", "three"]) == 0
    assert cli(["passwd", "-D", path, "bob"]) == 0
    plugin.reload()
    assert plugin.authenticate(credentials("alice", b"three")) == Allow("alice")
    assert plugin.authenticate(credentials("bob", b"two")) is None
    assert Path(path).read_text().startswith("alice:$7$101$")


def test_passwordReloadKeepsPreviousUsersOnError(tmp_path: Path) -> None:
    """
    A reload that finds a broken file keeps the users it had (no lock-out by typo) and says so
    with a ReloadError naming the file.
    """
    path = tmp_path / "passwd"
    cli(["passwd", "-c", "-b", str(path), "alice", "one"])
    plugin = passwordfile.PasswordFileAuthenticator(str(path))
    path.write_text("alice:plaintext\n")
    with pytest.raises(ReloadError) as e:
        plugin.reload()
    assert str(e.value).startswith(f"{path}: ")
    assert plugin.authenticate(credentials("alice", b"one")) == Allow("alice")


# aclfile

ACL = """
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic write $SYS/#

pattern read devices/%c/#
pattern write users/%u/out
"""


def acl(tmp_path: Path, text: str = ACL) -> Any:
    path = tmp_path / "acl"
    path.write_text(text)
    return aclfile.ACLFileAuthorizer(str(path))


def alice(clientId: str = "c1") -> ClientInfo:
    return ClientInfo(clientId, "alice", "", "l")


def test_aclFileRules(tmp_path: Path) -> None:
    """
    mosquitto's acl_file semantics: topic lines before any user are the anonymous client's,
    deny beats grant, a subscription must be covered by a read grant, nothing granted is no
    answer (which the chain turns into deny).
    """
    rules = acl(tmp_path)
    anonymous = ClientInfo("anon", None, "", "l")
    assert rules.authorize(anonymous, Action.RECEIVE, "public/x") is True
    assert rules.authorize(anonymous, Action.PUBLISH, "public/x") is None
    assert rules.authorize(alice(), Action.RECEIVE, "public/x") is None
    assert rules.authorize(alice(), Action.PUBLISH, "alice/a/b") is True
    assert rules.authorize(alice(), Action.SUBSCRIBE, "alice/+/b") is True
    assert rules.authorize(alice(), Action.SUBSCRIBE, "#") is None
    assert rules.authorize(alice(), Action.RECEIVE, "alice/secret") is False
    assert rules.authorize(alice(), Action.RECEIVE, "devices/c1/temp") is True
    assert rules.authorize(alice(), Action.RECEIVE, "devices/c2/temp") is None
    assert rules.authorize(alice(), Action.PUBLISH, "users/alice/out") is True


def test_sysIsReadOnly(tmp_path: Path) -> None:
    """No ACL entry lets a client publish into $SYS, not even one granting write there."""
    assert acl(tmp_path).authorize(alice(), Action.PUBLISH, "$SYS/broker/x") is False


@pytest.mark.parametrize("clientId", ["dev+", "dev#", "a/b"])
def test_patternSubstitutionRefusesWildcardsAndSlashes(tmp_path: Path, clientId: str) -> None:
    """
    bad-inputs 23 / CVE-2017-7650: a client id holding +, # or / never widens a %c pattern;
    with + or # the client is denied everything.
    """
    rules = acl(tmp_path)
    for topic in ("devices/dev+/x", "devices/a/b/x", "devices/x/y"):
        assert rules.authorize(alice(clientId), Action.RECEIVE, topic) is not True


def test_aclReloadKeepsPreviousRulesOnError(tmp_path: Path) -> None:
    """SIGHUP's reload applies a new file, and keeps the old rules when the new one is broken."""
    rules = acl(tmp_path)
    (tmp_path / "acl").write_text("user alice\ntopic read other\n")
    rules.reload()
    assert rules.authorize(alice(), Action.RECEIVE, "other") is True
    (tmp_path / "acl").write_text("bogus line\n")
    with pytest.raises(ReloadError) as e:
        rules.reload()
    assert str(tmp_path / "acl") in str(e.value)
    assert rules.authorize(alice(), Action.RECEIVE, "other") is True


# Through the real broker, with paho-mqtt


def connectPaho(port: int, clientId: str, username: str, password: str) -> int:
    """The CONNACK return code paho gets."""
    client = paho.Client(CallbackAPIVersion.VERSION2, clientId, protocol=paho.MQTTv311)
    client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(int(rc.value))
    client.connect(e2e.HOST, port)
    client.loop_start()
    try:
        e2e.wait_until(lambda: bool(codes), "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    # paho 2 reports MQTT 3.1.1 refusals as their MQTT 5 reason codes.
    return {134: 4, 135: 5}.get(codes[0], codes[0])


@pytest.fixture
def fileBroker(twisted_reactor: None, tmp_path: Path) -> Iterator[e2e.RunningBroker]:
    """A broker on a real port with passwordfile (from mosquitto_passwd) and aclfile."""
    mosquittoPasswd("-c", "-b", str(tmp_path / "passwd"), "alice", "secret")
    (tmp_path / "acl").write_text(ACL)
    ctx = context(tmp_path, e2e.reactor)

    def plugins() -> dict[str, Any]:
        return {
            "authenticators": [passwordfile.passwordfile.build({"file": "passwd"}, ctx)],
            "authorizers": [aclfile.aclfile.build({"file": "acl"}, ctx)],
        }

    listener = ListenerConfig("auth", f"tcp:0:interface={e2e.HOST}")
    e2e.REACTOR.takeErrors()
    running = e2e.start_broker(listener=listener, plugins=plugins)
    yield running
    running.stop()
    assert not e2e.REACTOR.takeErrors()


def test_filePluginsThroughBroker(fileBroker: e2e.RunningBroker) -> None:
    """
    With paho-mqtt over TCP: a wrong password and a user without a password entry are both
    refused with CONNACK 5 (one answer for every failed login); alice connects, a filter outside
    her ACL gets SUBACK 0x80, and a PUBLISH she may not make is acknowledged but never delivered.
    """
    port = fileBroker.port
    assert connectPaho(port, "x", "alice", "wrong") == 5
    assert connectPaho(port, "y", "mallory", "secret") == 5

    def setup(client: paho.Client) -> None:
        client.username_pw_set("alice", "secret")

    c = e2e.Client(port, "c1", setup=setup)
    try:
        assert c.subscribe("#", 1) == 0x80
        assert c.subscribe("alice/#", 1) == 1
        c.publish("alice/secret", b"hidden", qos=1)
        c.publish("alice/open", b"seen", qos=1)
        (got,) = c.wait_for(1)
        assert (got.topic, got.payload) == ("alice/open", b"seen")
        time.sleep(0.05)
        assert c.pending() == []
    finally:
        c.close()


# http_auth against a real twisted.web server


class Endpoint(Resource):
    """Answers POSTs with a status chosen per user name; 'slow' never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> Any:
        body = request.content.read()  # type: ignore[union-attr]
        self.bodies.append(body)
        if b'"slow"' in body:
            return NOT_DONE_YET
        request.setResponseCode(200 if b'"good"' in body else 500 if b'"broken"' in body else 403)
        return b"{}"


@pytest.fixture
def httpService(twisted_reactor: None) -> Iterator[tuple[str, Endpoint]]:
    """A twisted.web server on an ephemeral loopback port, in the reactor thread."""
    endpoint = Endpoint()
    port = e2e.in_reactor(lambda: e2e.reactor.listenTCP(0, Site(endpoint), interface=e2e.HOST))
    yield f"http://{e2e.HOST}:{port.getHost().port}/", endpoint
    e2e.in_reactor(port.stopListening)


def ask(call: Any) -> Any:
    """Run C{call} in the reactor thread and wait for its (possibly deferred) answer."""

    def run() -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        result = call()
        if isinstance(result, Deferred):
            result.chainDeferred(d)
        else:
            d.callback(result)
        return d

    return e2e.in_reactor(run)


def test_httpAuth(httpService: tuple[str, Endpoint], tmp_path: Path) -> None:
    """
    200 accepts, 4xx refuses with CONNACK 4, 5xx and a timeout refuse too (fail closed); ACL
    answers follow the same rule; an answer is cached, a failure is not.
    """
    url, endpoint = httpService
    plugin = buildPlugin(
        "http_auth",
        {"url": url, "acl_url": url, "timeout": "0.3", "cache_seconds": "60"},
        context(tmp_path, e2e.reactor),
        file="f",
        section="auth",
    )
    assert ask(lambda: plugin.authenticate(credentials("good", b"pw"))) == Allow("good")
    assert isinstance(ask(lambda: plugin.authenticate(credentials("bad", b"pw"))), Deny)
    assert isinstance(ask(lambda: plugin.authenticate(credentials("broken", b"pw"))), Deny)
    assert isinstance(ask(lambda: plugin.authenticate(credentials("slow", b"pw"))), Deny)
    good = ClientInfo("c", "good", "", "l")
    assert ask(lambda: plugin.authorize(good, Action.PUBLISH, "t")) is True
    assert (
        ask(lambda: plugin.authorize(ClientInfo("c", "bad", "", "l"), Action.RECEIVE, "t")) is False
    )
    asked = len(endpoint.bodies)
    assert ask(lambda: plugin.authenticate(credentials("good", b"pw"))) == Allow("good")
    assert ask(lambda: plugin.authorize(good, Action.PUBLISH, "t")) is True
    assert len(endpoint.bodies) == asked
    ask(lambda: plugin.authenticate(credentials("broken", b"pw")))
    assert len(endpoint.bodies) == asked + 1
    assert b'"acc": 2' in endpoint.bodies[4]


def test_httpAuthThroughBroker(httpService: tuple[str, Endpoint], tmp_path: Path) -> None:
    """paho-mqtt connects through a broker whose authenticator is http_auth; a 403 is CONNACK 4."""
    url, _ = httpService
    ctx = context(tmp_path, e2e.reactor)

    def plugins() -> dict[str, Any]:
        return {
            "authenticators": [
                buildPlugin("http_auth", {"url": url}, ctx, file="f", section="auth")
            ]
        }

    listener = ListenerConfig("http", f"tcp:0:interface={e2e.HOST}")
    running = e2e.start_broker(listener=listener, plugins=plugins)
    try:
        assert connectPaho(running.port, "a", "good", "pw") == 0
        # Any failed login is 5 at 3.1.1 (as mosquitto), whatever the service meant.
        assert connectPaho(running.port, "b", "nobody", "pw") == 5
    finally:
        running.stop()


# A custom plugin loaded by twistd

CUSTOM = """
from zope.interface import implementer
from twisted.plugin import IPlugin
from mqttd.interfaces import Allow, Deny, IAuthenticator, IPluginFactory, PluginConfigError


@implementer(IAuthenticator)
class OnlyOne:
    def __init__(self, user):
        self.user = user

    def authenticate(self, credentials):
        return Allow() if credentials.username == self.user else Deny(5, "not the one")


@implementer(IPlugin, IPluginFactory)
class Factory:
    name = "onlyone"

    def build(self, options, context):
        if set(options) != {"user"}:
            raise PluginConfigError(None, "needs exactly: user")
        return OnlyOne(options["user"])


onlyone = Factory()
"""


def writeConfig(tmp_path: Path, port: int, extra: str) -> Path:
    (tmp_path / "myplugins").mkdir(exist_ok=True)
    (tmp_path / "myplugins" / "site_onlyone.py").write_text(CUSTOM)
    config = tmp_path / "mqttd.ini"
    config.write_text(
        textwrap.dedent(
            f"""\
            [plugins]
            paths = myplugins
            [listener:main]
            endpoint = tcp:{port}:interface=127.0.0.1
            """
        )
        + extra
    )
    return config


def test_customPluginLoadedByTwistd(tmp_path: Path) -> None:
    """
    A plugin module dropped in a directory listed in [plugins] paths is found by a real
    C{twistd -n mqttd --config} and decides CONNECTs: its user gets in, others get CONNACK 5.
    """
    port = freePort()
    config = writeConfig(tmp_path, port, "[auth]\nchain = onlyone\n[plugin:onlyone]\nuser = zoe\n")
    command, env = twistdCommand(tmp_path, "--config", str(config))
    log = tmp_path / "log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=output)
    try:
        e2e.wait_until(lambda: b"mqttd listener main" in log.read_bytes(), "twistd to listen", 30)
        assert connectPaho(port, "z", "zoe", "") == 0
        assert connectPaho(port, "m", "max", "") == 5
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[auth]\nchain = onlyon\n", "[auth] chain: unknown plugin 'onlyon'"),
        (
            "[auth]\nchain = onlyone\n[plugin:onlyone]\nuser = a\nrole = b\n",
            "[plugin:onlyone]: needs exactly: user",
        ),
    ],
)
def test_badPluginStopsTwistdWithOneLine(tmp_path: Path, extra: str, expected: str) -> None:
    """A misnamed plugin or a bad option stops start-up with one line naming it."""
    config = writeConfig(tmp_path, freePort(), extra)
    command, env = twistdCommand(tmp_path, "--config", str(config))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).decode().strip().splitlines()
    assert any(line.startswith("twistd mqttd: ") and expected in line for line in lines), lines


def test_pluginConfigErrorCarriesKey() -> None:
    """PluginConfigError keeps the key and reason the loader reports."""
    error = PluginConfigError("file", "required")
    assert (error.key, error.why) == ("file", "required")


def test_hangupReloadsPluginsAndForgetsAnswers(tmp_path: Path) -> None:
    """
    The service built from a config registers passwordfile and aclfile for SIGHUP; its reload
    path (what the signal handler calls) re-reads both files and clears the broker's cached ACL
    answers, with no connection touched.
    """
    from twisted.internet.testing import MemoryReactorClock

    from mqttd.config import load_config
    from mqttd.service import makeBrokerService

    cli(["passwd", "-c", "-b", str(tmp_path / "passwd"), "alice", "one"])
    (tmp_path / "acl").write_text("user alice\ntopic read a\n")
    config = tmp_path / "mqttd.ini"
    config.write_text(
        "[auth]\nchain = passwordfile\n[acl]\nchain = aclfile\n"
        "[plugin:passwordfile]\nfile = passwd\n[plugin:aclfile]\nfile = acl\n"
        "[listener:main]\nendpoint = tcp:0\n"
    )
    service = makeBrokerService(load_config(str(config)), MemoryReactorClock())
    assert set(service.reloadable) == {"passwordfile", "aclfile"}
    broker = service.broker
    client = ClientInfo("c", "alice", "", "main")
    assert broker.policy.decide(client, Action.RECEIVE, "b") is False
    cli(["passwd", "-b", str(tmp_path / "passwd"), "alice", "two"])
    (tmp_path / "acl").write_text("user alice\ntopic read b\n")
    service.reload()
    assert broker.policy.decide(client, Action.RECEIVE, "b") is True
    (authenticator,) = broker.authenticators
    assert authenticator.authenticate(credentials("alice", b"two")) == Allow("alice")
