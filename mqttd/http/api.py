"""
The REST API under C{/api/v1/}: JSON in and out, documented in C{docs/http-api.md}.

Everything here goes through the broker's facade (L{mqttd.broker.Broker}'s management methods,
C{route}, its read-only maps) and the plugin interfaces (L{IGroupStore}, L{IUserStore},
L{IRuleListing}); nothing reaches into a session beyond what it shows.  Errors are
L{ApiError}s: JSON with a code and a message, and for bad input a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

import mqttd
from mqttd.broker import Broker
from mqttd.codec.properties import Properties
from mqttd.http.auth import Caller, Guard
from mqttd.http.errors import ApiError, badField, notFound
from mqttd.interfaces import IGroupStore, IRuleListing, IUserStore
from mqttd.message import Message, PropertiedMessage
from mqttd.plugin_loader import pluginPackage
from mqttd.stats import DROP_CAUSES
from mqttd.sys import BrokerState, residentBytes
from mqttd.topics import InvalidTopic, validate_topic_filter, validate_topic_name

# A request body larger than this is refused before it is parsed.
MAX_BODY = 1024 * 1024
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_BATCH = 1000
# The overview chart: one sample every HISTORY_INTERVAL seconds, the last HISTORY_SAMPLES kept.
HISTORY_INTERVAL = 10.0
HISTORY_SAMPLES = 90


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    connections: int
    received: int
    sent: int
    dropped: int


class Management:
    """
    What the API works on: the broker and the plugins that can be managed, with the numbers the
    overview shows.

    @ivar groups: the virtual groups' store, or L{None} when no virtual groups plugin runs.
    @ivar users: plugin name to each authenticator whose users can be managed.
    @ivar rules: plugin name to each authorizer whose rules can be listed.
    """

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        *,
        groups: IGroupStore | None = None,
        users: Mapping[str, IUserStore] | None = None,
        rules: Mapping[str, IRuleListing] | None = None,
        admins: Iterable[str] = (),
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.groups = groups
        self.users = dict(users or {})
        self.rules = dict(rules or {})
        self.admins = frozenset(admins)
        self.history: deque[Sample] = deque(maxlen=HISTORY_SAMPLES)

    @classmethod
    def fromPlugins(
        cls, broker: Broker, clock: IReactorTime, plugins: Mapping[str, Any], admins: Iterable[str]
    ) -> Management:
        """Find the group store, user stores and rule listings among the built C{plugins}."""
        groups = None
        for plugin in plugins.values():
            store = getattr(plugin, "store", None)
            if IGroupStore.providedBy(store):
                groups = store
                break
        return cls(
            broker,
            clock,
            groups=groups,
            users={n: p for n, p in plugins.items() if IUserStore.providedBy(p)},
            rules={n: p for n, p in plugins.items() if IRuleListing.providedBy(p)},
            admins=admins,
        )

    def sample(self) -> None:
        """Record the counters now, for the overview's chart."""
        stats = self.broker.stats
        connected = sum(1 for s in self.broker.sessions.values() if s.connection is not None)
        self.history.append(
            Sample(
                self.clock.seconds(),
                connected,
                stats.messagesReceived,
                stats.publishMessagesSent,
                stats.messagesDropped,
            )
        )


# Reading requests


