"""
Virtual groups and direct messages: recipients the server holds, so that a client reaches a group
or one session without anyone having subscribed.

A message published to C{$group/NAME/REST} goes once to the session of every member of group
NAME, online or offline (persistent sessions queue it), at the lower of the published QoS and the
member's; one published to C{$p2p/CLIENTID/REST} goes to that client's session alone.  Each
delivery passes the receiving client's receive ACL, as any delivery does.  As an authorizer (put
it first in C{[acl] chain}) the plugin lets the members of a group publish to it and abstains for
everyone else, so the next authorizer decides about them.

Groups live in one L{IGroupStore}: the broker's store when it is one (the shipped SQLite store,
C{[store] plugin = sqlite}), else an SQLite file of the plugin's own (C{path}).  They are managed
from C{[plugin:virtual_groups]} (C{group.NAME = ...}, written to the store at every start), from
the control topics C{$CONTROL/mqttd/groups/ACTION} and from C{mqttd groups}; changes made by
another process are picked up within the store's poll interval (C{group_poll_interval} of the
SQLite store, C{poll_interval} here for the plugin's own file).  Plugins named in C{sources} add
groups computed elsewhere (L{IGroupSource}).  See C{docs/virtual-groups.md}.
"""

from __future__ import annotations

import json
import os
import sqlite3
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.interfaces import (
    Action,
    ClientInfo,
    Group,
    IAuthorizer,
    IBrokerAware,
    IGroupSource,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    ISubscriberSelector,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message

CONTROL_PREFIX = "$CONTROL/mqttd/groups/"
GROUP_FIELDS = frozenset({"group", "member", "clientid", "publisher", "rest"})
DIRECT_FIELDS = frozenset({"clientid", "member", "publisher", "rest"})
SCHEMA_VERSION = 1
# The application_id of a groups file ("mqgr"), so that mqttd never mistakes another SQLite
# database, the broker's own store included, for one.
APPLICATION_ID = 0x6D716772

SCHEMA = """
CREATE TABLE version (changes INTEGER NOT NULL);
INSERT INTO version VALUES (0);
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    by_username INTEGER NOT NULL,
    topic TEXT,
    echo INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (
    group_name TEXT NOT NULL,
    member TEXT NOT NULL,
    qos INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
) WITHOUT ROWID;
"""


class GroupError(ValueError):
    """A group or a member cannot be used as given."""


# Validation, shared by the configuration, the control topics and the command line


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
) -> Group:
    """
    A checked L{Group}.

    @raise GroupError: the name, a member, a QoS or the template cannot be used.
    """
    members = dict(members or {})
    for member, qos in members.items():
        checkName("member", member)
        if qos not in (0, 1, 2):
            raise GroupError(f"member {member!r}: QoS must be 0, 1 or 2, got {qos!r}")
    if topic is not None:
        checkTemplate(topic, GROUP_FIELDS)
    return Group(checkName("group", name), members, byUsername, topic, echo)


# The SQLite file, used from the broker's thread pool and from the command line


