"""
How C{[plugin:virtual_groups]} builds the plugin: its options, the groups written there
(C{group.NAME}), and which store keeps the groups.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.interfaces import (
    Group,
    IGroupSource,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)

from .model import (
    DIRECT_FIELDS,
    GROUP_FIELDS,
    PUBLISH_POLICIES,
    GroupError,
    checkTemplate,
    makeGroup,
    parseMember,
)
from .routing import VirtualGroups
from .store import SQLiteGroupStore

_OPTIONS = (
    "path",
    "poll_interval",
    "group_prefix",
    "p2p_prefix",
    "p2p_topic",
    "control",
    "sources",
    "admins",
    "inbox_max_messages",
    "inbox_max_age",
)


_GROUP_KEYS = ("topic", "by", "echo", "owners", "publish", "events", "inbox", "history")


def _prefix(options: Mapping[str, str], key: str, default: str) -> str:
    value = options.get(key, default)
    if not value.endswith("/") or len(value) < 2 or any(c in value for c in "+#\0"):
        raise PluginConfigError(key, f"expected a topic prefix ending in '/', got {value!r}")
    return value


def _bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise PluginConfigError(key, f"expected true or false, got {value!r}")
    return value.lower() == "true"


def _count(key: str, text: str, zero: bool = False) -> int:
    text = text.strip()
    if not text.isdigit() or (int(text) == 0 and not zero):
        kind = "a non-negative" if zero else "a positive"
        raise PluginConfigError(key, f"expected {kind} integer, got {text!r}")
    return int(text)


def staticGroups(options: Mapping[str, str]) -> list[Group]:
    """
    The groups of C{group.NAME = member[:qos], ...} with their C{group.NAME.topic},
    C{group.NAME.by} (C{clientid} or C{username}), C{group.NAME.echo}, C{group.NAME.owners},
    C{group.NAME.publish}, C{group.NAME.events}, C{group.NAME.inbox} and C{group.NAME.history}.

    @raise PluginConfigError: naming the key at fault.
    """
    settings: dict[str, dict[str, str]] = {}
    for key, value in options.items():
        if not key.startswith("group."):
            continue
        name, _, setting = key.removeprefix("group.").partition(".")
        if setting and setting not in _GROUP_KEYS:
            raise PluginConfigError(
                key, f"unknown key; expected group.NAME or group.NAME.{{{','.join(_GROUP_KEYS)}}}"
            )
        settings.setdefault(name, {})[setting or "members"] = value
    groups = []
    for name, values in settings.items():
        where = f"group.{name}"
        if "members" not in values:
            raise PluginConfigError(where, "required: the group's members, e.g. alice, bob:1")
        by = values.get("by", "clientid")
        if by not in ("clientid", "username"):
            raise PluginConfigError(f"{where}.by", f"expected clientid or username, got {by!r}")
        topic = values.get("topic")
        try:
            if topic is not None:
                checkTemplate(topic, GROUP_FIELDS)
        except GroupError as e:
            raise PluginConfigError(f"{where}.topic", str(e)) from None
        echo = _bool(f"{where}.echo", values.get("echo", "false"))
        events = _bool(f"{where}.events", values.get("events", "false"))
        inbox = _bool(f"{where}.inbox", values.get("inbox", "false"))
        history = _count(f"{where}.history", values.get("history", "0"), zero=True)
        publish = values.get("publish", "members")
        if publish not in PUBLISH_POLICIES:
            raise PluginConfigError(
                f"{where}.publish",
                f"expected one of {', '.join(PUBLISH_POLICIES)}, got {publish!r}",
            )
        if history and not inbox:
            raise PluginConfigError(f"{where}.history", "needs group.NAME.inbox = true")
        try:
            owners = [o.strip() for o in values.get("owners", "").split(",") if o.strip()]
            members = dict(parseMember(m) for m in values["members"].split(",") if m.strip())
            group = makeGroup(
                name,
                members,
                byUsername=by == "username",
                topic=topic,
                echo=echo,
                owners=owners,
                publish=publish,
                events=events,
                inbox=inbox,
                history=history,
            )
        except GroupError as e:
            raise PluginConfigError(where, str(e)) from None
        groups.append(group)
    return groups


def brokerGroupStore(context: PluginContext) -> IGroupStore | None:
    """
    The broker's store if it also keeps groups, so that membership lives with the rest of the
    broker's state; L{None} for a store that does not (the memory store, the file store).
    """
    if context.storePlugin is None:
        return None
    store = context.plugin(context.storePlugin, IMessageStore)
    return store if IGroupStore.providedBy(store) else None


def _saveFailed(failure: Failure, name: str) -> None:
    Logger().failure("virtual groups: cannot store group {name}", failure, name=name)


@implementer(IPlugin, IPluginFactory)
class VirtualGroupsFactory:
    name = "virtual_groups"

    def build(self, options: Mapping[str, str], context: PluginContext) -> VirtualGroups:
        for key in options:
            if key not in _OPTIONS and not key.startswith("group."):
                expected = ", ".join((*_OPTIONS, "group.NAME"))
                raise PluginConfigError(key, f"unknown option; expected one of {expected}")
        directTopic = options.get("p2p_topic")
        if directTopic is not None:
            try:
                checkTemplate(directTopic, DIRECT_FIELDS)
            except GroupError as e:
                raise PluginConfigError("p2p_topic", str(e)) from None
        text = options.get("poll_interval", "1")
        try:
            pollInterval = float(text)
        except ValueError:
            pollInterval = 0.0
        if not pollInterval > 0:
            raise PluginConfigError(
                "poll_interval", f"expected a positive number of seconds, got {text!r}"
            )
        sources = []
        for name in filter(None, (n.strip() for n in options.get("sources", "").split(","))):
            try:
                sources.append(context.plugin(name, IGroupSource))
            except PluginConfigError as e:
                raise PluginConfigError("sources", e.why) from None
        initial = staticGroups(options)
        store = brokerGroupStore(context)
        if store is not None:
            for group in initial:
                maybeDeferred(store.save, group).addErrback(_saveFailed, group.name)
        else:
            path = os.path.normpath(context.path(options.get("path", "groups.db")))
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                store = SQLiteGroupStore(context.reactor, path, initial, pollInterval=pollInterval)
            except OSError as e:
                raise PluginConfigError("path", f"{path}: {e.strerror}") from None
            except GroupError as e:
                raise PluginConfigError("path", str(e)) from None
        maxAge = options.get("inbox_max_age", "604800")
        try:
            inboxMaxAge = float(maxAge)
        except ValueError:
            inboxMaxAge = 0.0
        if not inboxMaxAge > 0:
            raise PluginConfigError(
                "inbox_max_age", f"expected a positive number of seconds, got {maxAge!r}"
            )
        return VirtualGroups(
            store,
            sources,
            groupPrefix=_prefix(options, "group_prefix", "$group/"),
            directPrefix=_prefix(options, "p2p_prefix", "$p2p/"),
            directTopic=directTopic,
            control=_bool("control", options.get("control", "false")),
            admins=[a.strip() for a in options.get("admins", "").split(",") if a.strip()],
            inboxMaxMessages=_count("inbox_max_messages", options.get("inbox_max_messages", "100")),
            inboxMaxAge=inboxMaxAge,
        )


virtualGroups = VirtualGroupsFactory()
