"""
C{webhook}: POSTs the broker's events as JSON to HTTP endpoints (EMQX's WebHook), with C{treq}.

An observer (C{[observers] chain = webhook}): each chosen event becomes a JSON object appended to
a bounded queue, and that is all the broker waits for.  A sender posts queued events to every
URL, a few at a time, each attempt bounded by C{timeout}; an attempt that fails (no connection,
a timeout, a status other than 2xx) is retried after C{retry_delay} seconds, doubling each time,
up to C{retries} times.  When the queue is full a new event is dropped and counted, as are events
that ran out of retries; the counts are published retained under C{$SYS/broker/webhook/} every
C{sys_interval} seconds while they change.

Options (C{[plugin:webhook]}):

=================  =======================================================================
C{url}             required: one URL, or several separated by commas, each getting every event
C{events}          which events, comma-separated: C{client.connected},
                   C{client.disconnected}, C{session.subscribed}, C{session.unsubscribed},
                   C{message.published}, C{message.delivered}, C{message.acknowledged},
                   C{message.dropped}; by default all but the three per-delivery ones
                   (delivered, acknowledged, dropped), which multiply a message by its
                   subscribers
C{topics}          topic filters the message events are limited to (default C{#})
C{queue_size}      events waiting at most (default 10000)
C{concurrency}     requests in flight at once (default 8)
C{timeout}         seconds one attempt may take (default 5)
C{retries}         attempts after the first (default 3)
C{retry_delay}     seconds before the first retry (default 1)
C{sys_interval}    seconds between C{$SYS} updates of the counts (default 10)
=================  =======================================================================

Each event is C{{"event": ..., "time": ..., ...}}: client events carry C{clientid},
C{username}, C{address} and C{listener} (C{client.disconnected} also C{graceful}),
C{session.subscribed} C{topic} and C{qos}, C{session.unsubscribed} C{topic}, message events
C{topic}, C{qos}, C{retain}, C{payload} (UTF-8 text, or base64 with C{"encoding": "base64"})
and the C{clientid} of the publisher or recipient (L{None} for the broker's own messages).
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.interfaces import (
    ClientInfo,
    IBrokerAware,
    IBrokerObserver,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message
from mqttd.plugin_loader import checkOptions
from mqttd.topics import InvalidTopic, filter_matches, validate_topic_filter

EVENTS = (
    "client.connected",
    "client.disconnected",
    "session.subscribed",
    "session.unsubscribed",
    "message.published",
    "message.delivered",
    "message.acknowledged",
    "message.dropped",
)
DEFAULT_EVENTS = tuple(
    e for e in EVENTS if e not in ("message.delivered", "message.acknowledged", "message.dropped")
)
SYS_PREFIX = "$SYS/broker/webhook/"


@implementer(IBrokerObserver, IBrokerAware)
class WebHook:
    """
    The observer and its sender.

    @ivar sent: events a URL answered 2xx.
    @ivar failed: events a URL never accepted, retries exhausted.
    @ivar dropped: events refused because the queue was full.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        urls: Sequence[str],
        *,
        events: Sequence[str] = DEFAULT_EVENTS,
        topics: Sequence[str] = ("#",),
        queueSize: int = 10000,
        concurrency: int = 8,
        timeout: float = 5.0,
        retries: int = 3,
        retryDelay: float = 1.0,
        sysInterval: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.urls = tuple(urls)
        self.events = frozenset(events)
        self.topics = tuple(topics)
        self.queueSize = queueSize
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.retryDelay = retryDelay
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        # (url, body) awaiting a free sender slot.
        self._queue: deque[tuple[str, bytes]] = deque()
        self._inFlight = 0
        self._client: Any = None
        self._pool: Any = None
        self.broker: Any = None
        self._published: tuple[int, int, int] | None = None
        self._sys = LoopingCall(self._publishCounts)
        self._sys.clock = reactor
        self._sysInterval = sysInterval

    # IBrokerAware

    def attach(self, broker: Any) -> None:
        # Imported here: a broker without webhooks never loads treq.
        import treq.client
        from twisted.web.client import Agent, HTTPConnectionPool

        self.broker = broker
        self._pool = HTTPConnectionPool(self.reactor)
        self._client = treq.client.HTTPClient(Agent(self.reactor, pool=self._pool))
        self._sys.start(self._sysInterval, now=False)

    def detach(self) -> None:
        if self._sys.running:
            self._sys.stop()
        self._queue.clear()
        if self._pool is not None:
            self._pool.closeCachedConnections()
        self.broker = None

    # IBrokerObserver

    def clientConnected(self, client: ClientInfo) -> None:
        if "client.connected" in self.events:
            self._enqueue({"event": "client.connected", **_client(client)})

    def clientDisconnected(self, client: ClientInfo, graceful: bool) -> None:
        if "client.disconnected" in self.events:
            self._enqueue({"event": "client.disconnected", **_client(client), "graceful": graceful})

    def subscribed(self, client: ClientInfo, topicFilter: str, qos: int) -> None:
        if "session.subscribed" in self.events:
            event = {"event": "session.subscribed", **_client(client)}
            self._enqueue({**event, "topic": topicFilter, "qos": qos})

    def unsubscribed(self, client: ClientInfo, topicFilter: str) -> None:
        if "session.unsubscribed" in self.events:
            self._enqueue(
                {"event": "session.unsubscribed", **_client(client), "topic": topicFilter}
            )

    def messagePublished(self, client: ClientInfo | None, message: Message) -> None:
        if "message.published" in self.events and self._chosen(message):
            clientId = client.clientId if client is not None else None
            self._enqueue(_message("message.published", clientId, message))

    def messageDelivered(self, clientId: str, message: Message, qos: int) -> None:
        if "message.delivered" in self.events and self._chosen(message):
            self._enqueue({**_message("message.delivered", clientId, message), "qos": qos})

    def messageAcknowledged(self, clientId: str, message: Message, qos: int) -> None:
        if "message.acknowledged" in self.events and self._chosen(message):
            self._enqueue({**_message("message.acknowledged", clientId, message), "qos": qos})

    def messageDropped(self, clientId: str | None, message: Message, reason: str) -> None:
        if "message.dropped" in self.events and self._chosen(message):
            self._enqueue({**_message("message.dropped", clientId, message), "reason": reason})

    def _chosen(self, message: Message) -> bool:
        return any(filter_matches(f, message.topic) for f in self.topics)

    # Sending

    def _enqueue(self, event: dict[str, Any]) -> None:
        room = self.queueSize - len(self._queue)
        if room < len(self.urls):
            # Counted before anything is encoded: a full queue costs the broker next to nothing.
            self.dropped += len(self.urls) - max(room, 0)
            if room <= 0:
                return
        event["time"] = self.reactor.seconds()
        body = json.dumps(event).encode("utf-8")
        for url in self.urls[:room]:
            self._queue.append((url, body))
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._inFlight < self.concurrency and self._client is not None:
            url, body = self._queue.popleft()
            self._inFlight += 1
            d = self._attempt(url, body, 0)
            d.addBoth(self._settled)

    def _attempt(self, url: str, body: bytes, tries: int) -> Deferred[None]:
        if self.broker is None:
            # Detached while a retry waited.
            return succeed(None)
        d: Deferred[None] = self._client.post(
            url,
            data=body,
            headers={b"Content-Type": [b"application/json"]},
            timeout=self.timeout,
        )
        d.addCallback(self._answered, url)
        d.addErrback(self._retry, url, body, tries)
        return d

    def _answered(self, response: Any, url: str) -> Deferred[None]:
        # Read the body so the connection goes back to the pool.
        d: Deferred[Any] = response.content()
        if 200 <= response.code < 300:
            return d.addCallback(lambda _: self._succeeded())
        return d.addCallback(lambda _: _raise(f"{url} answered {response.code}"))

    def _succeeded(self) -> None:
        self.sent += 1

    def _retry(self, failure: Failure, url: str, body: bytes, tries: int) -> Any:
        if self.broker is None:
            return None
        if tries >= self.retries:
            self.failed += 1
            self.log.warn(
                "webhook: gave up on an event for {url} after {n} attempts: {why}",
                url=url,
                n=tries + 1,
                why=failure.getErrorMessage(),
            )
            return None
        delay = self.retryDelay * (2**tries)
        return deferLater(self.reactor, delay, self._attempt, url, body, tries + 1)

    def _settled(self, result: object) -> None:
        self._inFlight -= 1
        if isinstance(result, Failure):
            self.log.failure("webhook: sending failed", result)
        self._pump()

    def _publishCounts(self) -> None:
        counts = (self.sent, self.failed, self.dropped)
        if counts == self._published or self.broker is None:
            return
        self._published = counts
        for name, value in zip(("sent", "failed", "dropped"), counts, strict=True):
            self.broker.route(Message(SYS_PREFIX + name, str(value).encode(), 0, True))


