"""
Who is calling the HTTP API: a program with an API key (C{Authorization: Bearer TOKEN}), or an
administrator logged in to the dashboard with a session cookie.

The dashboard's cookie is C{HttpOnly} (no script can read it), C{SameSite=Strict} (no other site
can make the browser send it) and C{Secure} on TLS listeners.  A request that changes anything on
the strength of the cookie must also carry the session's CSRF token in C{X-CSRF-Token}, which
only the dashboard's own pages can know, and, when the browser says where it comes from
(C{Origin}), come from this listener: defences that each stop a cross-site request alone.
Failed logins are counted per address; past L{LOGIN_FAILURES} within L{LOGIN_WINDOW} seconds the
address is refused until the window has passed.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from mqttd.http.apikeys import ApiKeyError, ApiKeys
from mqttd.http.errors import ApiError
from mqttd.interfaces import Allow, Credentials, IAuthenticator

SESSION_COOKIE = b"mqttd_session"
CSRF_HEADER = "x-csrf-token"
# A dashboard session lasts this long from its last request.
SESSION_IDLE = 30 * 60.0
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0
MAX_TRACKED_ADDRESSES = 10000
SAFE_METHODS = frozenset({b"GET", b"HEAD"})


@dataclass(frozen=True, slots=True)
class Caller:
    """
    @ivar role: C{admin} or C{viewer} (an API key made read-only).
    @ivar csrf: the dashboard session's CSRF token; L{None} for an API key.
    """

    name: str
    role: str
    csrf: str | None = None


@dataclass(slots=True)
class _Session:
    username: str
    csrf: str
    lastUsed: float


class Guard:
    """Decides who each request is, and logs administrators in and out."""

    def __init__(
        self,
        clock: IReactorTime,
        keys: ApiKeys | None,
        authenticators: Sequence[IAuthenticator],
        admins: frozenset[str],
        listenerName: str,
        secure: bool,
    ) -> None:
        self.clock = clock
        self.keys = keys
        self.authenticators = tuple(authenticators)
        self.admins = admins
        self.listenerName = listenerName
        self.secure = secure
        self._sessions: dict[str, _Session] = {}
        self._failures: dict[str, deque[float]] = {}

    # Requests

    def caller(self, request: Request) -> Caller:
        """
        @raise ApiError: 401 without valid credentials, 403 for a cookie-borne change without
            the CSRF token or from another origin.
        """
        authorization = request.getHeader("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("expected Authorization: Bearer followed by an API key")
            return self._keyCaller(token.strip())
        cookie = request.getCookie(SESSION_COOKIE)
        if cookie is None:
            raise _unauthorized("an API key or a dashboard login is required")
        session = self._session(cookie.decode("ascii", "replace"))
        if session is None:
            raise _unauthorized("the dashboard session has ended; log in again")
        if request.method not in SAFE_METHODS:
            self._checkSameOrigin(request, session)
        return Caller(session.username, "admin", session.csrf)

    def _keyCaller(self, token: str) -> Caller:
        if self.keys is None:
            raise _unauthorized("this listener has no API keys (api_keys)")
        try:
            key = self.keys.check(token)
        except ApiKeyError as e:
            raise ApiError(500, "INTERNAL_ERROR", f"API keys unavailable: {e}") from None
        if key is None:
            raise _unauthorized("unknown API key")
        return Caller(key.name, key.role)

    def _session(self, token: str) -> _Session | None:
        now = self.clock.seconds()
        self._sessions = {
            t: s for t, s in self._sessions.items() if now - s.lastUsed < SESSION_IDLE
        }
        session = self._sessions.get(token)
        if session is not None:
            session.lastUsed = now
        return session

    def _checkSameOrigin(self, request: Request, session: _Session) -> None:
        given = request.getHeader(CSRF_HEADER) or ""
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise ApiError(
                403,
                "CSRF",
                f"a change by a dashboard session needs the {CSRF_HEADER}"
                " header the session was given at login",
            )
        origin = request.getHeader("origin")
        host = request.getHeader("host")
        if origin is not None and origin.split("://", 1)[-1] != host:
            raise ApiError(403, "CSRF", f"request from another origin: {origin}")

    # Logging in

    def login(self, request: Request, username: str, password: str) -> Deferred[Caller]:
        """
        Check C{username} and C{password} with the listener's authenticators; on success set
        the session cookie and answer the L{Caller}, else raise (or fail with) L{ApiError}.

        @return: a L{Deferred} firing with the L{Caller}.
        """
        address = _address(request)
        self._refuseIfFailing(address)
        credentials = Credentials(
            clientId="",
            username=username,
            password=password.encode("utf-8"),
            peerCertificateName=None,
            address=address,
            listener=self.listenerName,
        )
        d = maybeDeferred(self._ask, 0, credentials)
        return d.addCallback(self._answered, request, username, address)

    def _ask(self, index: int, credentials: Credentials) -> object:
        if index >= len(self.authenticators):
            return None
        d = maybeDeferred(self.authenticators[index].authenticate, credentials)
        return d.addCallback(
            lambda answer: answer if answer is not None else self._ask(index + 1, credentials)
        )

    def _answered(self, answer: object, request: Request, username: str, address: str) -> Caller:
        if not isinstance(answer, Allow):
            self._failed(address)
            raise _unauthorized("wrong user name or password")
        identity = answer.identity if answer.identity is not None else username
        if identity not in self.admins:
            raise ApiError(
                403, "FORBIDDEN", f"{identity} is not an administrator of this listener (admins)"
            )
        self._failures.pop(address, None)
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self._sessions[token] = _Session(identity, csrf, self.clock.seconds())
        request.addCookie(
            SESSION_COOKIE,
            token.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=self.secure,
            sameSite="strict",
        )
        return Caller(identity, "admin", csrf)

    def logout(self, request: Request) -> None:
        cookie = request.getCookie(SESSION_COOKIE)
        if cookie is not None:
            self._sessions.pop(cookie.decode("ascii", "replace"), None)
        request.addCookie(
            SESSION_COOKIE,
            b"",
            path=b"/",
            httpOnly=True,
            secure=self.secure,
            sameSite="strict",
            max_age=b"0",
        )

    def _refuseIfFailing(self, address: str) -> None:
        now = self.clock.seconds()
        failures = self._failures.get(address)
        if failures is None:
            return
        while failures and now - failures[0] >= LOGIN_WINDOW:
            failures.popleft()
        if not failures:
            del self._failures[address]
        elif len(failures) >= LOGIN_FAILURES:
            wait = max(1, int(LOGIN_WINDOW - (now - failures[0])) + 1)
            raise ApiError(
                429,
                "TOO_MANY_ATTEMPTS",
                f"too many failed logins from {address}; try again in {wait} s",
                headers={b"retry-after": str(wait).encode()},
            )

    def _failed(self, address: str) -> None:
        now = self.clock.seconds()
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:
            # Guessing from many addresses must not grow memory without end.
            self._failures = {
                a: f for a, f in self._failures.items() if f and now - f[-1] < LOGIN_WINDOW
            }
        self._failures.setdefault(address, deque()).append(now)


def _address(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "UNAUTHORIZED", message, headers={b"www-authenticate": b'Bearer realm="mqttd"'}
    )
