"""
The broker's plugin call sites on the in-memory harness: authenticator and authorizer chains,
the receive ACL, subscriber selectors and observers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mqttd.codec.packets import (
    Connack,
    Connect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Suback,
    Subscribe,
    Unsubscribe,
    Will,
)
from mqttd.config import ListenerConfig
from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    Deny,
    IAuthenticator,
    IAuthorizer,
    IBrokerObserver,
    ISubscriberSelector,
)
from mqttd.message import Message
from tests.harness import Client, World

CLOSED = ListenerConfig("closed", "tcp:0", allow_anonymous=False)
OPEN = ListenerConfig("open", "tcp:0", allow_anonymous=True)


@implementer(IAuthenticator)
class Fixed:
    """Answers every CONNECT the same way and records who asked."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[Credentials] = []

    def authenticate(self, credentials: Credentials) -> Any:
        self.asked.append(credentials)
        return self.answer


@implementer(IAuthorizer)
class Rules:
    """Answers from a dict keyed by (action, topic); abstains otherwise; counts calls."""

    def __init__(self, rules: dict[tuple[Action, str], Any]) -> None:
        self.rules = rules
        self.calls = 0

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
        self.calls += 1
        return self.rules.get((action, topic))


def connack(world: World, username: str | None = None, password: bytes | None = None) -> int:
    client = world.client()
    client.send(Connect(4, "c", username=username, password=password))
    (answer,) = client.read()
    assert isinstance(answer, Connack)
    return answer.return_code


def test_firstNonAbstainingAuthenticatorDecides() -> None:
    """The chain asks in order and stops at the first answer that is not an abstention."""
    world = World(listener=CLOSED)
    abstain, deny, never = Fixed(None), Fixed(Deny(4)), Fixed(Allow())
    world.broker.authenticators = (abstain, deny, never)
    # Refused, so the Allow after the Deny was never asked; a failed login is always 5 at 3.1.1.
    assert connack(world, "u", b"p") == 5
    assert len(abstain.asked) == 1 and len(deny.asked) == 1 and never.asked == []
    asked = abstain.asked[0]
    assert (asked.username, asked.password, asked.listener) == ("u", b"p", "closed")


def test_allAbstainDeniesUnlessAnonymous() -> None:
    """
    When every authenticator abstains a client without a user name is accepted only on an
    allow_anonymous listener, and a client whose user name nobody recognised never is.
    """
    closed = World(listener=CLOSED)
    closed.broker.authenticators = (Fixed(None),)
    assert connack(closed) == 5
    opened = World(listener=OPEN)
    opened.broker.authenticators = (Fixed(None),)
    assert connack(opened) == 0
    assert connack(opened, "stranger", b"x") == 5


def test_listenerChainOverridesGlobal() -> None:
    """A listener's own C{auth} chain replaces C{[auth] chain} for its clients only."""
    world = World(listener=CLOSED)
    world.broker.authenticators = (Fixed(Deny()),)
    world.broker.listenerAuthenticators = {"closed": (Fixed(Allow("renamed")),)}
    assert connack(world, "u", b"p") == 0
    assert world.broker.clients["c"].username == "renamed"


def test_deferredAuthenticatorHoldsLaterPackets() -> None:
    """
    While an authenticator's Deferred is outstanding the client's next packets wait, and are
    handled in order once it fires.
    """
    world = World(listener=CLOSED)
    pending: Deferred[Any] = Deferred()
    world.broker.authenticators = (Fixed(pending),)
    client = world.client()
    client.send(Connect(4, "c", username="u", password=b"p"), Subscribe(1, [("t", 0)]))
    assert client.read() == []
    pending.callback(Allow())
    packets = client.read()
    assert [type(p) for p in packets] == [Connack, Suback]


