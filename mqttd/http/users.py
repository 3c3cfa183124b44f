"""
The API's users and access rules: the users of every authenticator that can manage them
(L{IUserStore}: listed, created, given a new password, deleted) and the rules of every authorizer
that can list them (L{IRuleListing}).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from mqttd.http.auth import Caller
from mqttd.http.errors import ApiError, badField, notFound
from mqttd.http.management import Management
from mqttd.http.request import (
    DELETE,
    GET,
    POST,
    PUT,
    Routes,
    objectBody,
    paged,
    stringField,
)
from mqttd.interfaces import IUserStore


class UsersApi:
    """Users and access rules."""

    log = Logger()

    def __init__(self, management: Management) -> None:
        self.management = management

    def routes(self) -> Routes:
        return [
            (GET, "users", self.listUsers),
            (POST, "users", self.createUser),
            (PUT, "users/{username}", self.changePassword),
            (DELETE, "users/{username}", self.deleteUser),
            (GET, "acl", self.listRules),
        ]

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
        return paged(
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
        body = objectBody(request)
        username = stringField(body, "username")
        password = stringField(body, "password")
        stores = self._userStores(body)
        if any(username in s.usernames() for s in stores.values()):
            raise ApiError(409, "CONFLICT", f"user {username!r} exists", "username")
        self._setPassword(stores, username, password)
        self.log.info("{caller} created user {username}", caller=caller.name, username=username)
        return 201, {"username": username, "plugins": sorted(stores)}

    def changePassword(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = objectBody(request)
        password = stringField(body, "password")
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