def openGroupDatabase(path: str) -> sqlite3.Connection:
    """
    Open, creating it if missing, the groups file at C{path}.

    @raise GroupError: it is not a groups file of this version, or cannot be opened.
    """
    try:
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    except sqlite3.Error as e:
        raise GroupError(f"{path}: cannot open: {e}") from None
    try:
        application = db.execute("PRAGMA application_id").fetchone()[0]
        if application == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise GroupError(f"{path}: an SQLite database, but not an mqttd groups file")
        if application == 0:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(
                f"BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
                f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        elif application != APPLICATION_ID:
            raise GroupError(f"{path}: an SQLite database, but not an mqttd groups file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise GroupError(
                f"{path}: groups file version {version}; this mqttd reads version {SCHEMA_VERSION}"
            )
        db.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as e:
        db.close()
        raise GroupError(f"{path}: not a usable groups file: {e}") from None
    except GroupError:
        db.close()
        raise
    return db


def readChanges(db: sqlite3.Connection) -> int:
    """How many changes the file has seen: any writer, this process or another, adds one."""
    changes: int = db.execute("SELECT changes FROM version").fetchone()[0]
    return changes


def readGroups(db: sqlite3.Connection) -> dict[str, Group]:
    """Every group in the file."""
    members: dict[str, dict[str, int]] = {}
    for groupName, member, qos in db.execute("SELECT group_name, member, qos FROM members"):
        members.setdefault(groupName, {})[member] = qos
    return {
        name: Group(name, members.get(name, {}), bool(byUsername), topic, bool(echo))
        for name, byUsername, topic, echo in db.execute("SELECT * FROM groups")
    }


def writeGroups(db: sqlite3.Connection, groups: Iterable[Group], deleted: Iterable[str]) -> int:
    """
    Replace C{groups} and delete the groups named C{deleted}, in one transaction.

    @return: the file's change count after it.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for name in deleted:
            db.execute("DELETE FROM members WHERE group_name = ?", (name,))
            db.execute("DELETE FROM groups WHERE name = ?", (name,))
        for group in groups:
            db.execute("DELETE FROM members WHERE group_name = ?", (group.name,))
            db.execute(
                "INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?)",
                (group.name, group.byUsername, group.topic, group.echo),
            )
            db.executemany(
                "INSERT INTO members VALUES (?, ?, ?)",
                ((group.name, member, qos) for member, qos in group.members.items()),
            )
        db.execute("UPDATE version SET changes = changes + 1")
        changes = readChanges(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return changes


def _write(path: str, groups: Sequence[Group], deleted: Sequence[str]) -> int:
    with closing(openGroupDatabase(path)) as db:
        return writeGroups(db, groups, deleted)


def _readIfChanged(path: str, known: int) -> tuple[int, dict[str, Group] | None]:
    with closing(openGroupDatabase(path)) as db:
        # One read transaction, so the count and the groups agree.
        db.execute("BEGIN")
        try:
            changes = readChanges(db)
            return changes, (readGroups(db) if changes != known else None)
        finally:
            db.execute("COMMIT")


Runner = Callable[..., "Deferred[Any]"]


@implementer(IGroupStore)
class SQLiteGroupStore:
    """
    Groups in an SQLite file: held in memory for the routing, written through to the file off the
    reactor thread, one write at a time in order; changes other processes make to the file (the
    command line) are read back every C{pollInterval} seconds.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        initial: Sequence[Group] = (),
        *,
        pollInterval: float = 1.0,
        runner: Runner | None = None,
    ) -> None:
        """
        Open the file, write C{initial} to it and read every group (synchronously: at start-up).

        @param runner: runs a blocking call and returns a L{Deferred} of its result; by default
            in the reactor's thread pool.
        @raise GroupError: the file cannot be used.
        """
        self.path = path
        self._reactor = reactor
        self._run = runner or self._inThread
        self._lock = DeferredLock()
        self._watchers: list[Callable[[], None]] = []
        with closing(openGroupDatabase(path)) as db:
            self._changes = writeGroups(db, initial, ()) if initial else readChanges(db)
            self._groups = readGroups(db)
        self._poll = LoopingCall(self._pollFile)
        self._poll.clock = reactor
        self._pollInterval = pollInterval

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def start(self) -> None:
        """Start reading back other processes' changes."""
        self._poll.start(self._pollInterval, now=False)

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()

    # IGroupSource

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def groupNames(self) -> Iterable[str]:
        return self._groups.keys()

    def watch(self, changed: Callable[[], None]) -> None:
        self._watchers.append(changed)

    # IGroupStore

    def save(self, group: Group) -> Deferred[None]:
        self._groups[group.name] = group
        self._changed()
        return self._lock.run(self._writeThrough, (group,), ())

    def delete(self, name: str) -> Deferred[None]:
        if self._groups.pop(name, None) is not None:
            self._changed()
        return self._lock.run(self._writeThrough, (), (name,))

    def _writeThrough(self, groups: Sequence[Group], deleted: Sequence[str]) -> Deferred[None]:
        return self._run(_write, self.path, groups, deleted).addCallback(self._written)

    def _written(self, changes: int) -> None:
        # Another process wrote in between when the count moved by more than this write; the
        # next poll then sees the difference and reads the file.
        if changes == self._changes + 1:
            self._changes = changes

    def _pollFile(self) -> Deferred[None]:
        return self._lock.run(self._readBack).addErrback(self._pollFailed)

    def _readBack(self) -> Deferred[None]:
        return self._run(_readIfChanged, self.path, self._changes).addCallback(self._readIn)

    def _readIn(self, result: tuple[int, dict[str, Group] | None]) -> None:
        changes, groups = result
        if groups is None:
            return
        # Unchanged groups keep their objects, and so what the selector prepared from them.
        for name, group in groups.items():
            if self._groups.get(name) == group:
                groups[name] = self._groups[name]
        self._changes = changes
        self._groups = groups
        self.log.info(
            "virtual groups: read {count} groups changed in {path}",
            count=len(groups),
            path=self.path,
        )
        self._changed()

    def _pollFailed(self, failure: Failure) -> None:
        # Logged and retried at the next poll; the groups in memory keep routing meanwhile.
        self.log.failure("virtual groups: cannot read {path}", failure, path=self.path)

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()


