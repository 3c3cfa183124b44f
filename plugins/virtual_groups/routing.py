"""
The plugin itself: the subscriber selector fanning C{$group/} and C{$p2p/} messages out to
sessions, the authorizer of group members, inboxes and membership events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mqttd.groupinbox import Inbox, InboxEntry, claimReader
from mqttd.interfaces import (
    Action,
    ClientInfo,
    Group,
    IAuthorizer,
    IBrokerAware,
    IGroupInbox,
    IGroupSource,
    IGroupStore,
    ISubscriberSelector,
    Kept,
)
from mqttd.message import Message
from mqttd.topics import topic_level

from .control import GroupControl
from .model import CONTROL_PREFIX, MEMBERSHIP_REST
from .store import SQLiteGroupStore


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
        # The control topics' requests, when control is on.
        self._control = GroupControl(self)
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
                if self._inboxStore is None and name not in self.inboxes:
                    # A cluster's Redis store keeps groups but no inboxes (docs/cluster.md).
                    self.log.warn(
                        "virtual groups: group {group} has inbox = true, but its store keeps"
                        " no inboxes: its messages reach the members' sessions now, and nothing"
                        " waits for a member that has none",
                        group=name,
                    )
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

    def memberName(self, group: Group, client: ClientInfo) -> str | None:
        """The name C{client} goes by in C{group}'s members: user name or client id."""
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
        self._control.request(topic[len(CONTROL_PREFIX) :], message, publisher)
        return ()

    def _drop(self, count: int = 1) -> tuple[()]:
        self.dropped += count
        if self.broker is not None:
            self.broker.stats.messagesDropped += count
        return ()

    def _toClient(self, clientId: str, rest: str, publisher: ClientInfo | None) -> Any:
        broker = self.broker
        if (
            broker is not None
            and clientId not in broker.sessions
            and not broker.router.mayBeElsewhere()
        ):
            return self._drop()
        if self.directTopic is None:
            return ((clientId, 2),)
        sender = topic_level(publisher.clientId) if publisher is not None else ""
        level = topic_level(clientId)
        topic = self.directTopic.format(clientid=level, member=level, publisher=sender, rest=rest)
        return ((clientId, 2, topic),)

    def _toGroup(self, name: str, rest: str, publisher: ClientInfo | None, message: Message) -> Any:
        group = self.find(name)
        # Choosing again, on a cluster node, for a message another node routed: among this
        # node's sessions, keeping and counting nothing (the publisher's node did).
        again = self.broker is not None and self.broker.router.reselecting
        if group is None or not group.members:
            return () if again else self._drop()
        if group.byUsername and self.broker is not None:
            # Found among this node's sessions: the other nodes look among theirs.
            self.broker.router.selectElsewhere()
        exclude = None if group.echo or publisher is None else publisher.clientId
        sessions: Mapping[str, Any] | None = None
        if group.inbox and self._inboxStore is not None and self.broker is not None:
            # Kept for whoever is away; those connected now get it now, the others from the
            # inbox when they come, so nobody gets it twice.
            if not again:
                self._keep(group, message, publisher)
            sessions = self.broker.sessions
        elif group.topic is None and not group.byUsername:
            prepared = self._prepared.get(name)
            if prepared is None or prepared[0] is not group:
                # A group is immutable, so a plain dict of members is used as it is: a copy of
                # each was as large as the groups themselves.  Other mappings are copied once.
                members = group.members
                prepared = self._prepared[name] = (
                    group,
                    members if type(members) is dict else dict(members),
                )
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
            elsewhere = group.byUsername and self.broker is not None
            if again or (elsewhere and self.broker.router.mayBeElsewhere()):
                return ()
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
            member = self.memberName(group, client)
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
        member = self.memberName(group, client)
        if group.publish == "owners":
            # An announcement channel: its owners speak, nobody else, whatever the ACL says.
            return member is not None and member in group.owners
        if member is not None and member in group.members:
            return True
        return None


def _connected(sessions: Mapping[str, Any], clientId: str) -> bool:
    session = sessions.get(clientId)
    return session is not None and session.connection is not None