def test_failingAuthenticatorDenies() -> None:
    """An authenticator that raises refuses the client (fail closed)."""
    world = World(listener=OPEN)

    @implementer(IAuthenticator)
    class Broken:
        def authenticate(self, credentials: Credentials) -> Any:
            raise RuntimeError("backend down")

    world.broker.authenticators = (Broken(),)
    assert connack(world) == 5


def aclWorld(rules: dict[tuple[Action, str], Any]) -> tuple[World, Rules]:
    world = World()
    authorizer = Rules(rules)
    world.broker.authorizers = (authorizer,)
    return world, authorizer


def test_publishDeniedIsAcknowledgedAndDropped() -> None:
    """A denied QoS 1 PUBLISH still gets its PUBACK (as mosquitto), but reaches nobody."""
    world, _ = aclWorld({(Action.SUBSCRIBE, "t"): True, (Action.RECEIVE, "t"): True})
    subscriber = world.subscriber("sub", ("t", 1))
    publisher = world.connect("pub")
    publisher.send(Publish("t", b"x", qos=1, packet_id=7))
    assert publisher.read() == [Puback(7)]
    assert subscriber.publishes() == []
    assert world.broker.stats.messagesDropped == 1


def test_subscribeDeniedGetsFailureCode() -> None:
    """A filter the ACL denies is answered 0x80 in SUBACK [MQTT-3.9.3-2]; the others granted."""
    world, _ = aclWorld({(Action.SUBSCRIBE, "ok"): True})
    client = world.connect("c")
    client.send(Subscribe(1, [("ok", 1), ("no", 1)]))
    assert client.read() == [Suback(1, [1, 0x80])]
    assert world.broker.sessions["c"].subscriptions == {"ok": 1}


def test_receiveCheckedPerDeliveryIncludingRetainedAndWills() -> None:
    """
    Delivery needs RECEIVE: a live message, a retained one and a will to a topic the subscriber
    may not read all stay away from it, while another subscriber receives them.
    """
    rules = {(Action.SUBSCRIBE, "#"): True, (Action.PUBLISH, "t"): True}
    world, authorizer = aclWorld(rules)
    reader = ClientInfo("reader", None, "", "test")
    authorizer.rules[(Action.RECEIVE, "t")] = True
    world.broker.route(Message("t", b"kept", 1, retain=True))

    @implementer(IAuthorizer)
    class OnlyReader:
        def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
            if action == Action.RECEIVE and client.clientId != reader.clientId:
                return False
            return None

    world.broker.authorizers = (OnlyReader(), authorizer)
    allowed = world.connect("reader")
    denied = world.connect("other")
    for client in (allowed, denied):
        client.send(Subscribe(1, [("#", 1)]))
    assert [p.payload for p in allowed.publishes()] == [b"kept"]
    assert denied.publishes() == []
    dying = world.connect("dying", will=Will("t", b"will", 1, False))
    dying.drop()
    assert [p.payload for p in allowed.publishes()] == [b"will"]
    assert denied.publishes() == []


def test_decisionsCachedUntilAuthorizationChanged() -> None:
    """
    Repeated messages on one topic ask the authorizer once per client; a reload
    (L{Broker.authorizationChanged}) makes the broker ask again.
    """
    world, authorizer = aclWorld(
        {(Action.SUBSCRIBE, "t"): True, (Action.RECEIVE, "t"): True, (Action.PUBLISH, "t"): True}
    )
    subscriber = world.subscriber("sub", ("t", 0))
    publisher = world.connect("pub")
    for _ in range(3):
        publisher.send(Publish("t", b"x"))
    assert len(subscriber.publishes()) == 3
    assert authorizer.calls == 3  # subscribe, publish, receive: once each
    world.broker.authorizationChanged()
    publisher.send(Publish("t", b"x"))
    assert authorizer.calls == 5


