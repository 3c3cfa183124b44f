"""
MQTT 5.0 enhanced authentication (sections 4.12 and 3.15) on the in-memory harness: the AUTH
exchange through L{IEnhancedAuthenticator}, its failures, re-authentication, and the shipped
SCRAM-SHA-256 plugin and its C{mqttd scram} command.  Statement ids are those of
../shared/spec/mqtt-v5.0-normative.txt.
"""

from __future__ import annotations

import base64
import importlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqttd.cli import main as cli
from mqttd.codec import Properties, ReasonCode
from mqttd.codec.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
    Subscribe,
)
from mqttd.config import BrokerConfig
from mqttd.interfaces import (
    Allow,
    Continue,
    Credentials,
    Deny,
    IAuthenticator,
    IEnhancedAuthenticator,
    IReloadable,
    PluginConfigError,
    PluginContext,
    ReloadError,
)
from mqttd.plugin_loader import findPlugins, pluginPackage
from tests.harness import Client, World
from tests.scram_client import ScramClient

pluginPackage()
scram = importlib.import_module("mqttd.plugins.scram")

METHOD = "TEST"


@implementer(IEnhancedAuthenticator)
class Challenge:
    """
    Asks for b"response" to b"challenge" and allows as C{identity}; each answer is a Deferred
    left to the test when C{deferred} is set.
    """

    authenticationMethod = METHOD

    def __init__(self, identity: str = "alice") -> None:
        self.identity = identity
        self.deferred: Deferred[Any] | None = None
        self.starts: list[tuple[Credentials, bytes | None]] = []

    def authenticate(self, credentials: Credentials) -> None:
        return None

    def _answer(self, value: Any) -> Any:
        if self.deferred is not None:
            return self.deferred
        return value

    def startAuthentication(self, credentials: Credentials, authData: bytes | None) -> Any:
        self.starts.append((credentials, authData))
        if authData == b"raise":
            raise RuntimeError("authenticator bug")
        return self._answer(Continue(b"challenge", len(self.starts)))

    def continueAuthentication(self, state: Any, authData: bytes | None) -> Any:
        assert state == len(self.starts)
        if authData == b"response":
            return self._answer(Allow(self.identity, b"welcome"))
        if authData == b"forbidden":
            return Deny(5, "not this one")
        if authData == b"shrug":
            return None
        return Deny(4, "wrong response")


def world(authenticator: Any, **options: Any) -> World:
    made = World(**options)
    made.broker.authenticators = (authenticator,)
    return made


def auth(code: int, data: bytes | None, method: str = METHOD) -> Auth:
    return Auth(code, Properties(authentication_method=method, authentication_data=data))


def begin(w: World, data: bytes = b"hello", clientId: str = "c") -> Client:
    """A 5.0 client that sent CONNECT with the test method."""
    client = w.client(level=5)
    client.send(
        Connect(
            5,
            clientId,
            properties=Properties(authentication_method=METHOD, authentication_data=data),
        )
    )
    return client


def authenticated(w: World) -> Client:
    """A 5.0 client through the test method's exchange, its CONNACK read."""
    client = begin(w)
    assert client.read() == [auth(ReasonCode.CONTINUE_AUTHENTICATION, b"challenge")]
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"))
    [connack] = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0
    return client


def refusal(client: Client) -> int:
    """The code of the one CONNACK the client got, the connection being closed."""
    [connack] = client.read()
    assert isinstance(connack, Connack) and client.closed
    return connack.return_code


def test_exchange() -> None:
    """
    CONNECT with an Authentication Method is answered AUTH 0x18 [MQTT-4.12.0-2]; the client's
    AUTH 0x18 [MQTT-4.12.0-3] completes it; every AUTH and the CONNACK carry the method
    [MQTT-4.12.0-5], the CONNACK with the authenticator's last data.  The client is then known
    by the identity allowed and uses the connection as any other.
    """
    authenticator = Challenge()
    w = world(authenticator)
    client = begin(w)
    assert client.read() == [auth(ReasonCode.CONTINUE_AUTHENTICATION, b"challenge")]
    [(credentials, data)] = authenticator.starts
    assert credentials.clientId == "c" and data == b"hello"
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"))
    [connack] = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0
    assert connack.properties.authentication_method == METHOD
    assert connack.properties.authentication_data == b"welcome"
    assert w.broker.clients["c"].username == "alice"
    client.send(Subscribe(1, [("t", 0)]), Publish("t", b"x"))
    assert [p.payload for p in client.publishes()] == [b"x"]