class _Refused(Exception):
    pass


def _raise(why: str) -> None:
    raise _Refused(why)


def _client(client: ClientInfo) -> dict[str, Any]:
    return {
        "clientid": client.clientId,
        "username": client.username,
        "address": client.address,
        "listener": client.listener,
    }


def _message(event: str, clientId: str | None, message: Message) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = {"payload": message.payload.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload": base64.b64encode(message.payload).decode(), "encoding": "base64"}
    return {
        "event": event,
        "clientid": clientId,
        "topic": message.topic,
        "qos": message.qos,
        "retain": message.retain,
        **payload,
    }


def _number(options: Mapping[str, str], key: str, default: str, integer: bool) -> Any:
    text = options.get(key, default)
    lowest = 0 if key == "retries" else 1
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if (integer and value < lowest) or (not integer and not value > 0):
        raise PluginConfigError(key, f"expected a positive number, got {text!r}")
    return value


def _list(options: Mapping[str, str], key: str) -> list[str]:
    return [item.strip() for item in options.get(key, "").split(",") if item.strip()]


@implementer(IPlugin, IPluginFactory)
class _Factory:
    name = "webhook"

    def build(self, options: Mapping[str, str], context: PluginContext) -> WebHook:
        checkOptions(
            options,
            required=("url",),
            optional=(
                "events",
                "topics",
                "queue_size",
                "concurrency",
                "timeout",
                "retries",
                "retry_delay",
                "sys_interval",
            ),
        )
        urls = _list(options, "url")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise PluginConfigError("url", f"expected http:// or https:// URLs, got {url!r}")
        events = _list(options, "events") or list(DEFAULT_EVENTS)
        for event in events:
            if event not in EVENTS:
                raise PluginConfigError("events", f"expected some of {', '.join(EVENTS)}")
        topics = _list(options, "topics") or ["#"]
        for topicFilter in topics:
            try:
                validate_topic_filter(topicFilter)
            except InvalidTopic as e:
                raise PluginConfigError("topics", f"{topicFilter!r}: {e}") from None
        return WebHook(
            context.reactor,
            urls,
            events=events,
            topics=topics,
            queueSize=_number(options, "queue_size", "10000", True),
            concurrency=_number(options, "concurrency", "8", True),
            timeout=_number(options, "timeout", "5", False),
            retries=_number(options, "retries", "3", True),
            retryDelay=_number(options, "retry_delay", "1", False),
            sysInterval=_number(options, "sys_interval", "10", False),
        )


webhook = _Factory()
