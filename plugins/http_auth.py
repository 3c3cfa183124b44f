"""
C{http_auth}: asks an HTTP service, as EMQX's HTTP authenticator and mosquitto-go-auth do.

Options (C{[plugin:http_auth]}), at least one URL:

  - C{url}: authentication endpoint.  POST JSON C{{"username", "password", "clientid", "ip",
    "listener"}}; 200 accepts, 4xx refuses (CONNACK 4), anything else refuses too.
  - C{acl_url}: authorisation endpoint.  POST JSON C{{"username", "clientid", "topic", "acc"}}
    with mosquitto-go-auth's C{acc}: 1 receive, 2 publish, 4 subscribe; 200 allows, 4xx denies.

Both understand EMQX 5's answer as well: a 200 whose body is a JSON object with C{"result"}
C{"allow"}, C{"deny"} or C{"ignore"} (abstain: the next plugin of the chain decides), and for
authentication C{"is_superuser"}: a superuser's every publish and subscription is then allowed
by this plugin as authorizer (it must be in C{[acl] chain}).  A body saying deny always denies,
whatever the status; a 2xx without such a body is decided by its status alone.
  - C{timeout}: seconds per request (default 5).
  - C{cache_seconds}: how long answers are reused (default 30; 0 turns the cache off).

It fails closed: a timeout, a refused connection or a 5xx refuses or denies, and such outcomes
are not cached, so the service is asked again next time.  Passwords are cached only as SHA-256
digests.  A client the plugin has no URL for (no C{url} configured) gets no answer from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    Deny,
    IAuthenticator,
    IAuthorizer,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)
from mqttd.plugin_loader import checkOptions

BAD_USERNAME_OR_PASSWORD = 4
# mosquitto-go-auth's access codes.
_ACC = {Action.RECEIVE: 1, Action.PUBLISH: 2, Action.SUBSCRIBE: 4}
# Entries kept at most; past it the cache starts afresh rather than growing without bound.
CACHE_SIZE = 10000


@implementer(IAuthenticator, IAuthorizer)
class HTTPAuth:
    """Both an authenticator and an authorizer; each abstains when its URL is not set."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str | None,
        aclURL: str | None,
        timeout: float,
        cacheSeconds: float,
    ) -> None:
        self.reactor = reactor
        self.url = url
        self.aclURL = aclURL
        self.timeout = timeout
        self.cacheSeconds = cacheSeconds
        self.agent = Agent(reactor)
        self._cache: dict[tuple[object, ...], tuple[float, _Answer]] = {}
        # (user name, client id) of clients the service called superusers at their login.
        self._superusers: set[tuple[str | None, str]] = set()

    def authenticate(
        self, credentials: Credentials
    ) -> Deferred[Allow | Deny | None] | Allow | Deny | None:
        if self.url is None:
            return None
        password = credentials.password or b""
        key = (
            "auth",
            credentials.username,
            hashlib.sha256(password).digest(),
            credentials.clientId,
            credentials.address,
        )
        cached = self._cached(key)
        if cached is not None:
            return self._connectAnswer(cached, credentials)
        body = {
            "username": credentials.username,
            "password": password.decode("utf-8", "replace"),
            "clientid": credentials.clientId,
            "ip": credentials.address,
            "listener": credentials.listener,
        }
        d = self._ask(self.url, body, key)
        return d.addCallback(self._connectAnswer, credentials)

    def _connectAnswer(self, answer: _Answer, credentials: Credentials) -> Allow | Deny | None:
        who = (credentials.username, credentials.clientId)
        if answer.allowed and answer.superuser:
            if len(self._superusers) >= CACHE_SIZE:
                self._superusers.clear()
            self._superusers.add(who)
        else:
            self._superusers.discard(who)
        if answer.allowed is None:
            return None
        if answer.allowed:
            return Allow(credentials.username)
        return Deny(BAD_USERNAME_OR_PASSWORD, "refused by the HTTP service")

    def authorize(
        self, client: ClientInfo, action: Action, topic: str
    ) -> Deferred[bool | None] | bool | None:
        if (client.username, client.clientId) in self._superusers:
            return True
        if self.aclURL is None:
            return None
        key = ("acl", client.username, client.clientId, action, topic)
        cached = self._cached(key)
        if cached is not None:
            return cached.allowed
        body = {
            "username": client.username,
            "clientid": client.clientId,
            "topic": topic,
            "acc": _ACC[action],
        }
        return self._ask(self.aclURL, body, key).addCallback(lambda answer: answer.allowed)

    def _cached(self, key: tuple[object, ...]) -> _Answer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, allowed = entry
        if expires < self.reactor.seconds():
            del self._cache[key]
            return None
        return allowed

    def _ask(
        self, url: str, body: Mapping[str, object], key: tuple[object, ...]
    ) -> Deferred[_Answer]:
        d = self.agent.request(
            b"POST",
            url.encode("utf-8"),
            Headers({b"Content-Type": [b"application/json"]}),
            FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8"))),
        )
        answered: Deferred[_Answer] = d.addCallback(self._answered, key)
        answered.addTimeout(self.timeout, self.reactor)
        return answered.addErrback(self._failed, url)

    def _answered(self, response: Any, key: tuple[object, ...]) -> Deferred[_Answer]:
        code: int = response.code
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Body(done))
        return done.addCallback(lambda body: self._decided(code, body, key))

    def _decided(self, code: int, body: bytes, key: tuple[object, ...]) -> _Answer:
        answer = _fromBody(body)
        if answer is not None and answer.allowed is False:
            # A deny in the body is the service's word, whatever status came with it.
            self._remember(key, answer)
            return answer
        if 400 <= code < 500:
            answer = _Answer(False)
        elif code == 200 or (200 <= code < 300 and answer is None):
            answer = answer if answer is not None else _Answer(True)
        else:
            raise RuntimeError(f"HTTP status {code}")
        self._remember(key, answer)
        return answer

    def _remember(self, key: tuple[object, ...], answer: _Answer) -> None:
        if self.cacheSeconds <= 0:
            return
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (self.reactor.seconds() + self.cacheSeconds, answer)

    def _failed(self, failure: Any, url: str) -> _Answer:
        self.log.warn(
            "HTTP auth at {url} failed, refusing: {why}", url=url, why=failure.getErrorMessage()
        )
        return _Answer(False)


