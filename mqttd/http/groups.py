"""
The API's virtual groups: listed, shown, created, replaced, deleted, and their members and owners
changed, through the virtual groups plugin's L{IGroupStore} (a 404 C{NOT_CONFIGURED} when no
such plugin runs).  The plugin's module, which builds and describes groups, is imported only
when a request needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
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
    boolField,
    objectBody,
    paged,
    qosField,
    stringField,
)
from mqttd.interfaces import IGroupStore
from mqttd.plugin_loader import pluginPackage


class GroupsApi:
    """Virtual groups and their members."""

    def __init__(self, management: Management) -> None:
        self.management = management

    def routes(self) -> Routes:
        return [
            (GET, "groups", self.listGroups),
            (POST, "groups", self.createGroup),
            (GET, "groups/{group}", self.showGroup),
            (PUT, "groups/{group}", self.replaceGroup),
            (DELETE, "groups/{group}", self.deleteGroup),
            (POST, "groups/{group}/members", self.addMembers),
            (PUT, "groups/{group}/members/{member}", self.changeMember),
            (DELETE, "groups/{group}/members/{member}", self.removeMember),
        ]

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
                return {
                    vg.checkName("member", m): qosField(members, m, "members.") for m in members
                }
        except vg.GroupError as e:
            raise badField("members", str(e)) from None
        raise badField("members", "expected a list of names or an object of name to QoS")

    def _built(self, name: str, body: Mapping[str, Any]) -> Any:
        vg = self._groups()[1]
        by = body.get("by", "clientid")
        if by not in ("clientid", "username"):
            raise badField("by", f"expected clientid or username, got {by!r}")
        topic = stringField(body, "topic", required=False)
        publish = body.get("publish", "members")
        if publish not in vg.PUBLISH_POLICIES:
            raise badField("publish", f"expected one of {', '.join(vg.PUBLISH_POLICIES)}")
        history = body.get("history", 0)
        if not isinstance(history, int) or isinstance(history, bool) or history < 0:
            raise badField("history", f"expected a number of messages, got {history!r}")
        inbox = boolField(body, "inbox")
        if history and not inbox:
            raise badField("history", "needs inbox: true, where the messages are kept")
        try:
            return vg.makeGroup(
                name,
                self._members(body, vg),
                byUsername=by == "username",
                topic=topic,
                echo=boolField(body, "echo"),
                owners=self._owners(body, vg),
                publish=publish,
                events=boolField(body, "events"),
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
        return paged(request, [vg.describe(g) for g in groups if g is not None])

    def createGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = objectBody(request)
        name = stringField(body, "name")
        store = self._groups()[0]
        if store.group(name) is not None:
            raise ApiError(409, "CONFLICT", f"group {name!r} exists", "name")
        return self._saved(self._built(name, body), 201)

    def showGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        vg = self._groups()[1]
        return vg.describe(self._group(params["group"]))

    def replaceGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = objectBody(request)
        self._group(params["group"])
        return self._saved(self._built(params["group"], body))

    def deleteGroup(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        store = self._groups()[0]
        self._group(params["group"])
        return maybeDeferred(store.delete, params["group"]).addCallback(lambda _: (204, None))

    def addMembers(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = objectBody(request)
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
        body = objectBody(request)
        group = self._group(params["group"])
        member = params["member"]
        if member not in group.members:
            raise notFound(f"member {member!r} of group {group.name!r}")
        qos = qosField(body, default=group.members[member])
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