def test_deferred_steps_hold_packets() -> None:
    """An authenticator answering later holds the client's packets until it does."""
    authenticator = Challenge()
    started: Deferred[Any] = Deferred()
    authenticator.deferred = started
    w = world(authenticator)
    client = begin(w)
    assert client.read() == []
    allowed: Deferred[Any] = Deferred()
    authenticator.deferred = allowed
    started.callback(Continue(b"challenge", 1))
    assert client.read() == [auth(ReasonCode.CONTINUE_AUTHENTICATION, b"challenge")]
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"), Pingreq())
    assert client.read() == []
    allowed.callback(Allow("alice"))
    connack, pong = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0
    assert connack.properties.authentication_data is None
    assert pong == Pingresp()


def test_unknown_method() -> None:
    """A method no authenticator offers gets CONNACK 0x8C and the close [MQTT-4.12.0-1]."""
    w = world(Challenge())
    client = w.client(level=5)
    client.send(Connect(5, "c", properties=Properties(authentication_method="OTHER")))
    assert refusal(client) == ReasonCode.BAD_AUTHENTICATION_METHOD


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (b"wrong", ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (b"forbidden", ReasonCode.NOT_AUTHORIZED),
        (b"shrug", ReasonCode.NOT_AUTHORIZED),
    ],
)
def test_refused(response: bytes, code: int) -> None:
    """
    The authenticator rejects the exchange: CONNACK 0x86 or 0x87 and the close
    [MQTT-4.12.0-4]; an abstention refuses too.
    """
    w = world(Challenge())
    client = begin(w)
    client.read()
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, response))
    assert refusal(client) == code
    assert "c" not in w.broker.sessions


def test_failing_authenticator() -> None:
    """An authenticator that raises refuses the client (fail closed) with CONNACK 0x87."""
    w = world(Challenge())
    client = begin(w, b"raise")
    assert refusal(client) == ReasonCode.NOT_AUTHORIZED


def test_failed_deferred() -> None:
    """A failed Deferred refuses the client as a raise does."""
    authenticator = Challenge()
    authenticator.deferred = Deferred()
    w = world(authenticator)
    client = begin(w)
    authenticator.deferred.errback(RuntimeError("backend down"))
    assert refusal(client) == ReasonCode.NOT_AUTHORIZED


@pytest.mark.parametrize(
    "packet",
    [
        Pingreq(),
        Subscribe(1, [("t", 0)]),
        Publish("t", b"x"),
        auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response", method="OTHER"),
        auth(ReasonCode.RE_AUTHENTICATE, b"response"),
    ],
)
def test_protocol_errors_during_exchange(packet: Any) -> None:
    """
    Before CONNACK only AUTH and DISCONNECT may come [MQTT-3.1.2-30], AUTH only with 0x18
    [MQTT-4.12.0-3] and the CONNECT's method [MQTT-4.12.0-5]: anything else is answered
    CONNACK 0x82 and the close.
    """
    w = world(Challenge())
    client = begin(w)
    client.read()
    client.send(packet)
    assert refusal(client) == ReasonCode.PROTOCOL_ERROR


def test_disconnect_during_exchange() -> None:
    """A client may give up with DISCONNECT: the connection closes, nothing is answered."""
    w = world(Challenge())
    client = begin(w)
    client.read()
    client.send(Disconnect())
    assert client.read() == [] and client.closed


def test_connect_timeout_covers_exchange() -> None:
    """The CONNECT timeout runs until CONNACK, so a stalled exchange is dropped."""
    w = world(Challenge(), connect_timeout=5.0)
    client = begin(w)
    client.read()
    w.clock.advance(4)
    assert not client.closed
    w.clock.advance(1)
    assert client.closed and client.read() == []


def test_no_method_no_auth() -> None:
    """
    Without an Authentication Method the exchange never starts: no AUTH and no method in
    CONNACK [MQTT-4.12.0-6]; an enhanced authenticator's plain authenticate still decides.
    """
    w = world(Challenge())
    client = w.connect("c", level=5)
    assert client.connack.properties.authentication_method is None  # type: ignore[attr-defined]
    assert client.read() == []