def _query(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise badField(name, "not UTF-8") from None


def _intQuery(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = _query(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise badField(name, f"expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise badField(name, f"expected {low} to {high}, got {value}")
    return value


def _body(request: Request) -> Any:
    contentType = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if contentType != "application/json":
        # Also what keeps HTML forms of other sites out: they cannot send this type.
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, "TOO_LARGE", f"a request body is at most {MAX_BODY} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise badField("body", f"not JSON: {e}") from None


def _object(body: Any, where: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise badField(where, "expected a JSON object")
    return body


def _string(obj: Mapping[str, Any], key: str, where: str = "", required: bool = True) -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise badField(where + key, "expected a non-empty string")
    return value


def _qos(obj: Mapping[str, Any], key: str = "qos", where: str = "", default: int = 0) -> int:
    value = obj.get(key, default)
    if value not in (0, 1, 2) or isinstance(value, bool):
        raise badField(where + key, f"expected 0, 1 or 2, got {value!r}")
    return int(value)


def _bool(obj: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise badField(where + key, f"expected true or false, got {value!r}")
    return value


def _page(request: Request, items: Sequence[Any]) -> dict[str, Any]:
    page = _intQuery(request, "page", 1, 1, 1 << 30)
    limit = _intQuery(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    start = (page - 1) * limit
    return {
        "data": list(items[start : start + limit]),
        "meta": {"page": page, "limit": limit, "count": len(items)},
    }


def _payload(payload: bytes) -> dict[str, Any]:
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"), "encoding": "base64"}


# Routing

Handler = Callable[[Request, Caller, dict[str, str]], Any]


@dataclass(frozen=True, slots=True)
class _Route:
    method: bytes
    parts: tuple[str, ...]
    handler: Handler
    # Whether a read-only (viewer) key may call it.
    reading: bool


class ApiResource(Resource):
    """
    C{/api}: routes C{/api/v1/...} to the handlers below.  Every route but the login needs a
    L{Caller}; changes need the C{admin} role.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, management: Management, guard: Guard) -> None:
        super().__init__()
        self.management = management
        self.broker = management.broker
        self.guard = guard
        self.routes: list[_Route] = []
        get, post, put, delete = b"GET", b"POST", b"PUT", b"DELETE"
        for method, path, handler in (
            (post, "login", self.login),
            (post, "logout", self.logout),
            (get, "whoami", self.whoami),
            (get, "status", self.status),
            (get, "stats", self.stats),
            (get, "stats/history", self.statsHistory),
            (get, "sys", self.sys),
            (get, "clients", self.listClients),
            (get, "clients/{clientid}", self.showClient),
            (delete, "clients/{clientid}", self.kickClient),
            (get, "clients/{clientid}/subscriptions", self.clientSubscriptions),
            (post, "clients/{clientid}/subscriptions", self.subscribeClient),
            (delete, "clients/{clientid}/subscriptions/{filter*}", self.unsubscribeClient),
            (get, "sessions", self.listSessions),
            (delete, "sessions/{clientid}", self.deleteSession),
            (get, "subscriptions", self.listSubscriptions),
            (get, "retained", self.listRetained),
            (get, "retained/{topic*}", self.showRetained),
            (delete, "retained/{topic*}", self.deleteRetained),
            (post, "publish", self.publish),
            (post, "publish/batch", self.publishBatch),
            (get, "groups", self.listGroups),
            (post, "groups", self.createGroup),
            (get, "groups/{group}", self.showGroup),
            (put, "groups/{group}", self.replaceGroup),
            (delete, "groups/{group}", self.deleteGroup),
            (post, "groups/{group}/members", self.addMembers),
            (put, "groups/{group}/members/{member}", self.changeMember),
            (delete, "groups/{group}/members/{member}", self.removeMember),
            (get, "users", self.listUsers),
            (post, "users", self.createUser),
            (put, "users/{username}", self.changePassword),
            (delete, "users/{username}", self.deleteUser),
            (get, "acl", self.listRules),
        ):
            self.routes.append(_Route(method, tuple(path.split("/")), handler, method == get))

    # twisted.web

    def render(self, request: Request) -> bytes | int:
        try:
            result = self._dispatch(request)
        except ApiError as e:
            return self._error(request, e)
        if isinstance(result, Deferred):
            result.addCallback(self._finish, request).addErrback(self._failed, request)
            return NOT_DONE_YET
        return self._json(request, result)

    def _dispatch(self, request: Request) -> Any:
        segments = [s.decode("utf-8", "replace") for s in (request.postpath or [])]
        if not segments or segments[0] != "v1":
            raise notFound("such API; the current one is /api/v1/")
        segments = segments[1:]
        allowed: list[bytes] = []
        for route in self.routes:
            params = _match(route.parts, segments)
            if params is None:
                continue
            if route.method != request.method and not (
                route.method == b"GET" and request.method == b"HEAD"
            ):
                allowed.append(route.method)
                continue
            if route.handler == self.login:
                return route.handler(request, Caller("", ""), params)
            caller = self.guard.caller(request)
            if not route.reading and caller.role != "admin":
                raise ApiError(403, "FORBIDDEN", f"{caller.name} may only read")
            return route.handler(request, caller, params)
        if allowed:
            raise ApiError(
                405,
                "METHOD_NOT_ALLOWED",
                f"use {', '.join(m.decode() for m in allowed)}",
                headers={b"allow": b", ".join(allowed)},
            )
        raise notFound(f"endpoint /api/v1/{'/'.join(segments)}")

    def _finish(self, result: Any, request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.write(self._json(request, result))
            request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(ApiError):
            body = self._error(request, failure.value)  # type: ignore[arg-type]
        else:
            self.log.failure(
                "HTTP API {method} {path} failed", failure, method=request.method, path=request.path
            )
            body = self._error(request, ApiError(500, "INTERNAL_ERROR", "see the broker's log"))
        if not request.finished and not request._disconnected:
            request.write(body)
            request.finish()

    def _json(self, request: Request, result: Any) -> bytes:
        status = 200
        if isinstance(result, tuple):
            status, result = result
        request.setResponseCode(status)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if result is None:
            return b""
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps(result, separators=(",", ":")).encode("utf-8")

    def _error(self, request: Request, error: ApiError) -> bytes:
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self._json(request, (error.status, error.body()))

    # Logging in

    def login(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        username = _string(body, "username")
        password = _string(body, "password")
        d = maybeDeferred(self.guard.login, request, username, password)
        return d.addCallback(lambda c: {"username": c.name, "csrf": c.csrf})

    def logout(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        self.guard.logout(request)
        return 204, None

    def whoami(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        answer: dict[str, Any] = {"name": caller.name, "role": caller.role}
        if caller.csrf is not None:
            answer["csrf"] = caller.csrf
        return answer

    # The broker

    def status(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        broker = self.broker
        state = BrokerState.of(broker)
        return {
            "version": mqttd.__version__,
            "uptime": round(broker.clock.seconds() - broker.startedAt, 3),
            "connections": state.connected,
            "sessions": state.sessions,
            "offline_sessions": state.sessions - state.connected,
            "subscriptions": state.subscriptions + state.sharedSubscriptions,
            "retained": state.retained,
            "queued": state.queued,
            "inflight": state.inflight,
            "memory_rss": residentBytes(),
        }

    def stats(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        # The counters of mqttd.stats, which $SYS and /metrics read too.
        stats = self.broker.stats
        return {
            **self.status(request, caller, params),
            "messages_received": stats.messagesReceived,
            "messages_sent": stats.publishMessagesSent,
            "messages_routed": stats.messagesRouted,
            "messages_dropped": stats.messagesDropped,
            "dropped": dict(zip(DROP_CAUSES, stats.dropped, strict=True)),
            "bytes_received": stats.bytesReceived,
            "bytes_sent": stats.bytesSent,
            "connects": stats.connects,
            "auth_failures": stats.authFailures,
        }

    def statsHistory(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return {
            "interval": HISTORY_INTERVAL,
            "samples": [
                {
                    "time": s.time,
                    "connections": s.connections,
                    "messages_received": s.received,
                    "messages_sent": s.sent,
                    "messages_dropped": s.dropped,
                }
                for s in self.management.history
            ],
        }

    def sys(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        # What mqttd.sys last published (every sys_interval), as a subscriber to $SYS/# would
        # get it, plus what plugins publish there (the webhook's counts).
        return {
            m.topic: m.payload.decode("utf-8", "replace")
            for m in sorted(self.broker.retained.matching("$SYS/#"), key=lambda m: m.topic)
        }

    # Clients and sessions

    def _describe(self, clientId: str) -> dict[str, Any]:
        broker = self.broker
        session = broker.sessions[clientId]
        client = broker.clients.get(clientId)
        conn = session.connection
        return {
            "clientid": clientId,
            "username": client.username if client is not None else None,
            "address": client.address if client is not None else None,
            "listener": client.listener if client is not None else None,
            "connected": conn is not None,
            "protocol": conn.protocolLevel if conn is not None else None,
            "clean_session": session.cleanSession,
            "expiry_interval": session.expiryInterval,
            "subscriptions": len(session.subscriptions),
            "inflight": len(session.inflight),
            "queued": len(session.pending) if session.pending is not None else 0,
            "dropped": session.dropped,
        }

    def _session(self, clientId: str) -> Any:
        session = self.broker.sessions.get(clientId)
        if session is None:
            raise notFound(f"client {clientId!r}")
        return session

    def _selected(self, request: Request, connected: bool) -> list[dict[str, Any]]:
        like = _query(request, "clientid")
        username = _query(request, "username")
        address = _query(request, "address")
        broker = self.broker
        chosen = []
        for clientId in sorted(broker.sessions):
            if (broker.sessions[clientId].connection is not None) != connected:
                continue
            if like is not None and like not in clientId:
                continue
            client = broker.clients.get(clientId)
            if username is not None and (client is None or client.username != username):
                continue
            if address is not None and (client is None or address not in client.address):
                continue
            chosen.append(self._describe(clientId))
        return chosen

    def listClients(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return _page(request, self._selected(request, connected=True))

    def showClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        self._session(params["clientid"])
        return self._describe(params["clientid"])

    def kickClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        clientId = params["clientid"]
        if not self.broker.kick(clientId):
            raise notFound(f"connected client {clientId!r}")
        self.log.info("{caller} disconnected {clientId}", caller=caller.name, clientId=clientId)
        return 204, None

    def listSessions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return _page(request, self._selected(request, connected=False))

    def deleteSession(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        clientId = params["clientid"]
        if not self.broker.endSession(clientId):
            raise notFound(f"session {clientId!r}")
        self.log.info("{caller} ended {clientId}'s session", caller=caller.name, clientId=clientId)
        return 204, None

    # Subscriptions

    def clientSubscriptions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        session = self._session(params["clientid"])
        return {
            "data": [
                {"topic": f, "qos": options & 3}
                for f, options in sorted(session.subscriptions.items())
            ]
        }

    def subscribeClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        topicFilter = _string(body, "topic")
        qos = _qos(body)
        try:
            known = self.broker.subscribeFor(params["clientid"], topicFilter, qos)
        except InvalidTopic as e:
            raise badField("topic", str(e)) from None
        if not known:
            raise notFound(f"client {params['clientid']!r}")
        return 201, {"clientid": params["clientid"], "topic": topicFilter, "qos": qos}

    def unsubscribeClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        self._session(params["clientid"])
        if not self.broker.unsubscribeFor(params["clientid"], params["filter"]):
            raise notFound(f"subscription {params['filter']!r} of {params['clientid']!r}")
        return 204, None

    def listSubscriptions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        like = _query(request, "clientid")
        topic = _query(request, "topic")
        found = []
        for clientId, session in sorted(self.broker.sessions.items()):
            if like is not None and like not in clientId:
                continue
            for topicFilter, options in sorted(session.subscriptions.items()):
                if topic is None or topic == topicFilter:
                    found.append({"clientid": clientId, "topic": topicFilter, "qos": options & 3})
        return _page(request, found)

    # Retained messages

    def _retained(self, message: Message) -> dict[str, Any]:
        return {
            "topic": message.topic,
            "qos": message.qos,
            "size": len(message.payload),
            **_payload(message.payload),
        }

    def listRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        topicFilter = _query(request, "filter") or "#"
        try:
            validate_topic_filter(topicFilter)
        except InvalidTopic as e:
            raise badField("filter", str(e)) from None
        messages = sorted(self.broker.retained.matching(topicFilter), key=lambda m: m.topic)
        return _page(request, [self._retained(m) for m in messages])

    def showRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        message = self.broker.retained.get(params["topic"])
        if message is None:
            raise notFound(f"retained message on {params['topic']!r}")
        return self._retained(message)

    def deleteRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        if not self.broker.deleteRetained(params["topic"]):
            raise notFound(f"retained message on {params['topic']!r}")
        return 204, None

    # Publishing

    def _message(self, body: Any, where: str) -> Message:
        request = _object(body, where.rstrip(".") or "body")
        topic = _string(request, "topic", where)
        try:
            validate_topic_name(topic, self.broker.config.max_topic_levels)
        except InvalidTopic as e:
            raise badField(where + "topic", str(e)) from None
        text = request.get("payload", "")
        if not isinstance(text, str):
            raise badField(where + "payload", "expected a string")
        encoding = request.get("encoding", "utf-8")
        if encoding == "utf-8":
            payload = text.encode("utf-8")
        elif encoding == "base64":
            try:
                payload = base64.b64decode(text, validate=True)
            except binascii.Error as e:
                raise badField(where + "payload", f"not base64: {e}") from None
        else:
            raise badField(where + "encoding", f"expected utf-8 or base64, got {encoding!r}")
        qos = _qos(request, where=where)
        retain = _bool(request, "retain", where)
        properties = request.get("properties")
        if properties is None:
            return Message(topic, payload, qos, retain)
        return PropertiedMessage(
            topic,
            payload,
            qos,
            retain,
            _properties(properties, where + "properties."),
            self.broker.clock.seconds(),
        )

    def publish(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        message = self._message(_body(request), "")
        self.broker.publish(message)
        return {"topic": message.topic, "qos": message.qos, "retain": message.retain}

    def publishBatch(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _body(request)
        if not isinstance(body, list) or not 0 < len(body) <= MAX_BATCH:
            raise badField("body", f"expected a JSON array of 1 to {MAX_BATCH} messages")
        # Every message is checked before any is published: a batch goes whole or not at all.
        messages = [self._message(item, f"[{i}].") for i, item in enumerate(body)]
        for message in messages:
            self.broker.publish(message)
        return {"published": len(messages)}

    # Virtual groups

    def _groups(self) -> tuple[IGroupStore, Any]:
        store = self.management.groups
        if store is None:
            raise ApiError(404, "NOT_CONFIGURED", "no virtual_groups plugin runs on this broker")
        pluginPackage()
        return store, importlib.import_module("mqttd.plugins.virtual_groups")

    def _group(self, name: str) -> Any:
        store = self._groups()[0]
        group = store.group(name)
        if group is None:
            raise notFound(f"group {name!r}")
        return group

    def _saved(self, group: Any, status: int = 200) -> Deferred[Any]:
        store, vg = self._groups()
        d = maybeDeferred(store.save, group)
        return d.addCallback(lambda _: (status, vg.describe(group)))

    def _members(self, body: Mapping[str, Any], vg: Any) -> dict[str, int]:
        members = body.get("members", {})
        try:
            if isinstance(members, list) and all(isinstance(m, str) for m in members):
                return dict(vg.parseMember(m) for m in members)
            if isinstance(members, dict):
                return {vg.checkName("member", m): _qos(members, m, "members.") for m in members}
        except vg.GroupError as e:
            raise badField("members", str(e)) from None
        raise badField("members", "expected a list of names or an object of name to QoS")

    def _built(self, name: str, body: Mapping[str, Any]) -> Any:
        vg = self._groups()[1]
        by = body.get("by", "clientid")
        if by not in ("clientid", "username"):
            raise badField("by", f"expected clientid or username, got {by!r}")
        topic = _string(body, "topic", required=False)
        publish = body.get("publish", "members")
        if publish not in vg.PUBLISH_POLICIES:
            raise badField("publish", f"expected one of {', '.join(vg.PUBLISH_POLICIES)}")
        history = body.get("history", 0)
        if not isinstance(history, int) or isinstance(history, bool) or history < 0:
            raise badField("history", f"expected a number of messages, got {history!r}")
        inbox = _bool(body, "inbox")
        if history and not inbox:
            raise badField("history", "needs inbox: true, where the messages are kept")
        try:
            return vg.makeGroup(
                name,
                self._members(body, vg),
                byUsername=by == "username",
                topic=topic,
                echo=_bool(body, "echo"),
                owners=self._owners(body, vg),
                publish=publish,
                events=_bool(body, "events"),
                inbox=inbox,
                history=history,
            )
        except vg.GroupError as e:
            # Members, owners, the policy and history were checked above.
            raise badField("topic" if topic and "template" in str(e) else "name", str(e)) from None

    def _owners(self, body: Mapping[str, Any], vg: Any) -> list[str]:
        owners = body.get("owners", [])
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise badField("owners", "expected a list of names")
        try:
            return [vg.checkName("owner", o) for o in owners]
        except vg.GroupError as e:
            raise badField("owners", str(e)) from None

    def listGroups(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        store, vg = self._groups()
        groups = [store.group(n) for n in sorted(store.groupNames())]
        return _page(request, [vg.describe(g) for g in groups if g is not None])

    def createGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        name = _string(body, "name")
        store = self._groups()[0]
        if store.group(name) is not None:
            raise ApiError(409, "CONFLICT", f"group {name!r} exists", "name")
        return self._saved(self._built(name, body), 201)

    def showGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        vg = self._groups()[1]
        return vg.describe(self._group(params["group"]))

    def replaceGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        self._group(params["group"])
        return self._saved(self._built(params["group"], body))

    def deleteGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        store = self._groups()[0]
        self._group(params["group"])
        return maybeDeferred(store.delete, params["group"]).addCallback(lambda _: (204, None))

    def addMembers(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        vg = self._groups()[1]
        group = self._group(params["group"])
        added = self._members(body, vg)
        owners = self._owners(body, vg)
        if not added and not owners:
            raise badField("members", "expected at least one member or owner")
        # Owners are members: one not among them joins at QoS 2, as in makeGroup.
        members = {**group.members, **{o: 2 for o in owners if o not in added}, **added}
        return self._saved(replace(group, members=members, owners=group.owners | set(owners)))

    def changeMember(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        group = self._group(params["group"])
        member = params["member"]
        if member not in group.members:
            raise notFound(f"member {member!r} of group {group.name!r}")
        qos = _qos(body, default=group.members[member])
        role = body.get("role", "owner" if member in group.owners else "member")
        if role not in ("owner", "member"):
            raise badField("role", f"expected owner or member, got {role!r}")
        owners = group.owners | {member} if role == "owner" else group.owners - {member}
        return self._saved(replace(group, members={**group.members, member: qos}, owners=owners))

    def removeMember(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        group = self._group(params["group"])
        member = params["member"]
        if member not in group.members:
            raise notFound(f"member {member!r} of group {group.name!r}")
        kept = {m: q for m, q in group.members.items() if m != member}
        return self._saved(replace(group, members=kept, owners=group.owners - {member}))

    # Users

    def _userStores(self, body: Mapping[str, Any] | None = None) -> dict[str, IUserStore]:
        stores = self.management.users
        if not stores:
            raise ApiError(404, "NOT_CONFIGURED", "no plugin with manageable users runs")
        named = body.get("plugins") if body is not None else None
        if named is None:
            return stores
        if not isinstance(named, list) or not named or any(n not in stores for n in named):
            raise badField("plugins", f"expected a list of some of {', '.join(sorted(stores))}")
        return {n: stores[n] for n in named}

    def listUsers(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        found: dict[str, list[str]] = {}
        for name, store in sorted(self._userStores().items()):
            for username in store.usernames():
                found.setdefault(username, []).append(name)
        admins = self.management.admins
        return _page(
            request,
            [{"username": u, "plugins": p, "admin": u in admins} for u, p in sorted(found.items())],
        )

    def _setPassword(self, stores: Mapping[str, IUserStore], username: str, password: str) -> None:
        for store in stores.values():
            try:
                store.setPassword(username, password)
            except ValueError as e:
                raise badField("username", str(e)) from None
            except OSError as e:
                raise ApiError(500, "INTERNAL_ERROR", f"cannot write: {e.strerror}") from None

    def createUser(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        username = _string(body, "username")
        password = _string(body, "password")
        stores = self._userStores(body)
        if any(username in s.usernames() for s in stores.values()):
            raise ApiError(409, "CONFLICT", f"user {username!r} exists", "username")
        self._setPassword(stores, username, password)
        self.log.info("{caller} created user {username}", caller=caller.name, username=username)
        return 201, {"username": username, "plugins": sorted(stores)}

    def changePassword(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = _object(_body(request))
        password = _string(body, "password")
        username = params["username"]
        stores = {n: s for n, s in self._userStores().items() if username in s.usernames()}
        if not stores:
            raise notFound(f"user {username!r}")
        self._setPassword(stores, username, password)
        return {"username": username, "plugins": sorted(stores)}

    def deleteUser(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        username = params["username"]
        deleted = False
        for store in self._userStores().values():
            try:
                deleted = store.deleteUser(username) or deleted
            except OSError as e:
                raise ApiError(500, "INTERNAL_ERROR", f"cannot write: {e.strerror}") from None
        if not deleted:
            raise notFound(f"user {username!r}")
        return 204, None

    def listRules(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return {
            "data": [
                {"plugin": name, **rule}
                for name, listing in sorted(self.management.rules.items())
                for rule in listing.listRules()
            ]
        }


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for index, part in enumerate(parts):
        if part.endswith("*}"):
            rest = segments[index:]
            if not rest or rest == [""]:
                return None
            params[part[1:-2]] = "/".join(rest)
            return params
        if index >= len(segments):
            return None
        segment = segments[index]
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params if len(parts) == len(segments) else None


def _properties(value: Any, where: str) -> Properties:
    """MQTT 5 properties of a published message, from their JSON form (docs/http-api.md)."""
    if not isinstance(value, dict):
        raise badField(where.rstrip("."), "expected a JSON object")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        field = where + key
        if key == "payload_format_indicator":
            if item not in (0, 1) or isinstance(item, bool):
                raise badField(field, "expected 0 or 1")
            fields[key] = item
        elif key == "message_expiry_interval":
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < 1 << 32:
                raise badField(field, "expected seconds, 0 to 4294967295")
            fields[key] = item
        elif key in ("content_type", "response_topic"):
            if not isinstance(item, str):
                raise badField(field, "expected a string")
            if key == "response_topic":
                try:
                    validate_topic_name(item)
                except InvalidTopic as e:
                    raise badField(field, str(e)) from None
            fields[key] = item
        elif key == "correlation_data":
            if not isinstance(item, str):
                raise badField(field, "expected base64 text")
            try:
                fields[key] = base64.b64decode(item, validate=True)
            except binascii.Error as e:
                raise badField(field, f"not base64: {e}") from None
        elif key == "user_properties":
            pairs = list(item.items()) if isinstance(item, dict) else item
            if not isinstance(pairs, list) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
                for p in pairs
            ):
                raise badField(field, "expected an object or a list of [name, value] pairs")
            fields[key] = tuple((name, text) for name, text in pairs)
        else:
            known = "payload_format_indicator, message_expiry_interval, content_type,"
            known += " response_topic, correlation_data, user_properties"
            raise badField(field, f"unknown property; expected one of {known}")
    return Properties(**fields)
