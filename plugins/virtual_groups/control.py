"""
The control topics of virtual groups: requests to manage groups, published by clients and
answered on their response topic, each checked against the caller's role.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.codec.properties import Properties
from mqttd.interfaces import Action, ClientInfo
from mqttd.message import Message, PropertiedMessage
from mqttd.topics import DEFAULT_MAX_LEVELS, InvalidTopic, validate_topic_name

from .model import GroupError, checkName, describe, makeGroup, parseMember

if TYPE_CHECKING:
    from .routing import VirtualGroups


# What set may change, what of that an owner may, and the keys of any request.
_SETTABLE = frozenset({"topic", "echo", "publish", "events", "inbox", "history", "owners"})


_OWNER_SETTABLE = frozenset({"publish", "events", "echo", "topic"})


_REQUEST_KEYS = frozenset({"group", "response_topic", "correlation"})


class GroupControl:
    """
    The control topics C{$CONTROL/mqttd/groups/ACTION} of a L{VirtualGroups}: JSON requests to
    create, change, join, leave and list groups, answered on the request's response topic.
    """

    log = Logger()

    def __init__(self, groups: VirtualGroups) -> None:
        self.groups = groups

    def request(self, action: str, message: Message, publisher: ClientInfo | None) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            self.log.warn("virtual groups: a request to {action} is not JSON", action=action)
            return
        if not isinstance(request, dict):
            self.log.warn("virtual groups: a request to {action} is not an object", action=action)
            return
        responseTopic = request.get("response_topic")
        # An MQTT 5 request may say it the 5.0 way instead (mosquitto_rr does): the Response
        # Topic property, whose Correlation Data the reply then carries.
        properties = message.properties
        correlation = properties.correlation_data if responseTopic is None else None
        if responseTopic is None:
            responseTopic = properties.response_topic
        elif isinstance(responseTopic, str) and responseTopic:
            # The property was checked as a topic name when it was read; the body's must be
            # too, or a reply would go out on a name no PUBLISH may carry [MQTT-3.3.2-2].
            levels = (
                self.groups.broker.config.max_topic_levels
                if self.groups.broker is not None
                else DEFAULT_MAX_LEVELS
            )
            try:
                validate_topic_name(responseTopic, levels)
            except InvalidTopic as e:
                self.log.warn(
                    "virtual groups: a request to {action} refused: its response_topic {topic!r}"
                    " is not a topic name ({why})",
                    action=action,
                    topic=responseTopic[:128],
                    why=str(e),
                )
                return
        d = maybeDeferred(self._act, action, request, publisher)
        d.addErrback(_explain)
        if isinstance(responseTopic, str) and responseTopic:
            d.addCallback(
                self._reply,
                responseTopic,
                request.get("correlation"),
                message.qos,
                publisher,
                correlation,
            )
        d.addErrback(self._requestFailed, action)

    def _requestFailed(self, failure: Failure, action: str) -> None:
        self.log.failure("virtual groups: {action} failed", failure, action=action)

    def _isAdmin(self, caller: ClientInfo | None) -> bool:
        return (
            caller is not None
            and caller.username is not None
            and caller.username in self.groups.admins
        )

    def _act(self, action: str, request: Mapping[str, Any], caller: ClientInfo | None) -> Any:
        store = self.groups.store
        admin = self._isAdmin(caller)
        if action == "mine":
            # Every group the caller is in, with its role, in one answer.
            if caller is None:
                raise GroupError("no caller")
            names = set(store.groupNames())
            for source in self.groups.sources:
                names.update(source.groupNames())
            mine = []
            for candidate in sorted(names):
                group = self.groups.find(candidate)
                mine_ = self.groups.memberName(group, caller) if group is not None else None
                if group is not None and mine_ is not None and mine_ in group.members:
                    mine.append(
                        {
                            "group": candidate,
                            "role": "owner" if mine_ in group.owners else "member",
                            "publish": group.publish,
                        }
                    )
            return {"ok": True, "groups": mine}
        if action == "list" and "group" not in request:
            if not admin:
                raise GroupError("not allowed: only an administrator lists every group")
            names = set(store.groupNames())
            for source in self.groups.sources:
                names.update(source.groupNames())
            return {"ok": True, "groups": sorted(names)}
        name = request.get("group")
        if not isinstance(name, str):
            raise GroupError("expected a group name in 'group'")
        existing = store.group(name)
        role: str | None = None
        if caller is not None:
            known = existing if existing is not None else self.groups.find(name)
            member = self.groups.memberName(known, caller) if known is not None else None
            if known is not None and member is not None and member in known.members:
                role = "owner" if member in known.owners else "member"
        if action == "list":
            group = self.groups.find(name)
            if group is None or not (admin or role):
                # The same answer as for a group that does not exist: nothing leaks.
                raise GroupError(f"no group {name!r}")
            return {"ok": True, **describe(group)}
        if action == "create":
            if not admin:
                raise GroupError("not allowed: only an administrator creates groups")
            if existing is not None:
                raise GroupError(f"group {name!r} exists")
            group = makeGroup(name, _members(request), **_settings(request, creating=True))
        elif action == "delete":
            if not admin:
                raise GroupError("not allowed: only an administrator deletes groups")
            if existing is None:
                raise GroupError(f"no group {name!r}")
            return maybeDeferred(store.delete, name).addCallback(
                lambda _: {"ok": True, "group": name}
            )
        elif action == "leave":
            if existing is None or role is None or caller is None:
                raise GroupError(f"not a member of {name!r}")
            me = self.groups.memberName(existing, caller)
            if me in existing.owners and existing.owners == {me}:
                # A group nobody may manage but the operators: as a chat app, hand it on first.
                raise GroupError(
                    f"not allowed: you are the last owner of {name!r}; make another member an"
                    " owner first (set owners), or ask an administrator to delete it"
                )
            group = replace(
                existing,
                members={m: q for m, q in existing.members.items() if m != me},
                owners=existing.owners - {me},
            )
        elif action in ("add", "remove", "set"):
            if not (admin or role == "owner"):
                raise GroupError(f"not allowed: only an owner of {name!r} manages it")
            if action == "add":
                if existing is None:
                    if not admin:
                        raise GroupError(f"no group {name!r}")
                    existing = makeGroup(name)
                group = replace(existing, members={**existing.members, **_members(request)})
            elif existing is None:
                raise GroupError(f"no group {name!r}")
            elif action == "remove":
                gone = set(_members(request))
                if not admin and gone & existing.owners:
                    raise GroupError("not allowed: only an administrator removes an owner")
                group = replace(
                    existing,
                    members={m: q for m, q in existing.members.items() if m not in gone},
                    owners=existing.owners - gone,
                )
            else:
                if "by" in request:
                    raise GroupError(
                        "'by' cannot be changed by set: delete the group and create it again"
                    )
                unknown = sorted(set(request) - _SETTABLE - _REQUEST_KEYS)
                if unknown:
                    raise GroupError(f"set cannot change {', '.join(map(repr, unknown))}")
                changes = _settings(request, creating=False)
                refused = sorted(set(changes) - _OWNER_SETTABLE)
                if not admin and refused:
                    raise GroupError(
                        f"not allowed: only an administrator sets {', '.join(map(repr, refused))};"
                        " owners change publish, events, echo, topic"
                    )
                current = describe(existing)
                group = makeGroup(
                    name,
                    existing.members,
                    byUsername=existing.byUsername,
                    **{
                        "topic": current["topic"],
                        "echo": existing.echo,
                        "owners": existing.owners,
                        "publish": existing.publish,
                        "events": existing.events,
                        "inbox": existing.inbox,
                        "history": existing.history,
                        **changes,
                    },
                )
        else:
            raise GroupError(
                f"unknown action {action!r}; expected create, delete, add, remove, set, leave,"
                " list or mine"
            )
        return maybeDeferred(store.save, group).addCallback(
            lambda _: {"ok": True, **describe(group)}
        )

    def _reply(
        self,
        answer: dict[str, Any],
        responseTopic: str,
        correlation: Any,
        qos: int,
        publisher: ClientInfo | None,
        correlationData: bytes | None = None,
    ) -> Any:
        if correlation is not None:
            answer["correlation"] = correlation
        broker = self.groups.broker
        if broker is None:
            return None
        if responseTopic.startswith("$") or publisher is None:
            self.log.warn(
                "virtual groups: no reply to {topic}: replies never go to a server topic",
                topic=responseTopic,
            )
            return None
        # The reply goes where its caller could have published itself, so a request cannot
        # write into another user's inbox in the server's name.
        decision = broker.authorize(publisher, Action.PUBLISH, responseTopic)
        payload = json.dumps(answer).encode("utf-8")
        message = Message(responseTopic, payload, qos)
        if correlationData is not None:
            message = PropertiedMessage(
                responseTopic,
                payload,
                qos,
                False,
                Properties(correlation_data=correlationData),
                broker.clock.seconds(),
            )
        if isinstance(decision, Deferred):
            return decision.addCallback(self._replyDecided, message, publisher)
        return self._replyDecided(decision, message, publisher)

    def _replyDecided(self, allowed: bool, message: Message, publisher: ClientInfo) -> None:
        if not allowed:
            self.log.warn(
                "virtual groups: no reply to {topic}: {clientId} may not publish there",
                topic=message.topic,
                clientId=publisher.clientId,
            )
            return
        if self.groups.broker is not None:
            self.groups.broker.route(message)


def _settings(request: Mapping[str, Any], creating: bool) -> dict[str, Any]:
    """The group settings a control request names, checked for their types."""
    settings: dict[str, Any] = {}
    if creating:
        by = request.get("by", "clientid")
        if by not in ("clientid", "username"):
            raise GroupError(f"'by' must be clientid or username, got {by!r}")
        settings["byUsername"] = by == "username"
    for key, kind in (
        ("topic", str),
        ("echo", bool),
        ("publish", str),
        ("events", bool),
        ("inbox", bool),
        ("history", int),
    ):
        if key in request:
            value = request[key]
            if value is not None and not isinstance(value, kind):
                raise GroupError(f"'{key}' must be a {kind.__name__}")
            settings[key] = value
    if "owners" in request:
        owners = request["owners"]
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise GroupError("'owners' must be a list of names")
        settings["owners"] = owners
    return settings


def _members(request: Mapping[str, Any]) -> dict[str, int]:
    members = request.get("members", {})
    if isinstance(members, list) and all(isinstance(m, str) for m in members):
        return dict(parseMember(m) for m in members)
    if isinstance(members, dict) and all(q in (0, 1, 2) for q in members.values()):
        return {checkName("member", m): q for m, q in members.items()}
    raise GroupError("'members' must be a list of names or an object of name to QoS")


def _explain(failure: Failure) -> dict[str, Any]:
    failure.trap(GroupError)
    return {"ok": False, "error": str(failure.value)}