def test_reauthentication() -> None:
    """
    After CONNACK the client re-authenticates with AUTH 0x19 and the same method
    [MQTT-4.12.1-1]: the exchange runs again, ending in AUTH 0x00 with the method
    [MQTT-4.12.0-5]; the session carries on.
    """
    authenticator = Challenge()
    w = world(authenticator)
    client = authenticated(w)
    client.send(auth(ReasonCode.RE_AUTHENTICATE, b"again"))
    assert client.read() == [auth(ReasonCode.CONTINUE_AUTHENTICATION, b"challenge")]
    assert authenticator.starts[-1][1] == b"again"
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"))
    assert client.read() == [auth(ReasonCode.SUCCESS, b"welcome")]
    client.send(Pingreq())
    assert client.read() == [Pingresp()] and not client.closed


@pytest.mark.parametrize("response", [b"wrong", b"forbidden", b"shrug"])
def test_reauthentication_refused(response: bytes) -> None:
    """
    A failed re-authentication is answered DISCONNECT 0x87 (0x86 is no Disconnect Reason Code)
    and the close [MQTT-4.12.1-2].
    """
    w = world(Challenge())
    client = authenticated(w)
    client.send(auth(ReasonCode.RE_AUTHENTICATE, b"again"))
    client.read()
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, response))
    assert client.read() == [Disconnect(ReasonCode.NOT_AUTHORIZED)] and client.closed


def test_reauthentication_cannot_change_identity() -> None:
    """A re-authentication allowing another identity is refused: a connection keeps its user."""
    authenticator = Challenge()
    w = world(authenticator)
    client = authenticated(w)
    authenticator.identity = "mallory"
    client.send(auth(ReasonCode.RE_AUTHENTICATE, b"again"))
    client.read()
    client.send(auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"))
    assert client.read() == [Disconnect(ReasonCode.NOT_AUTHORIZED)] and client.closed


@pytest.mark.parametrize(
    "packet",
    [
        auth(ReasonCode.RE_AUTHENTICATE, b"again", method="OTHER"),
        auth(ReasonCode.CONTINUE_AUTHENTICATION, b"response"),
        auth(ReasonCode.SUCCESS, None),
    ],
)
def test_reauthentication_protocol_errors(packet: Auth) -> None:
    """
    After CONNACK, AUTH must be 0x19 with the connection's method [MQTT-4.12.1-1] or answer
    the broker's 0x18: otherwise DISCONNECT 0x82.
    """
    w = world(Challenge())
    client = authenticated(w)
    client.send(packet)
    assert client.read() == [Disconnect(ReasonCode.PROTOCOL_ERROR)] and client.closed


# The SCRAM-SHA-256 plugin


def scramFile(tmp_path: Path, *users: tuple[str, str]) -> str:
    path = str(tmp_path / "scram")
    for user, password in users:
        assert cli(["scram", "add", "-i", "4096", path, user, password]) == 0
    return path


def scramWorld(tmp_path: Path) -> World:
    plugin = scram.scram.build(
        {"file": scramFile(tmp_path, ("alice", "pencil"))}, context(tmp_path)
    )
    return world(plugin)


def context(directory: Path) -> PluginContext:
    return PluginContext(reactor=None, configDirectory=str(directory), brokerConfig=BrokerConfig())


def scramLogin(w: World, user: str, password: str) -> Client:
    """A 5.0 client through SCRAM-SHA-256 as far as the broker lets it."""
    login = ScramClient(user, password)
    client = w.client(level=5)
    properties = Properties(
        authentication_method="SCRAM-SHA-256", authentication_data=login.first()
    )
    client.send(Connect(5, "c", properties=properties))
    [challenge] = client.read()
    assert isinstance(challenge, Auth)
    assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
    assert challenge.properties.authentication_data is not None
    client.send(
        Auth(
            ReasonCode.CONTINUE_AUTHENTICATION,
            Properties(
                authentication_method="SCRAM-SHA-256",
                authentication_data=login.final(challenge.properties.authentication_data),
            ),
        )
    )
    client.login = login  # type: ignore[attr-defined]
    return client


def test_scram_plugin_provides(tmp_path: Path) -> None:
    """
    The plugin is found by name and provides the enhanced authenticator and reload interfaces
    it claims.
    """
    assert findPlugins()["scram"] is scram.scram
    plugin = scram.scram.build(
        {"file": scramFile(tmp_path, ("alice", "pencil"))}, context(tmp_path)
    )
    assert verifyObject(IEnhancedAuthenticator, plugin)
    assert verifyObject(IAuthenticator, plugin)
    assert verifyObject(IReloadable, plugin)


def test_scram_login(tmp_path: Path) -> None:
    """A SCRAM-SHA-256 login succeeds, and the server-final message proves the broker's keys."""
    w = scramWorld(tmp_path)
    client = scramLogin(w, "alice", "pencil")
    [connack] = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0
    assert connack.properties.authentication_method == "SCRAM-SHA-256"
    assert client.login.verified(connack.properties.authentication_data)  # type: ignore[attr-defined]
    assert w.broker.clients["c"].username == "alice"


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("bob", "pencil")])
def test_scram_refused(tmp_path: Path, user: str, password: str) -> None:
    """
    A wrong password, or an unknown user (who still gets a plausible challenge, so users cannot
    be enumerated), gets CONNACK 0x86 [MQTT-4.12.0-4].
    """
    w = scramWorld(tmp_path)
    client = scramLogin(w, user, password)
    assert refusal(client) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