def test_resumedSessionSubscriptionsRechecked() -> None:
    """
    When a persistent session resumes, the subscriptions the ACL now denies are removed, the
    others kept.
    """
    world, authorizer = aclWorld(
        {(Action.SUBSCRIBE, "keep"): True, (Action.SUBSCRIBE, "lose"): True}
    )
    client = world.subscriber("p", ("keep", 1), ("lose", 1), clean=False)
    client.drop()
    authorizer.rules[(Action.SUBSCRIBE, "lose")] = False
    world.broker.authorizationChanged()
    world.connect("p", clean=False)
    assert world.broker.sessions["p"].subscriptions == {"keep": 1}
    assert world.broker.subscriptions.match("lose") == {}


def test_deferredReceiveChecksKeepOrder() -> None:
    """
    When an authorizer answers RECEIVE with a Deferred, later deliveries to that client wait
    behind it, so the client still gets messages in publish order [MQTT-4.6.0-6].
    """
    world = World()
    waiting: list[Deferred[bool]] = []

    @implementer(IAuthorizer)
    class Slow:
        def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
            if action == Action.RECEIVE and topic == "slow":
                d: Deferred[bool] = Deferred()
                waiting.append(d)
                return d
            return True

    world.broker.authorizers = (Slow(),)
    subscriber = world.subscriber("sub", ("#", 0))
    world.broker.route(Message("slow", b"1"))
    world.broker.route(Message("fast", b"2"))
    assert subscriber.publishes() == []
    waiting[0].callback(True)
    assert [p.payload for p in subscriber.publishes()] == [b"1", b"2"]


def test_noAuthorizerAsksNothing() -> None:
    """With no authorizer the broker keeps no decision cache: the hot path pays nothing."""
    world = World()
    subscriber = world.subscriber("sub", ("t", 0))
    world.connect("pub").send(Publish("t", b"x"))
    assert len(subscriber.publishes()) == 1
    assert world.broker.policy.decisions == {}


@implementer(ISubscriberSelector)
class Group:
    def __init__(self, members: list[tuple[Any, ...]]) -> None:
        self.members = members

    def select(self, message: Message, publisher: ClientInfo | None) -> Any:
        return self.members if message.topic == "group/g" else ()


def test_selectorAddsRecipientsOnce() -> None:
    """
    A selector's recipients get the message once (at the higher QoS when a subscription also
    matches); unknown client ids are skipped; a topic override is a separate delivery.
    """
    world = World()
    world.broker.selectors = (Group([("a", 1), ("b", 0), ("ghost", 1), ("b", 1, "inbox/b")]),)
    a = world.subscriber("a", ("group/#", 0))
    b = world.connect("b")
    world.connect("pub").send(Publish("group/g", b"hi", qos=1, packet_id=1))
    (toA,) = a.publishes()
    assert (toA.topic, toA.qos) == ("group/g", 1)
    assert sorted((p.topic, p.qos) for p in b.publishes()) == [("group/g", 0), ("inbox/b", 1)]


def test_noPluginChosenTopicThatIsNoTopicName() -> None:
    """
    Whatever topic a plugin chooses, no PUBLISH goes out on one that is no topic name: a
    selector's override with a wildcard, U+0000 or more than C{max_topic_levels} levels, a
    message a plugin routes or hands one client on such a topic, are each dropped and counted,
    while the valid override beside them is delivered [MQTT-3.3.2-2, MQTT-1.5.4-2].
    """
    world = World(max_topic_levels=8)
    bad = ("inbox/b/#", "inbox/+/x", "inbox/\0", "/".join("x" * 9))
    world.broker.selectors = (Group([*(("b", 1, t) for t in bad), ("b", 1, "inbox/b")]),)
    b = world.subscriber("b", ("news/#", 1))
    world.connect("pub").send(Publish("group/g", b"hi", qos=1, packet_id=1))
    assert [p.topic for p in b.publishes()] == ["inbox/b"]
    assert world.broker.route(Message("news/#", b"x", 1)) is False
    assert world.broker.deliverTo("b", Message("news/+", b"x", 1), 1)
    assert b.publishes() == []
    assert world.broker.stats.messagesDropped == len(bad) + 2


