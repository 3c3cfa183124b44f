"""
The HTTP API's L{Guard} on requests in memory with a fake clock: what expires when, without any
wall-clock wait.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer

from mqttd.http.apikeys import ApiKeys
from mqttd.http.auth import (
    LOGIN_FAILURES,
    LOGIN_WINDOW,
    SESSION_COOKIE,
    SESSION_IDLE,
    Caller,
    Guard,
)
from mqttd.http.errors import ApiError
from mqttd.interfaces import Allow, Credentials, Deny, IAuthenticator


@implementer(IAuthenticator)
class Passwords:
    """Knows root:pw and guest:pw; abstains for anyone else."""

    def authenticate(self, credentials: Credentials) -> Allow | Deny | None:
        if credentials.username not in ("root", "guest"):
            return None
        return Allow() if credentials.password == b"pw" else Deny(4, "wrong")


def _request(method: bytes = b"GET", cookie: bytes | None = None, **headers: str) -> Request:
    request = Request(DummyChannel())
    request.method = method
    if cookie is not None:
        request.received_cookies[SESSION_COOKIE] = cookie
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return request


def _result(d: Deferred[Caller]) -> Caller:
    got: list[Caller | Failure] = []
    d.addBoth(got.append)
    (value,) = got
    if isinstance(value, Failure):
        value.raiseException()
    assert isinstance(value, Caller)
    return value


def _guard(clock: MemoryReactorClock, keys: ApiKeys | None = None) -> Guard:
    return Guard(clock, keys, [Passwords()], frozenset({"root"}), "http", secure=True)


def _login(guard: Guard, user: str = "root", password: str = "pw") -> tuple[bytes, str]:
    request = _request(b"POST")
    caller = _result(guard.login(request, user, password))
    (cookie,) = request.cookies
    token = cookie.split(b";")[0].split(b"=", 1)[1]
    assert caller.csrf is not None
    return token, caller.csrf


def test_cookieAttributes() -> None:
    """On a TLS listener the session cookie is Secure, HttpOnly, SameSite=Strict, for /."""
    request = _request(b"POST")
    _result(_guard(MemoryReactorClock()).login(request, "root", "pw"))
    (cookie,) = request.cookies
    assert b"; Secure" in cookie and b"; HttpOnly" in cookie and b"SameSite=strict" in cookie


def test_sessionEndsAfterIdleTime() -> None:
    """A session used within the idle time lives on; one left idle longer is gone (401)."""
    clock = MemoryReactorClock()
    guard = _guard(clock)
    token, _ = _login(guard)
    clock.advance(SESSION_IDLE - 1)
    assert guard.caller(_request(cookie=token)).name == "root"
    clock.advance(SESSION_IDLE - 1)
    assert guard.caller(_request(cookie=token)).name == "root"
    clock.advance(SESSION_IDLE)
    with pytest.raises(ApiError) as ended:
        guard.caller(_request(cookie=token))
    assert ended.value.status == 401


def test_failedLoginsLimitedPerAddressForAWindow() -> None:
    """
    After LOGIN_FAILURES failures an address is refused (429) even with the right password,
    until LOGIN_WINDOW has passed since the first; a success clears the count.
    """
    clock = MemoryReactorClock()
    guard = _guard(clock)
    for _ in range(LOGIN_FAILURES):
        with pytest.raises(ApiError) as wrong:
            _login(guard, password="nope")
        assert wrong.value.status == 401
        clock.advance(1)
    with pytest.raises(ApiError) as limited:
        _login(guard)
    assert limited.value.status == 429
    assert int(limited.value.headers[b"retry-after"]) <= LOGIN_WINDOW
    clock.advance(LOGIN_WINDOW - LOGIN_FAILURES + 1)
    _login(guard)
    for _ in range(LOGIN_FAILURES - 1):
        with pytest.raises(ApiError):
            _login(guard, password="nope")
    _login(guard)


def test_nonAdminAndUnknownUsers() -> None:
    """A known user not in admins is 403 (not counted as a failure); an unknown one is 401."""
    guard = _guard(MemoryReactorClock())
    with pytest.raises(ApiError) as forbidden:
        _login(guard, user="guest")
    assert forbidden.value.status == 403
    with pytest.raises(ApiError) as unknown:
        _login(guard, user="nobody")
    assert unknown.value.status == 401


def test_csrfNeededForChangesOnly() -> None:
    """
    A GET with the cookie alone is answered; a POST needs the CSRF token, and when it says
    where it comes from, this listener's origin.
    """
    guard = _guard(MemoryReactorClock())
    token, csrf = _login(guard)
    assert guard.caller(_request(cookie=token)).role == "admin"
    for headers in ({}, {"x_csrf_token": "forged"}):
        with pytest.raises(ApiError) as refused:
            guard.caller(_request(b"POST", token, **headers))
        assert (refused.value.status, refused.value.code) == (403, "CSRF")
    with pytest.raises(ApiError):
        guard.caller(
            _request(b"POST", token, x_csrf_token=csrf, origin="https://evil", host="broker:1")
        )
    allowed = _request(
        b"POST", token, x_csrf_token=csrf, origin="https://broker:1", host="broker:1"
    )
    assert guard.caller(allowed).name == "root"


def test_apiKeysAndTheirFile(tmp_path: Path) -> None:
    """
    A key is checked against the file as it is now: a key added after the guard was made works,
    a deleted one no longer does, and a damaged file is a 500, not an open door.
    """
    keys = ApiKeys(str(tmp_path / "keys"))
    guard = _guard(MemoryReactorClock(), keys)
    token = keys.add("late", "viewer")
    caller = guard.caller(_request(authorization=f"Bearer {token}"))
    assert (caller.name, caller.role) == ("late", "viewer")
    assert guard.caller(_request(authorization=f"bearer  {token} ")).name == "late"
    keys.delete("late")
    with pytest.raises(ApiError) as gone:
        guard.caller(_request(authorization=f"Bearer {token}"))
    assert gone.value.status == 401
    (tmp_path / "keys").write_text("garbage\n")
    with pytest.raises(ApiError) as damaged:
        guard.caller(_request(authorization=f"Bearer {token}"))
    assert damaged.value.status == 500
    with pytest.raises(ApiError) as noKeys:
        _guard(MemoryReactorClock()).caller(_request(authorization=f"Bearer {token}"))
    assert noKeys.value.status == 401