def test_scram_user_name_mismatch(tmp_path: Path) -> None:
    """A CONNECT whose User Name is not the SCRAM user is refused with CONNACK 0x86 at once."""
    w = scramWorld(tmp_path)
    client = w.client(level=5)
    properties = Properties(
        authentication_method="SCRAM-SHA-256",
        authentication_data=ScramClient("alice", "pencil").first(),
    )
    client.send(Connect(5, "c", username="bob", properties=properties))
    assert refusal(client) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


@pytest.mark.parametrize(
    "first", [b"", b"p=tls-unique,,n=alice,r=x", b"n,,r=x", b"n,,m=ext,n=alice,r=x", b"\xff"]
)
def test_scram_bad_client_first(tmp_path: Path, first: bytes) -> None:
    """A client-first message that is malformed or asks for channel binding is refused."""
    plugin = scram.scram.build(
        {"file": scramFile(tmp_path, ("alice", "pencil"))}, context(tmp_path)
    )
    decision = plugin.startAuthentication(Credentials("c", None, None, None, "h", "l"), first)
    assert isinstance(decision, Deny) and decision.code == 4


def test_scram_rfc7677_vector(tmp_path: Path) -> None:
    """The proof and server signature of RFC 7677 section 3's example."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = scram.makeCredential(b"pencil", 4096, salt)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    serverFirst = f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    state = scram._Exchange(
        "user", credential, True, "n,,", "n=user,r=rOprNGfwEbeRWgbNEkqO", serverFirst, nonce
    )
    (tmp_path / "empty").write_text("")
    plugin = scram.ScramAuthenticator(str(tmp_path / "empty"))
    final = f"c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    decision = plugin.continueAuthentication(state, final.encode())
    assert decision == Allow("user", b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_plugin_abstains_without_method(tmp_path: Path) -> None:
    """A CONNECT without an Authentication Method is left to the rest of the chain."""
    plugin = scram.ScramAuthenticator(scramFile(tmp_path, ("alice", "pencil")))
    assert plugin.authenticate(Credentials("c", "alice", b"pencil", None, "h", "l")) is None


def test_scram_add_and_reload(tmp_path: Path) -> None:
    """
    C{mqttd scram add} writes C{user:salt:iterations:storedKey:serverKey} lines, replacing a
    user's; SIGHUP's reload picks them up and keeps the previous users on a bad file.
    """
    path = scramFile(tmp_path, ("alice", "one"))
    plugin = scram.ScramAuthenticator(path)
    assert cli(["scram", "add", path, "alice", "two"]) == 0
    assert cli(["scram", "add", "--iterations", "5000", path, "bob", "three"]) == 0
    lines = Path(path).read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert [len(line.split(":")) for line in lines] == [5, 5]
    plugin.reload()
    assert plugin.users["bob"].iterations == 5000
    assert plugin.users["alice"] == scram.makeCredential(b"two", 4096, plugin.users["alice"].salt)
    Path(path).write_text("broken\n")
    with pytest.raises(ReloadError, match=path):
        plugin.reload()
    assert set(plugin.users) == {"alice", "bob"}
    assert cli(["scram", "add", path, "a:b", "x"]) == 1


def test_scram_bad_file(tmp_path: Path) -> None:
    """An unusable credentials file stops the start with the option named."""
    (tmp_path / "bad").write_text("alice:notbase64!:4096:x:y\n")
    with pytest.raises(PluginConfigError) as e:
        scram.scram.build({"file": "bad"}, context(tmp_path))
    assert e.value.key == "file"
    with pytest.raises(PluginConfigError):
        scram.scram.build({"file": "missing"}, context(tmp_path))
