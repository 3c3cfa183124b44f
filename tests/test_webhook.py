"""
The webhook plugin against a twisted.web receiver on 127.0.0.1, with a real broker and paho-mqtt
clients: events arrive as JSON, a 500 is retried, a receiver that is down fills the queue and
the rest is dropped and counted, and a receiver that never answers does not slow the broker.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from mqttd.config import ConfigError
from mqttd.interfaces import IBrokerAware, IBrokerObserver, PluginContext
from mqttd.plugin_loader import buildPlugin, findPlugins, pluginPackage
from tests import e2e

pluginPackage()
EVENTS = importlib.import_module("mqttd.plugins.webhook").EVENTS


class Receiver(Resource):
    """Records each POSTed JSON body; answers with C{codes} in turn (then 200), or never."""

    isLeaf = True

    def __init__(self, codes: list[int] | None = None, hang: bool = False) -> None:
        super().__init__()
        self.codes = list(codes or [])
        self.hang = hang
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.waiting: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        self.attempts += 1
        assert request.getHeader("content-type") == "application/json"
        assert request.content is not None
        if self.hang:
            self.waiting.append(request)
            return NOT_DONE_YET
        code = self.codes.pop(0) if self.codes else 200
        request.setResponseCode(code)
        if code == 200:
            self.events.append(json.loads(request.content.read()))
        return b"ok"


@dataclass
class Setup:
    broker: e2e.RunningBroker
    hook: Any
    receiver: Receiver
    port: IListeningPort | None
    clients: list[e2e.Client] = field(default_factory=list)

    def client(self, clientId: str, **kwargs: Any) -> e2e.Client:
        c = e2e.Client(self.broker.port, clientId, **kwargs)
        self.clients.append(c)
        return c

    def events(self, kind: str) -> list[dict[str, Any]]:
        return self.broker.call(lambda: [e for e in self.receiver.events if e["event"] == kind])


def _listen(resource: Resource) -> IListeningPort:
    port: IListeningPort = e2e.in_reactor(
        lambda: serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(Site(resource))
    )
    return port


@pytest.fixture
def webhook(twisted_reactor: None) -> Iterator[Any]:
    """C{webhook(receiver, **options)} starts a broker whose webhook posts to C{receiver}."""
    made: list[Setup] = []
    e2e.REACTOR.takeErrors()

    def start(receiver: Receiver | None, **options: str) -> Setup:
        port = _listen(receiver) if receiver is not None else None
        if port is not None:
            url = f"http://{e2e.HOST}:{port.getHost().port}/hook"  # type: ignore[attr-defined]
        else:
            # A port nothing listens on: bound, then closed again.
            closed = _listen(Resource())
            url = f"http://{e2e.HOST}:{closed.getHost().port}/hook"  # type: ignore[attr-defined]
            e2e.in_reactor(closed.stopListening)
        context = PluginContext(reactor=e2e.reactor, configDirectory=".", brokerConfig=None)
        hook = findPlugins()["webhook"].build({"url": url, **options}, context)
        broker = e2e.start_broker(plugins=lambda: {"observers": [hook]})
        e2e.in_reactor(hook.attach, broker.broker)
        setup = Setup(broker, hook, receiver or Receiver(), port)
        made.append(setup)
        return setup

    yield start
    for setup in made:
        for c in setup.clients:
            c.close()
        setup.broker.stop()
        e2e.in_reactor(setup.hook.detach)
        for request in setup.receiver.waiting:
            e2e.in_reactor(request.finish)
        if setup.port is not None:
            e2e.in_reactor(setup.port.stopListening)
    e2e.REACTOR.takeErrors()


def test_providesItsInterfaces() -> None:
    """The plugin is an observer that is told of the broker."""
    context = PluginContext(reactor=e2e.reactor, configDirectory=".", brokerConfig=None)
    hook = findPlugins()["webhook"].build({"url": "http://127.0.0.1:1/"}, context)
    verifyObject(IBrokerObserver, hook)
    verifyObject(IBrokerAware, hook)


def test_eventsDelivered(webhook: Any) -> None:
    """
    A connection, a subscription, a published message (within the chosen topics; another
    outside them is not sent), its delivery and acknowledgement, the unsubscription and the
    disconnection each reach the receiver as JSON.
    """
    setup = webhook(Receiver(), topics="sensors/#", events=",".join(EVENTS))
    c = setup.client("dev", setup=lambda p: p.username_pw_set("ann"))
    c.subscribe("sensors/#", 1)
    c.publish("sensors/1", b"21.5", 1)
    c.publish("other/1", b"x", 1)
    c.wait_for(1)
    c.paho.unsubscribe("sensors/#")
    e2e.wait_until(lambda: bool(setup.events("session.unsubscribed")), "the unsubscription")
    c.disconnect()
    e2e.wait_until(lambda: bool(setup.events("client.disconnected")), "the disconnection event")
    (connected,) = setup.events("client.connected")
    assert connected["clientid"] == "dev" and connected["username"] == "ann"
    assert connected["address"] == e2e.HOST
    (subscribed,) = setup.events("session.subscribed")
    assert (subscribed["topic"], subscribed["qos"]) == ("sensors/#", 1)
    (published,) = setup.events("message.published")
    assert (published["topic"], published["payload"], published["qos"]) == ("sensors/1", "21.5", 1)
    (delivered,) = setup.events("message.delivered")
    assert delivered["clientid"] == "dev"
    (acknowledged,) = setup.events("message.acknowledged")
    assert (acknowledged["clientid"], acknowledged["qos"]) == ("dev", 1)
    (unsubscribed,) = setup.events("session.unsubscribed")
    assert unsubscribed["topic"] == "sensors/#"
    assert setup.events("client.disconnected")[0]["graceful"] is True


def test_retriedAfter500(webhook: Any) -> None:
    """An event answered 500 is posted again after the retry delay and then counted as sent."""
    receiver = Receiver(codes=[500])
    setup = webhook(receiver, events="message.published", retry_delay="0.01")
    setup.client("pub").publish("t", b"once", 1)
    e2e.wait_until(lambda: setup.broker.call(lambda: setup.hook.sent) == 1, "the retried event")
    assert [e["payload"] for e in setup.events("message.published")] == ["once"]
    assert setup.broker.call(lambda: (receiver.attempts, setup.hook.failed)) == (2, 0)


def test_receiverDownQueueFullDropsCounted(webhook: Any) -> None:
    """
    With the receiver down, events beyond the queue's size are dropped and counted, those that
    were queued fail after their retries, and the counts are published retained in $SYS.
    """
    setup = webhook(
        None,
        events="message.published",
        queue_size="2",
        concurrency="1",
        retries="1",
        retry_delay="0.01",
        sys_interval="0.05",
    )
    publisher = setup.client("pub")
    for i in range(10):
        publisher.publish(f"t/{i}", b"x", 1)
    hook = setup.hook
    e2e.wait_until(
        lambda: setup.broker.call(lambda: hook.dropped + hook.failed + hook.sent) == 10,
        "every event to be settled",
    )
    assert setup.broker.call(lambda: hook.sent) == 0
    assert setup.broker.call(lambda: hook.dropped) >= 7
    expected = {
        "$SYS/broker/webhook/sent": b"0",
        "$SYS/broker/webhook/failed": str(hook.failed).encode(),
        "$SYS/broker/webhook/dropped": str(hook.dropped).encode(),
    }

    def published() -> dict[str, bytes]:
        retained = setup.broker.broker.retained
        return {t: m.payload for t in expected if (m := retained.get(t)) is not None}

    e2e.wait_until(lambda: setup.broker.call(published) == expected, "the counts in $SYS")
    watcher = setup.client("watcher")
    watcher.subscribe("$SYS/broker/webhook/#", 0)
    assert {m.topic: m.payload for m in watcher.wait_for(3)} == expected


def test_hangingReceiverDoesNotSlowTheBroker(webhook: Any) -> None:
    """
    A receiver that accepts requests and never answers holds the webhook's every slot, yet
    every QoS 1 message still goes from publisher to subscriber: the broker never waits on it.
    """
    receiver = Receiver(hang=True)
    setup = webhook(receiver, concurrency="2", timeout="30", events=",".join(EVENTS))
    subscriber = setup.client("sub")
    subscriber.subscribe("load/#", 1)
    publisher = setup.client("pub")
    for i in range(50):
        publisher.publish(f"load/{i}", str(i).encode(), 1)
    got = subscriber.wait_for(50)
    assert [m.payload for m in got] == [str(i).encode() for i in range(50)]
    assert setup.broker.call(lambda: len(receiver.waiting)) == 2
    # Each message's publication, delivery and acknowledgement wait in the queue.
    assert setup.broker.call(lambda: len(setup.hook._queue)) > 100


def test_badOptionsNamed() -> None:
    """A bad option stops start-up with its key named."""
    context = PluginContext(reactor=e2e.reactor, configDirectory=".", brokerConfig=None)
    for options, key in (
        ({}, "url"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://x", "events": "message.eaten"}, "events"),
        ({"url": "http://x", "topics": "a/#/b"}, "topics"),
        ({"url": "http://x", "queue_size": "0"}, "queue_size"),
        ({"url": "http://x", "timeout": "-1"}, "timeout"),
    ):
        with pytest.raises(ConfigError) as caught:
            buildPlugin(
                "webhook",
                options,
                context,
                file="mqttd.ini",
                section="observers",
                key="chain",
                available=findPlugins(),
            )
        assert caught.value.key == key, options


def test_defaultEventsLeavePerDeliveryOnesOut(webhook: Any) -> None:
    """
    Without events, a message is posted once (published), not once more per subscriber
    (delivered, acknowledged).
    """
    setup = webhook(Receiver())
    sub = setup.client("sub")
    sub.subscribe("t", 1)
    setup.client("pub").publish("t", b"x", 1)
    sub.wait_for(1)
    e2e.wait_until(lambda: bool(setup.events("message.published")), "the published event")
    kinds = setup.broker.call(lambda: sorted({e["event"] for e in setup.receiver.events}))
    assert "message.delivered" not in kinds and "message.acknowledged" not in kinds
