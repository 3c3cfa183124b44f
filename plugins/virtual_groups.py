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

from mqttd.codec.properties import Properties
from mqttd.groupinbox import (
    INBOX_SCHEMA,
    Inbox,
    InboxEntry,
    appendOps,
    claimReader,
    deleteOps,
    dumpSettings,
    readInboxes,
    readOps,
    trimOps,
    withSettings,
)
from mqttd.interfaces import (
    Action,
    ClientInfo,
    Group,
    IAuthorizer,
    IBrokerAware,
    IGroupInbox,
    IGroupSource,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    ISubscriberSelector,
    Kept,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message, PropertiedMessage
from mqttd.topics import DEFAULT_MAX_LEVELS, InvalidTopic, topic_level, validate_topic_name

CONTROL_PREFIX = "$CONTROL/mqttd/groups/"
PUBLISH_POLICIES = ("members", "owners", "acl")
# Under a group's topic: the membership events of a group with events = true.
MEMBERSHIP_REST = "$membership"
GROUP_FIELDS = frozenset({"group", "member", "clientid", "publisher", "rest"})
DIRECT_FIELDS = frozenset({"clientid", "member", "publisher", "rest"})
SCHEMA_VERSION = 2
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
# From version 1 to 2: roles, policies and inboxes, as in the broker's SQLite store.
MIGRATION_2 = INBOX_SCHEMA


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
                " PRAGMA user_version = 1; COMMIT;"
            )
        elif application != APPLICATION_ID:
            raise GroupError(f"{path}: an SQLite database, but not an mqttd groups file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:
            # IMMEDIATE and read again inside, as the broker's store migrates.
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                    for statement in MIGRATION_2:
                        db.execute(statement)
                    db.execute("PRAGMA user_version = 2")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
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
        name: withSettings(
            Group(name, members.get(name, {}), bool(byUsername), topic, bool(echo)), settings
        )
        for name, byUsername, topic, echo, settings in db.execute(
            "SELECT name, by_username, topic, echo, settings FROM groups"
        )
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
                "INSERT OR REPLACE INTO groups (name, by_username, topic, echo, settings)"
                " VALUES (?, ?, ?, ?, ?)",
                (group.name, group.byUsername, group.topic, group.echo, dumpSettings(group)),
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


def _execute(path: str, ops: Sequence[tuple[str, tuple[object, ...]]]) -> None:
    with closing(openGroupDatabase(path)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in ops:
                db.execute(sql, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


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


@implementer(IGroupStore, IGroupInbox)
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
            self._inboxes = readInboxes(db)
        self._poll = LoopingCall(self._pollFile)
        self._poll.clock = reactor
        self._pollInterval = pollInterval

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def start(self) -> None:
        """Start reading back other processes' changes."""
        self._poll.start(self._pollInterval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop polling; the L{Deferred} fires once every write asked for so far is done."""
        if self._poll.running:
            self._poll.stop()
        return self._lock.run(lambda: None)

    # IGroupInbox: written through, in order, as group changes are.

    def inboxes(self) -> dict[str, Inbox]:
        return self._inboxes

    def _inboxWrite(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
        d = self._lock.run(self._run, _execute, self.path, ops)
        d.addErrback(self._inboxWriteFailed)

    def _inboxWriteFailed(self, failure: Failure) -> None:
        self.log.failure("virtual groups: cannot write an inbox to {path}", failure, path=self.path)

    def inboxAppended(self, group: str, entry: InboxEntry) -> None:
        self._inboxWrite(appendOps(group, entry))

    def inboxTrimmed(self, group: str, firstSeq: int) -> None:
        self._inboxWrite(trimOps(group, firstSeq))

    def inboxRead(self, group: str, reader: str, seq: int) -> None:
        self._inboxWrite(readOps(group, reader, seq))

    def inboxDeleted(self, group: str) -> None:
        self._inboxWrite(deleteOps(group))

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
        member with a session) or to a client without a session, and inbox messages a member
        never got because the inbox's limits had dropped them.
    @ivar admins: the identities (user names) that may create, delete and change any group over
        the control topics: the operators.
    @ivar inboxes: every group's inbox, by group name, as the store keeps it.
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
        admins: Iterable[str] = (),
        inboxMaxMessages: int = 100,
        inboxMaxAge: float = 7 * 24 * 3600.0,
    ) -> None:
        self.store = store
        self.sources = tuple(sources)
        self.groupPrefix = groupPrefix
        self.directPrefix = directPrefix
        self.directTopic = directTopic
        self.control = control
        self.admins = frozenset(admins)
        self.inboxMaxMessages = inboxMaxMessages
        self.inboxMaxAge = inboxMaxAge
        # One startswith against this tuple is all an ordinary topic costs the selector.
        self._prefixes = (groupPrefix, directPrefix, *((CONTROL_PREFIX,) if control else ()))
        self.dropped = 0
        self.broker: Any = None
        # Group name -> (the Group it was made from, {clientId: qos}) for groups of client ids
        # delivered under the published topic: one mapping for every message while unchanged.
        self._prepared: dict[str, tuple[Group, dict[str, int]]] = {}
        self._inboxStore: Any = store if IGroupInbox.providedBy(store) else None
        self.inboxes: dict[str, Inbox] = (
            dict(self._inboxStore.inboxes()) if self._inboxStore is not None else {}
        )
        # The members of each stored group with events or an inbox, to tell who joined or left.
        self._known: dict[str, frozenset[str]] = {}
        self._track(announce=False)
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
        broker.whenConnected(self._connected, self._disconnected)
        if isinstance(self.store, SQLiteGroupStore):
            self.store.start()

    def detach(self) -> Deferred[None] | None:
        self.broker = None
        if isinstance(self.store, SQLiteGroupStore):
            # What the inboxes wrote last (a reader's position, a claim) must reach the file.
            return self.store.stop()
        return None

    def _membershipChanged(self) -> None:
        self._prepared.clear()
        # A former member's cached permission to publish to the group must not outlive it.
        if self.broker is not None:
            self.broker.authorizationChanged()
        self._track(announce=True)

    def _track(self, announce: bool) -> None:
        """
        Note the members of every stored group with events or an inbox; with C{announce}, act
        on who joined or left since the last look, however the change was made (control topics,
        C{mqttd groups}, the REST API, the configuration).
        """
        store = self.store
        for name in set(store.groupNames()) | set(self._known):
            group = store.group(name)
            before = self._known.pop(name, None)
            if group is None:
                if self.inboxes.pop(name, None) is not None and self._inboxStore is not None:
                    self._inboxStore.inboxDeleted(name)
                continue
            if not (group.events or group.inbox):
                continue
            after = self._known[name] = frozenset(group.members)
            if group.inbox:
                # Before its first message too: a member's first connection claims it.
                self.inboxes.setdefault(name, Inbox())
            if not announce or before is None:
                continue
            for member in sorted(after - before):
                self._joined(group, member)
            for member in sorted(before - after):
                self._announce(group, "left", member)

    def _joined(self, group: Group, member: str) -> None:
        if group.inbox:
            inbox = self.inboxes.setdefault(group.name, Inbox())
            # A new member starts after what the group said before it came, less its history.
            start = max(0, inbox.lastSeq - group.history)
            self._moveReader(group.name, inbox, "m:" + member, start)
            if self.broker is not None:
                for clientId, name, _ in self._sessionsOf(replace(group, members={member: 2})):
                    session = self.broker.sessions.get(clientId)
                    if (
                        session is not None
                        and session.connection is not None
                        and self._claimedBy(group, name, clientId)
                    ):
                        self._drain(group, inbox, clientId, name)
        self._announce(group, "joined", member)

    def _announce(self, group: Group, event: str, member: str) -> None:
        if not group.events or self.broker is None:
            return
        body = {"event": event, "group": group.name, "member": member}
        topic = f"{self.groupPrefix}{group.name}/{MEMBERSHIP_REST}"
        self.broker.route(Message(topic, json.dumps(body).encode("utf-8"), 1))

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

    def _memberName(self, group: Group, client: ClientInfo) -> str | None:
        return client.username if group.byUsername else client.clientId

    # ISubscriberSelector

    def select(self, message: Message, publisher: ClientInfo | None) -> Any:
        if not message.topic.startswith(self._prefixes):
            return ()
        topic = message.topic
        if topic.startswith(self.groupPrefix):
            name, _, rest = topic[len(self.groupPrefix) :].partition("/")
            return self._toGroup(name, rest, publisher, message)
        if topic.startswith(self.directPrefix):
            clientId, _, rest = topic[len(self.directPrefix) :].partition("/")
            return self._toClient(clientId, rest, publisher)
        self._controlRequest(topic[len(CONTROL_PREFIX) :], message, publisher)
        return ()

    def _drop(self, count: int = 1) -> tuple[()]:
        self.dropped += count
        if self.broker is not None:
            self.broker.stats.messagesDropped += count
        return ()

    def _toClient(self, clientId: str, rest: str, publisher: ClientInfo | None) -> Any:
        if self.broker is not None and clientId not in self.broker.sessions:
            return self._drop()
        if self.directTopic is None:
            return ((clientId, 2),)
        sender = topic_level(publisher.clientId) if publisher is not None else ""
        level = topic_level(clientId)
        topic = self.directTopic.format(clientid=level, member=level, publisher=sender, rest=rest)
        return ((clientId, 2, topic),)

    def _toGroup(self, name: str, rest: str, publisher: ClientInfo | None, message: Message) -> Any:
        group = self.find(name)
        if group is None or not group.members:
            return self._drop()
        exclude = None if group.echo or publisher is None else publisher.clientId
        sessions: Mapping[str, Any] | None = None
        if group.inbox and self._inboxStore is not None and self.broker is not None:
            # Kept for whoever is away; those connected now get it now, the others from the
            # inbox when they come, so nobody gets it twice.
            self._keep(group, message, publisher)
            sessions = self.broker.sessions
        elif group.topic is None and not group.byUsername:
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
            and (
                sessions is None
                or (_connected(sessions, clientId) and self._claimedBy(group, member, clientId))
            )
        ]
        if sessions is not None and (group.topic is None or not resolved):
            # Kept in the inbox: taken, even when nobody is connected to get it now.
            return Kept({clientId: qos for clientId, _, qos in resolved})
        if not resolved:
            return self._drop()
        if group.topic is None:
            return {clientId: qos for clientId, _, qos in resolved}
        template = group.topic
        # Client ids are percent-encoded (as in presence topics): one may hold / + # or %.
        sender = topic_level(publisher.clientId) if publisher is not None else ""
        return [
            (
                clientId,
                qos,
                template.format(
                    group=name,
                    member=member,
                    clientid=topic_level(clientId),
                    publisher=sender,
                    rest=rest,
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

    # Inboxes

    def _keep(self, group: Group, message: Message, publisher: ClientInfo | None) -> None:
        inbox = self.inboxes.setdefault(group.name, Inbox())
        now = self.broker.clock.seconds()
        inbox.lastSeq += 1
        entry = InboxEntry(
            inbox.lastSeq,
            now,
            message.topic,
            message.payload,
            message.qos,
            publisher.clientId if publisher is not None else "",
        )
        inbox.entries.append(entry)
        self._inboxStore.inboxAppended(group.name, entry)
        self._trim(group.name, inbox, now)

    def _trim(self, name: str, inbox: Inbox, now: float) -> None:
        # Bounded by count and by age; who missed what is counted when it comes to read.
        entries = inbox.entries
        oldest = now - self.inboxMaxAge
        trimmed = False
        while entries and (len(entries) > self.inboxMaxMessages or entries[0].at < oldest):
            entries.popleft()
            trimmed = True
        if trimmed and self._inboxStore is not None:
            self._inboxStore.inboxTrimmed(name, entries[0].seq if entries else inbox.lastSeq + 1)

    def _moveReader(self, name: str, inbox: Inbox, reader: str, seq: int) -> None:
        if inbox.readers.get(reader) != seq:
            inbox.readers[reader] = seq
            if self._inboxStore is not None:
                self._inboxStore.inboxRead(name, reader, seq)

    def _claimed(self, group: Group, member: str, client: ClientInfo | None) -> bool:
        """
        Whether C{client} may read C{member}'s inbox of C{group}: in a group of client ids,
        only the identity that claimed the member may (the first to connect with its client
        id, which claims it now), as a session is its owner's.
        """
        if group.byUsername:
            # The member is the identity itself.
            return True
        if client is None:
            return False
        identity = client.username if client.username is not None else ""
        inbox = self.inboxes.setdefault(group.name, Inbox())
        owner = inbox.claims.get(member)
        if owner is None:
            inbox.claims[member] = identity
            if self._inboxStore is not None:
                self._inboxStore.inboxRead(group.name, claimReader(member, identity), 0)
            return True
        return owner == identity

    def _claimedBy(self, group: Group, member: str, clientId: str) -> bool:
        clients = self.broker.clients if self.broker is not None else {}
        return self._claimed(group, member, clients.get(clientId))

    def _inboxGroups(
        self, client: ClientInfo, announce: bool = False
    ) -> Iterator[tuple[Group, Inbox, str]]:
        for name, inbox in list(self.inboxes.items()):
            group = self.find(name)
            if group is None or not group.inbox:
                continue
            member = self._memberName(group, client)
            if member is None or member not in group.members:
                continue
            if self._claimed(group, member, client):
                yield group, inbox, member
            elif announce:
                self.log.warn(
                    "virtual groups: {clientId} of {identity!r} gets nothing of group {group}:"
                    " member {member} belongs to {owner!r}",
                    clientId=client.clientId,
                    identity=client.username or "",
                    group=name,
                    member=member,
                    owner=inbox.claims.get(member),
                )

    def _connected(self, client: ClientInfo) -> None:
        for group, inbox, member in self._inboxGroups(client, announce=True):
            self._drain(group, inbox, client.clientId, member)

    def _disconnected(self, client: ClientInfo) -> None:
        for group, inbox, member in self._inboxGroups(client):
            self._moveReader(group.name, inbox, "c:" + client.clientId, inbox.lastSeq)
            self._moveReader(group.name, inbox, "m:" + member, inbox.lastSeq)

    def _drain(self, group: Group, inbox: Inbox, clientId: str, member: str) -> None:
        """Hand C{clientId} what C{group}'s inbox holds that it has not had yet."""
        assert self.broker is not None
        self._trim(group.name, inbox, self.broker.clock.seconds())
        reader = "c:" + clientId
        start = inbox.readers.get(reader)
        if start is None:
            start = inbox.readers.get("m:" + member, 0)
        first = inbox.entries[0].seq if inbox.entries else inbox.lastSeq + 1
        missed = first - start - 1
        if missed > 0:
            self._drop(missed)
            self.log.warn(
                "virtual groups: {count} messages of group {group} never reach {clientId}:"
                " the inbox keeps {limit} messages for {age} s",
                count=missed,
                group=group.name,
                clientId=clientId,
                limit=self.inboxMaxMessages,
                age=self.inboxMaxAge,
            )
        qos = group.members.get(member, 2)
        for entry in inbox.entries:
            if entry.seq <= start or (entry.publisher == clientId and not group.echo):
                continue
            self.broker.deliverTo(clientId, self._inboxMessage(group, entry, member, clientId), qos)
        self._moveReader(group.name, inbox, reader, inbox.lastSeq)
        # Where the member as a whole got to: a client id it has not used before starts there,
        # so a passing connection (a mosquitto_pub) is not handed the whole inbox again.
        self._moveReader(group.name, inbox, "m:" + member, inbox.lastSeq)

    def _inboxMessage(self, group: Group, entry: InboxEntry, member: str, clientId: str) -> Message:
        if group.topic is None:
            return Message(entry.topic, entry.payload, entry.qos)
        rest = entry.topic[len(self.groupPrefix) :].partition("/")[2]
        topic = group.topic.format(
            group=group.name,
            member=member,
            clientid=topic_level(clientId),
            publisher=topic_level(entry.publisher),
            rest=rest,
        )
        return Message(topic, entry.payload, entry.qos)

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
        name, _, rest = topic[len(self.groupPrefix) :].partition("/")
        group = self.find(name)
        if group is None:
            return None
        if rest.partition("/")[0] == MEMBERSHIP_REST:
            # The server alone announces who joined and left.
            return False
        if group.publish == "acl":
            return None
        member = self._memberName(group, client)
        if group.publish == "owners":
            # An announcement channel: its owners speak, nobody else, whatever the ACL says.
            return member is not None and member in group.owners
        if member is not None and member in group.members:
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
                self.broker.config.max_topic_levels
                if self.broker is not None
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
        return caller is not None and caller.username is not None and caller.username in self.admins

    def _act(self, action: str, request: Mapping[str, Any], caller: ClientInfo | None) -> Any:
        store = self.store
        admin = self._isAdmin(caller)
        if action == "mine":
            # Every group the caller is in, with its role, in one answer.
            if caller is None:
                raise GroupError("no caller")
            names = set(store.groupNames())
            for source in self.sources:
                names.update(source.groupNames())
            mine = []
            for candidate in sorted(names):
                group = self.find(candidate)
                mine_ = self._memberName(group, caller) if group is not None else None
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
            for source in self.sources:
                names.update(source.groupNames())
            return {"ok": True, "groups": sorted(names)}
        name = request.get("group")
        if not isinstance(name, str):
            raise GroupError("expected a group name in 'group'")
        existing = store.group(name)
        role: str | None = None
        if caller is not None:
            known = existing if existing is not None else self.find(name)
            member = self._memberName(known, caller) if known is not None else None
            if known is not None and member is not None and member in known.members:
                role = "owner" if member in known.owners else "member"
        if action == "list":
            group = self.find(name)
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
            me = self._memberName(existing, caller)
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
        if self.broker is not None:
            self.broker.route(message)


def _connected(sessions: Mapping[str, Any], clientId: str) -> bool:
    session = sessions.get(clientId)
    return session is not None and session.connection is not None


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


# What set may change, what of that an owner may, and the keys of any request.
_SETTABLE = frozenset({"topic", "echo", "publish", "events", "inbox", "history", "owners"})
_OWNER_SETTABLE = frozenset({"publish", "events", "echo", "topic"})
_REQUEST_KEYS = frozenset({"group", "response_topic", "correlation"})


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


# Configuration

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
