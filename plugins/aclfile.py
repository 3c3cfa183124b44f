"""
C{aclfile}: authorises against a mosquitto C{acl_file}, read unchanged.

The format, as mosquitto 2.0 reads it::

    # comment
    topic [read|write|readwrite|deny] TOPIC     (before any user line: anonymous clients)
    user NAME                                   (topic lines below apply to NAME)
    pattern [read|write|readwrite|deny] TOPIC   (every client; %c = client id, %u = user name)

The access word defaults to C{readwrite}.  A C{deny} entry wins over any grant; a client gets
what some entry grants and nothing else.  Receiving a message needs C{read} on its topic;
subscribing needs C{read} on a pattern covering the whole filter (C{read sensors/#} allows
C{sensors/+/temp}, not C{#}), and each delivery is still checked; publishing needs C{write}.

Two rules protect patterns: a client id or user name holding C{+} or C{#} is denied everything,
and a pattern is skipped when the value it substitutes holds C{+}, C{#} or C{/} (or, for C{%u},
when the client has no user name), so no client can widen a pattern by choosing its name
(CVE-2017-7650).  C{$SYS} is read-only: no entry grants publishing there.

Nothing granted means no answer (abstain): alone in C{[acl] chain} that denies, as in mosquitto,
and in a longer chain the next authorizer may still grant.  SIGHUP re-reads the file; a file
that cannot be read or parsed leaves the previous rules in place.

Options (C{[plugin:aclfile]}): C{file}, relative to the configuration file's directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.interfaces import (
    Action,
    ClientInfo,
    IAuthorizer,
    IPluginFactory,
    IReloadable,
    IRuleListing,
    PluginConfigError,
    PluginContext,
    ReloadError,
)
from mqttd.plugin_loader import checkOptions

READ = 1
WRITE = 2
DENY = 0
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": DENY}


class ACLFileError(Exception):
    """A line of an ACL file cannot be used."""


@dataclass(frozen=True, slots=True)
class Entry:
    access: int
    topic: str


@dataclass(slots=True)
class Rules:
    """A parsed ACL file."""

    anonymous: list[Entry] = field(default_factory=list)
    users: dict[str, list[Entry]] = field(default_factory=dict)
    patterns: list[Entry] = field(default_factory=list)


def _entry(rest: str, number: int) -> Entry:
    word, _, topic = rest.partition(" ")
    access = _ACCESS.get(word)
    if access is None:
        # No access word: the whole rest is the topic, which may hold spaces.
        access, topic = READ | WRITE, rest
    topic = topic.strip()
    if not topic:
        raise ACLFileError(f"line {number}: no topic")
    return Entry(access, topic)


def parseACLFile(text: str) -> Rules:
    """
    @raise ACLFileError: naming the first bad line.
    """
    rules = Rules()
    current = rules.anonymous
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            if not rest:
                raise ACLFileError(f"line {number}: user without a name")
            current = rules.users.setdefault(rest, [])
        elif keyword == "topic":
            current.append(_entry(rest, number))
        elif keyword == "pattern":
            rules.patterns.append(_entry(rest, number))
        else:
            raise ACLFileError(f"line {number}: expected topic, user or pattern, got {keyword!r}")
    return rules


def readACLFile(path: str) -> Rules:
    """
    @raise ACLFileError: the file cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ACLFileError(f"cannot read {path}: {e}") from None
    return parseACLFile(text)


def matches(pattern: str, topic: str) -> bool:
    """Whether the topic filter C{pattern} matches the topic name C{topic} [MQTT-4.7]."""
    return _covers(pattern.split("/"), topic.split("/"))


def covers(pattern: str, topicFilter: str) -> bool:
    """Whether every topic name C{topicFilter} matches is also matched by C{pattern}."""
    return _covers(pattern.split("/"), topicFilter.split("/"))


def _covers(pattern: Sequence[str], levels: Sequence[str]) -> bool:
    # [MQTT-4.7.2-1]: a pattern starting with a wildcard never reaches '$' topics.
    if levels[0].startswith("$") and pattern[0] in ("+", "#"):
        return False
    for index, want in enumerate(pattern):
        if want == "#":
            # Checked before running out of levels: "a/#" also matches "a" [MQTT-4.7.1-2].
            return True
        if index >= len(levels):
            return False
        level = levels[index]
        if level == "#" or (level == "+" and want != "+"):
            return False
        if want != "+" and want != level:
            return False
    return len(levels) == len(pattern)


def _substitute(topic: str, client: ClientInfo) -> str | None:
    for marker, value in (("%c", client.clientId), ("%u", client.username)):
        if marker in topic:
            if value is None or any(c in value for c in "+#/"):
                return None
            topic = topic.replace(marker, value)
    return topic


@implementer(IAuthorizer, IReloadable, IRuleListing)
class ACLFileAuthorizer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.rules = readACLFile(path)

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool | None:
        if action == Action.PUBLISH and topic.startswith("$SYS"):
            return False
        username = client.username
        if any(c in client.clientId for c in "+#") or (
            username is not None and any(c in username for c in "+#")
        ):
            return False
        rules = self.rules
        entries = list(rules.anonymous if username is None else rules.users.get(username, ()))
        for pattern in rules.patterns:
            substituted = _substitute(pattern.topic, client)
            if substituted is not None:
                entries.append(Entry(pattern.access, substituted))
        check = covers if action == Action.SUBSCRIBE else matches
        needed = WRITE if action == Action.PUBLISH else READ
        if any(e.access == DENY and check(e.topic, topic) for e in entries):
            return False
        if any(e.access & needed and check(e.topic, topic) for e in entries):
            return True
        return None

    def listRules(self) -> list[dict[str, Any]]:
        rules = self.rules
        listed: list[dict[str, Any]] = [_listed(e) for e in rules.anonymous]
        for user, entries in rules.users.items():
            listed.extend({"user": user, **_listed(e)} for e in entries)
        listed.extend({"pattern": True, **_listed(e)} for e in rules.patterns)
        return listed

    def reload(self) -> None:
        try:
            rules = readACLFile(self.path)
        except ACLFileError as e:
            raise ReloadError(_naming(self.path, str(e))) from None
        self.rules = rules


def _listed(entry: Entry) -> dict[str, Any]:
    access = next(word for word, bits in _ACCESS.items() if bits == entry.access)
    return {"topic": entry.topic, "access": access}


@implementer(IPlugin, IPluginFactory)
class _Factory:
    name = "aclfile"

    def build(self, options: Mapping[str, str], context: PluginContext) -> ACLFileAuthorizer:
        checkOptions(options, required=("file",))
        try:
            return ACLFileAuthorizer(context.path(options["file"]))
        except ACLFileError as e:
            raise PluginConfigError("file", str(e)) from None


aclfile = _Factory()


def _naming(path: str, why: str) -> str:
    # Read errors name the file already; a line's error does not.
    return why if path in why else f"{path}: {why}"
