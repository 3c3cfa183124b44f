"""
The REST API under C{/api/v1/}: JSON in and out, documented in C{docs/http-api.md}.

This module is its routing: the path and method to a handler, the caller and role checks, the
JSON answer and error; the handlers are in one module per area (C{overview}, C{clients},
C{messages}, C{groups}, C{users}), reading requests with L{mqttd.http.request}.  Everything
goes through the broker's facade (L{mqttd.broker.Broker}'s management methods,
C{route}, its read-only maps) and the plugin interfaces (L{IGroupStore}, L{IUserStore},
L{IRuleListing}); nothing reaches into a session beyond what it shows.  Errors are
L{ApiError}s: JSON with a code and a message, and for bad input a 400 naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mqttd.http.auth import Caller, Guard
from mqttd.http.clients import ClientsApi
from mqttd.http.errors import ApiError, notFound
from mqttd.http.groups import GroupsApi
from mqttd.http.management import Management
from mqttd.http.messages import MessagesApi
from mqttd.http.overview import OverviewApi
from mqttd.http.request import GET, POST, Handler, Routes, objectBody, stringField
from mqttd.http.users import UsersApi


@dataclass(frozen=True, slots=True)
class _Route:
    method: bytes
    parts: tuple[str, ...]
    handler: Handler
    # Whether a read-only (viewer) key may call it.
    reading: bool


class ApiResource(Resource):
    """
    C{/api}: routes C{/api/v1/...} to the handlers of each area (the login here, the overview,
    clients, messages, groups, users).  Every route but the login needs a L{Caller}; changes
    need the C{admin} role.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, management: Management, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.routes: list[_Route] = []
        ownRoutes: Routes = [
            (POST, "login", self.login),
            (POST, "logout", self.logout),
            (GET, "whoami", self.whoami),
        ]
        areas = (OverviewApi, ClientsApi, MessagesApi, GroupsApi, UsersApi)
        for routes in [ownRoutes, *(area(management).routes() for area in areas)]:
            for method, path, handler in routes:
                self.routes.append(_Route(method, tuple(path.split("/")), handler, method == GET))

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
        body = objectBody(request)
        username = stringField(body, "username")
        password = stringField(body, "password")
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