@dataclass(frozen=True, slots=True)
class _Answer:
    """
    What the service decided: C{allowed} L{None} when it abstains (C{"ignore"}).
    """

    allowed: bool | None
    superuser: bool = False


_RESULTS = {"allow": True, "deny": False, "ignore": None}


def _fromBody(body: bytes) -> _Answer | None:
    """
    The answer an EMQX-style JSON body gives, or L{None} when the body is not one (empty, not
    JSON, no C{result}): the status decides then.  A C{result} that is none of allow, deny and
    ignore denies, as the service meant something this plugin cannot read.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or "result" not in parsed:
        return None
    result = parsed["result"]
    if not isinstance(result, str) or result not in _RESULTS:
        return _Answer(False)
    allowed = _RESULTS[result]
    return _Answer(allowed, allowed is True and parsed.get("is_superuser") is True)


# Bodies longer than this are cut: an answer is a few dozen bytes.
MAX_BODY = 65536


class _Body(Protocol):
    """Collects a response body (its first L{MAX_BODY} bytes) and fires C{done} with it."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.size < MAX_BODY:
            self.chunks.append(data[: MAX_BODY - self.size])
            self.size += len(self.chunks[-1])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self.chunks))


def _number(key: str, text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise PluginConfigError(key, f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise PluginConfigError(key, f"expected a non-negative number, got {text!r}")
    return value


def _url(key: str, text: str | None) -> str | None:
    if text is not None and not text.startswith(("http://", "https://")):
        raise PluginConfigError(key, f"expected an http:// or https:// URL, got {text!r}")
    return text


@implementer(IPlugin, IPluginFactory)
class _Factory:
    name = "http_auth"

    def build(self, options: Mapping[str, str], context: PluginContext) -> HTTPAuth:
        checkOptions(options, optional=("url", "acl_url", "timeout", "cache_seconds"))
        url = _url("url", options.get("url"))
        aclURL = _url("acl_url", options.get("acl_url"))
        if url is None and aclURL is None:
            raise PluginConfigError("url", "required (or acl_url)")
        timeout = _number("timeout", options.get("timeout"), 5.0)
        if timeout == 0:
            raise PluginConfigError("timeout", "must be positive")
        return HTTPAuth(
            context.reactor,
            url,
            aclURL,
            timeout,
            _number("cache_seconds", options.get("cache_seconds"), 30.0),
        )


http_auth = _Factory()