@implementer(IBrokerObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def clientConnected(self, client: ClientInfo) -> None:
        self.events.append(("connected", client.clientId))

    def clientDisconnected(self, client: ClientInfo, graceful: bool) -> None:
        self.events.append(("disconnected", client.clientId, graceful))

    def subscribed(self, client: ClientInfo, topicFilter: str, qos: int) -> None:
        self.events.append(("subscribed", client.clientId, topicFilter))

    def unsubscribed(self, client: ClientInfo, topicFilter: str) -> None:
        self.events.append(("unsubscribed", client.clientId, topicFilter))

    def messagePublished(self, client: ClientInfo | None, message: Any) -> None:
        self.events.append(("published", message.topic))

    def messageDelivered(self, clientId: str, message: Any, qos: int) -> None:
        self.events.append(("delivered", clientId, message.topic))

    def messageAcknowledged(self, clientId: str, message: Any, qos: int) -> None:
        self.events.append(("acknowledged", clientId, message.topic, qos))

    def messageDropped(self, clientId: str | None, message: Any, reason: str) -> None:
        self.events.append(("dropped", clientId, reason))


def test_observersSeeEventsAndCannotBreakTheBroker() -> None:
    """
    Observers hear subscribe, publish, delivery and disconnect; one that raises is logged and
    skipped, and the next observer and the delivery are unaffected.
    """

    @implementer(IBrokerObserver)
    class Raising(Recorder):
        def messagePublished(self, client: ClientInfo | None, message: Any) -> None:
            raise RuntimeError("observer bug")

    recorder = Recorder()
    world = World()
    world.broker.observers = (Raising(), recorder)
    subscriber: Client = world.subscriber("sub", ("t", 0))
    world.connect("pub").send(Publish("t", b"x"))
    assert len(subscriber.publishes()) == 1
    subscriber.drop()
    assert recorder.events == [
        ("connected", "sub"),
        ("subscribed", "sub", "t"),
        ("connected", "pub"),
        ("published", "t"),
        ("delivered", "sub", "t"),
        ("disconnected", "sub", False),
    ]


def test_observersSeeAcknowledgementsAndUnsubscriptions() -> None:
    """
    A QoS 1 delivery's PUBACK and a QoS 2 delivery's PUBCOMP are reported as acknowledged (not
    before), an UNSUBSCRIBE as unsubscribed, and so is an operator's removal of a subscription.
    """
    recorder = Recorder()
    world = World()
    world.broker.observers = (recorder,)
    subscriber = world.subscriber("sub", ("q1", 1), ("q2", 2), ("op", 0))
    publisher = world.connect("pub")
    publisher.send(Publish("q1", b"x", qos=1, packet_id=1), Publish("q2", b"y", qos=2, packet_id=2))
    (first, second) = subscriber.publishes()
    assert first.packet_id is not None and second.packet_id is not None
    acknowledged = [e for e in recorder.events if e[0] == "acknowledged"]
    assert acknowledged == []
    subscriber.send(Puback(first.packet_id))
    subscriber.send(Pubrec(second.packet_id))
    subscriber.read()
    assert [e for e in recorder.events if e[0] == "acknowledged"] == [
        ("acknowledged", "sub", "q1", 1)
    ]
    subscriber.send(Pubcomp(second.packet_id))
    assert [e for e in recorder.events if e[0] == "acknowledged"] == [
        ("acknowledged", "sub", "q1", 1),
        ("acknowledged", "sub", "q2", 2),
    ]
    subscriber.send(Unsubscribe(3, ["q1", "never"]))
    assert world.broker.unsubscribeFor("sub", "op")
    assert [e for e in recorder.events if e[0] == "unsubscribed"] == [
        ("unsubscribed", "sub", "q1"),
        ("unsubscribed", "sub", "op"),
    ]