# The plugin


@implementer(ISubscriberSelector, IAuthorizer, IBrokerAware)
class VirtualGroups:
    """
    The selector, authorizer and control-topic handler over one L{IGroupStore} and any number
    of read-only L{IGroupSource}s.

    @ivar dropped: messages to a group that reached nobody (no such group, no members, no
        member with a session) or to a client without a session.
    """

    log = Logger()

    def __init__(
        self,
        store: IGroupStore,
        sources: Sequence[IGroupSource] = (),
        *,
        groupPrefix: str = "$group/",
        directPrefix: str = "$p2p/",
        directTopic: str | None = None,
        control: bool = False,
    ) -> None:
        self.store = store
        self.sources = tuple(sources)
        self.groupPrefix = groupPrefix
        self.directPrefix = directPrefix
        self.directTopic = directTopic
        self.control = control
        # One startswith against this tuple is all an ordinary topic costs the selector.
        self._prefixes = (groupPrefix, directPrefix, *((CONTROL_PREFIX,) if control else ()))
        self.dropped = 0
        self.broker: Any = None
        # Group name -> (the Group it was made from, {clientId: qos}) for groups of client ids
        # delivered under the published topic: one mapping for every message while unchanged.
        self._prepared: dict[str, tuple[Group, dict[str, int]]] = {}
        for source in (store, *self.sources):
            source.watch(self._membershipChanged)

    # IBrokerAware

    def attach(self, broker: Any) -> None:
        self.broker = broker
        # The fan-out topics are the server's: nobody subscribes to them, whatever the ACL.
        broker.reservedPrefixes = (
            *broker.reservedPrefixes,
            *(p for p in self._prefixes if p not in broker.reservedPrefixes),
        )
        if isinstance(self.store, SQLiteGroupStore):
            self.store.start()

    def detach(self) -> None:
        if isinstance(self.store, SQLiteGroupStore):
            self.store.stop()
        self.broker = None

    def _membershipChanged(self) -> None:
        self._prepared.clear()
        # A former member's cached permission to publish to the group must not outlive it.
        if self.broker is not None:
            self.broker.authorizationChanged()

    # Groups

    def find(self, name: str) -> Group | None:
        """The group C{name}: the store's, else the first source's that has one."""
        group = self.store.group(name)
        if group is None:
            for source in self.sources:
                group = source.group(name)
                if group is not None:
                    break
        return group

    def _isMember(self, group: Group, client: ClientInfo) -> bool:
        member = client.username if group.byUsername else client.clientId
        return member is not None and member in group.members

    # ISubscriberSelector

    def select(self, message: Message, publisher: ClientInfo | None) -> Any:
        if not message.topic.startswith(self._prefixes):
            return ()
        topic = message.topic
        if topic.startswith(self.groupPrefix):
            name, _, rest = topic[len(self.groupPrefix) :].partition("/")
            return self._toGroup(name, rest, publisher)
        if topic.startswith(self.directPrefix):
            clientId, _, rest = topic[len(self.directPrefix) :].partition("/")
            return self._toClient(clientId, rest, publisher)
        self._controlRequest(topic[len(CONTROL_PREFIX) :], message, publisher)
        return ()

    def _drop(self) -> tuple[()]:
        self.dropped += 1
        if self.broker is not None:
            self.broker.stats.messagesDropped += 1
        return ()

    def _toClient(self, clientId: str, rest: str, publisher: ClientInfo | None) -> Any:
        if self.broker is not None and clientId not in self.broker.sessions:
            return self._drop()
        if self.directTopic is None:
            return ((clientId, 2),)
        sender = publisher.clientId if publisher is not None else ""
        topic = self.directTopic.format(
            clientid=clientId, member=clientId, publisher=sender, rest=rest
        )
        return ((clientId, 2, topic),)

    def _toGroup(self, name: str, rest: str, publisher: ClientInfo | None) -> Any:
        group = self.find(name)
        if group is None or not group.members:
            return self._drop()
        exclude = None if group.echo or publisher is None else publisher.clientId
        if group.topic is None and not group.byUsername:
            prepared = self._prepared.get(name)
            if prepared is None or prepared[0] is not group:
                prepared = self._prepared[name] = (group, dict(group.members))
            recipients = prepared[1]
            if exclude is not None and exclude in recipients:
                # A C-level copy: far cheaper than a test per member.
                recipients = dict(recipients)
                del recipients[exclude]
            return recipients or self._drop()
        resolved = [
            (clientId, member, qos)
            for clientId, member, qos in self._sessionsOf(group)
            if clientId != exclude
        ]
        if not resolved:
            return self._drop()
        if group.topic is None:
            return {clientId: qos for clientId, _, qos in resolved}
        template = group.topic
        sender = publisher.clientId if publisher is not None else ""
        return [
            (
                clientId,
                qos,
                template.format(
                    group=name, member=member, clientid=clientId, publisher=sender, rest=rest
                ),
            )
            for clientId, member, qos in resolved
        ]

    def _sessionsOf(self, group: Group) -> Iterator[tuple[str, str, int]]:
        """C{(clientId, member, qos)} for each session a member of C{group} has."""
        if not group.byUsername:
            for member, qos in group.members.items():
                yield member, member, qos
            return
        if self.broker is None:
            return
        byUsername = self.broker.clientIdsByUsername
        for member, qos in group.members.items():
            for clientId in byUsername.get(member, ()):
                yield clientId, member, qos

    # IAuthorizer

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool | None:
        if action is Action.RECEIVE:
            # What the fan-out delivers under the server's own topics is for its recipients,
            # so no rule needs to grant reading $group/ or $p2p/ (which nobody can subscribe to).
            if topic.startswith(self.directPrefix):
                return topic[len(self.directPrefix) :].partition("/")[0] == client.clientId or None
            if topic.startswith(self.groupPrefix):
                group = self.find(topic[len(self.groupPrefix) :].partition("/")[0])
                return (group is not None and self._isMember(group, client)) or None
            return None
        if action is not Action.PUBLISH or not topic.startswith(self.groupPrefix):
            return None
        group = self.find(topic[len(self.groupPrefix) :].partition("/")[0])
        if group is not None and self._isMember(group, client):
            return True
        return None

    # The control topics

    def _controlRequest(self, action: str, message: Message, publisher: ClientInfo | None) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            self.log.warn("virtual groups: a request to {action} is not JSON", action=action)
            return
        if not isinstance(request, dict):
            self.log.warn("virtual groups: a request to {action} is not an object", action=action)
            return
        responseTopic = request.get("response_topic")
        d = maybeDeferred(self._act, action, request)
        d.addErrback(_explain)
        if isinstance(responseTopic, str) and responseTopic:
            d.addCallback(
                self._reply, responseTopic, request.get("correlation"), message.qos, publisher
            )
        d.addErrback(self._requestFailed, action)

    def _requestFailed(self, failure: Failure, action: str) -> None:
        self.log.failure("virtual groups: {action} failed", failure, action=action)

    def _act(self, action: str, request: Mapping[str, Any]) -> Any:
        store = self.store
        if action == "list" and "group" not in request:
            names = set(store.groupNames())
            for source in self.sources:
                names.update(source.groupNames())
            return {"ok": True, "groups": sorted(names)}
        name = request.get("group")
        if not isinstance(name, str):
            raise GroupError("expected a group name in 'group'")
        existing = store.group(name)
        if action == "list":
            group = self.find(name)
            if group is None:
                raise GroupError(f"no group {name!r}")
            return {"ok": True, **describe(group)}
        if action == "create":
            if existing is not None:
                raise GroupError(f"group {name!r} exists")
            by = request.get("by", "clientid")
            if by not in ("clientid", "username"):
                raise GroupError(f"'by' must be clientid or username, got {by!r}")
            topic = request.get("topic")
            if topic is not None and not isinstance(topic, str):
                raise GroupError("'topic' must be a string")
            group = makeGroup(
                name,
                _members(request),
                byUsername=by == "username",
                topic=topic,
                echo=request.get("echo") is True,
            )
        elif action == "delete":
            if existing is None:
                raise GroupError(f"no group {name!r}")
            return maybeDeferred(store.delete, name).addCallback(
                lambda _: {"ok": True, "group": name}
            )
        elif action == "add":
            base = existing if existing is not None else makeGroup(name)
            group = replace(base, members={**base.members, **_members(request)})
        elif action == "remove":
            if existing is None:
                raise GroupError(f"no group {name!r}")
            gone = set(_members(request))
            group = replace(
                existing, members={m: q for m, q in existing.members.items() if m not in gone}
            )
        else:
            raise GroupError(
                f"unknown action {action!r}; expected create, delete, add, remove or list"
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
    ) -> Any:
        if correlation is not None:
            answer["correlation"] = correlation
        broker = self.broker
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
        if self.broker is not None:
            self.broker.route(message)


