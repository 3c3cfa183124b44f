"""
What a virtual group is: the names, member and topic-template rules, and a group's
description as the control topics and the HTTP API give it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any

from mqttd.interfaces import Group

CONTROL_PREFIX = "$CONTROL/mqttd/groups/"


PUBLISH_POLICIES = ("members", "owners", "acl")


# Under a group's topic: the membership events of a group with events = true.
MEMBERSHIP_REST = "$membership"


GROUP_FIELDS = frozenset({"group", "member", "clientid", "publisher", "rest"})


DIRECT_FIELDS = frozenset({"clientid", "member", "publisher", "rest"})


class GroupError(ValueError):
    """A group or a member cannot be used as given."""


def checkTemplate(template: str, fields: frozenset[str]) -> str:
    """
    @return: C{template}, a delivered-topic template using only C{fields}.
    @raise GroupError: it uses anything else, or wildcards.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise GroupError(f"bad topic template {template!r}: {e}") from None
    for literal, field, spec, conversion in parsed:
        if "+" in literal or "#" in literal:
            raise GroupError(f"a topic template cannot hold wildcards: {template!r}")
        if field is not None and (field not in fields or spec or conversion):
            known = ", ".join("{" + f + "}" for f in sorted(fields))
            raise GroupError(f"topic template {template!r}: expected only {known}")
    if not template:
        raise GroupError("empty topic template")
    return template


def checkName(kind: str, name: str) -> str:
    """
    @return: C{name}, a group or member name: one that fits in a topic level.
    @raise GroupError: it is empty or holds a wildcard, C{/} or NUL.
    """
    if not name or any(c in name for c in "+#/\0"):
        raise GroupError(f"bad {kind} name {name!r}: empty, or holds +, #, / or NUL")
    return name


def parseMember(text: str, qos: int = 2) -> tuple[str, int]:
    """
    C{member} or C{member:QOS} (a trailing C{:0}, C{:1} or C{:2} is the member's highest QoS).
    """
    name, colon, suffix = text.strip().rpartition(":")
    if colon and suffix.isdigit():
        # Any number there was meant as a QoS: a member named "carol:7" would be a typo's result.
        if suffix not in ("0", "1", "2"):
            raise GroupError(
                f"member {text.strip()!r}: QoS {suffix} is not 0, 1 or 2"
                " (a name ending in :N is written NAME:N:QOS)"
            )
        return checkName("member", name), int(suffix)
    return checkName("member", text.strip()), qos


def makeGroup(
    name: str,
    members: Mapping[str, int] | None = None,
    *,
    byUsername: bool = False,
    topic: str | None = None,
    echo: bool = False,
    owners: Iterable[str] = (),
    publish: str = "members",
    events: bool = False,
    inbox: bool = False,
    history: int = 0,
) -> Group:
    """
    A checked L{Group}.  Owners are members: any not among C{members} is added at QoS 2.

    @raise GroupError: the name, a member, a QoS, the template or a setting cannot be used.
    """
    members = dict(members or {})
    owners = frozenset(checkName("owner", owner) for owner in owners)
    for owner in owners:
        members.setdefault(owner, 2)
    for member, qos in members.items():
        checkName("member", member)
        if qos not in (0, 1, 2):
            raise GroupError(f"member {member!r}: QoS must be 0, 1 or 2, got {qos!r}")
    if topic is not None:
        checkTemplate(topic, GROUP_FIELDS)
    if publish not in PUBLISH_POLICIES:
        raise GroupError(f"publish must be one of {', '.join(PUBLISH_POLICIES)}, got {publish!r}")
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise GroupError(f"history must be a number of messages, got {history!r}")
    if history and not inbox:
        raise GroupError("history needs inbox = true: the messages are kept in the inbox")
    return Group(
        checkName("group", name),
        members,
        byUsername,
        topic,
        echo,
        owners,
        publish,
        bool(events),
        bool(inbox),
        history,
    )


def describe(group: Group) -> dict[str, Any]:
    """C{group} as the control topics and C{mqttd groups list} show it."""
    return {
        "group": group.name,
        "by": "username" if group.byUsername else "clientid",
        "topic": group.topic,
        "echo": group.echo,
        "members": dict(sorted(group.members.items())),
        "owners": sorted(group.owners),
        "publish": group.publish,
        "events": group.events,
        "inbox": group.inbox,
        "history": group.history,
    }