def describe(group: Group) -> dict[str, Any]:
    """C{group} as the control topics and C{mqttd groups list} show it."""
    return {
        "group": group.name,
        "by": "username" if group.byUsername else "clientid",
        "topic": group.topic,
        "echo": group.echo,
        "members": dict(sorted(group.members.items())),
    }


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


# Configuration

_OPTIONS = (
    "path",
    "poll_interval",
    "group_prefix",
    "p2p_prefix",
    "p2p_topic",
    "control",
    "sources",
)
_GROUP_KEYS = ("topic", "by", "echo")


def _prefix(options: Mapping[str, str], key: str, default: str) -> str:
    value = options.get(key, default)
    if not value.endswith("/") or len(value) < 2 or any(c in value for c in "+#\0"):
        raise PluginConfigError(key, f"expected a topic prefix ending in '/', got {value!r}")
    return value


def _bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise PluginConfigError(key, f"expected true or false, got {value!r}")
    return value.lower() == "true"


def staticGroups(options: Mapping[str, str]) -> list[Group]:
    """
    The groups of C{group.NAME = member[:qos], ...} with their C{group.NAME.topic},
    C{group.NAME.by} (C{clientid} or C{username}) and C{group.NAME.echo}.

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
        try:
            members = dict(parseMember(m) for m in values["members"].split(",") if m.strip())
            group = makeGroup(name, members, byUsername=by == "username", topic=topic, echo=echo)
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
        return VirtualGroups(
            store,
            sources,
            groupPrefix=_prefix(options, "group_prefix", "$group/"),
            directPrefix=_prefix(options, "p2p_prefix", "$p2p/"),
            directTopic=directTopic,
            control=_bool("control", options.get("control", "false")),
        )


virtualGroups = VirtualGroupsFactory()
