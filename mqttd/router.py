"""
Where messages go: the subscription tree, shared subscriptions, the MQTT 5
subscription options, the subscriber selectors, retained messages, and the
delivery to each session through the receive ACL.

It reads the sessions and the clients but never creates or ends one, and it
never asks the authorizers except through the L{Policy} it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .codec.packets import Will
from .codec.properties import NO_PROPERTIES
from .config import BrokerConfig
from .interfaces import (
    Action,
    ClientInfo,
    IMessageStore,
    IRouteTable,
    ISubscriberSelector,
    Kept,
)
from .message import Message, PropertiedMessage, SharedDelivery
from .observers import Observers
from .policy import Policy
from .retain import RetainedMessages
from .session import Session
from .stats import (
    ACL_PUBLISH,
    ACL_RECEIVE,
    DROP_INVALID_TOPIC,
    DROP_RECEIVE_DENIED,
    DROP_WILL_DENIED,
    Stats,
)
from .topics import (
    SHARE_PREFIX,
    InvalidTopic,
    SharedGroup,
    SharedSubscriptions,
    SubscriptionTree,
    filter_matches,
    validate_topic_name,
)

# The bits of a subscription's options (MQTT 5 section 3.8.3.1; 3.1.1 sets the QoS bits only).
QOS_BITS = 0x03
NO_LOCAL = 0x04
RETAIN_AS_PUBLISHED = 0x08
RETAIN_HANDLING = 0x30
RETAIN_HANDLING_NEVER = 0x20


@implementer(IRouteTable)
class Router:
    """
    Matches messages to subscriptions and delivers them.

    @ivar subscriptions: the ordinary subscriptions.
    @ivar shared: the shared subscriptions ($share/NAME/filter).
    @ivar retained: the retained message of each topic.
    @ivar selectors: plugins adding recipients to each message.
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        clock: IReactorTime,
        store: IMessageStore,
        stats: Stats,
        policy: Policy,
        observing: Observers,
        sessions: Mapping[str, Session],
        clients: Mapping[str, ClientInfo],
        selectors: Sequence[ISubscriberSelector] = (),
    ) -> None:
        """
        @param sessions: every session by client identifier (the registry's
            table, read only).
        @param clients: who each session's client is (read only).
        """
        self.config = config
        self.clock = clock
        self.store = store
        self.stats = stats
        self.policy = policy
        self.observing = observing
        self.sessions = sessions
        self.clients = clients
        self.selectors = tuple(selectors)
        self.subscriptions = SubscriptionTree()
        self.shared = SharedSubscriptions()
        # Whether any shared subscription or MQTT 5 subscription option exists, so that route
        # tests one flag for both while there are none.
        self._richRouting = False
        self.retained: RetainedMessages[Message] = RetainedMessages()
        # A client's receive check still waiting on a Deferred: its later deliveries queue behind.
        self._receiving: dict[str, Deferred[Any]] = {}

    def forget(self, clientId: str) -> None:
        """C{clientId}'s session ended: drop the receive check it may still wait on."""
        self._receiving.pop(clientId, None)

    def route(self, message: Message, publisher: ClientInfo | None = None) -> bool:
        """
        Store a retained message and deliver C{message} to every matching
        subscriber once, at the lower of the published and the highest granted
        QoS [MQTT-3.3.5-1], with RETAIN=0 [MQTT-3.3.1-9] unless a 5.0
        subscription asks for Retain As Published, to none whose only
        matching subscriptions have No Local if it is the publisher, and to
        one member of each matching shared subscription; then to the
        recipients the selectors add.  Each delivery passes the receive ACL.

        @param publisher: who sent it, for the selectors; L{None} for the
            broker's own messages.
        @return: whether it matched any subscription or selected recipient
            (the receipt of an MQTT 5 PUBACK / PUBREC).
        """
        if message.retain and self.config.retain_available:
            self.retain(message)
        self.stats.messagesRouted += 1
        matches = self.subscriptions.match(message.topic)
        matched = bool(matches)
        if self._richRouting:
            if self.shared.groups:
                matched = self._routeShared(message) or matched
            if self.subscriptions.optioned and matches:
                matches = self._routeOptioned(message, matches)
        if self.selectors:
            return self._routeSelected(message, publisher, matches) or matched
        if not matches:
            return matched
        sessions = self.sessions
        qos = message.qos
        if self.policy.authorizers or self.observing.chain:
            for clientId, granted in matches.items():
                self.deliverChecked(sessions[clientId], message, granted if granted < qos else qos)
            return True
        for clientId, granted in matches.items():
            sessions[clientId].deliver(message, granted if granted < qos else qos)
        return True

    def whenForwarded(self) -> Deferred[None] | None:
        """See L{IRouteTable.whenForwarded}: in one process, nothing leaves it."""
        return None

    def _routeShared(self, message: Message) -> bool:
        # One delivery per matching shared subscription, to the member whose turn it is
        # [MQTT-4.8.2-3 for the QoS]; a member with its own ordinary subscription also gets
        # that delivery, as the spec allows.
        sessions = self.sessions
        qos = message.qos
        checked = bool(self.policy.authorizers or self.observing.chain)
        matched = False
        for group in self._sharedGroups(message.topic):
            matched = True
            clientId = group.pick(self._online)
            options = group.members[clientId]
            granted = options & QOS_BITS
            retain = message.retain and bool(options & RETAIN_AS_PUBLISHED)
            session = sessions[clientId]
            delivered = (
                SharedDelivery(message, group.topicFilter) if session.identified else message
            )
            if checked:
                self.deliverChecked(session, delivered, granted if granted < qos else qos, retain)
            else:
                session.deliver(delivered, granted if granted < qos else qos, retain)
        return matched

    def _sharedGroups(self, topic: str) -> Sequence[SharedGroup]:
        # The shared subscriptions this broker serves a message on the topic: all that match.
        # A hook so that a cluster node can leave out those another node serves, without its
        # own copy of the loop above; called only when shared subscriptions exist.
        return self.shared.match(topic)

    def _routeOptioned(self, message: Message, matches: Mapping[str, int]) -> dict[str, int]:
        """
        Deliver to the subscribers matched through MQTT 5 subscriptions with
        options beyond the QoS (the tree gives them a value of 4 or more).

        @return: the other matches, for the usual fan-out.
        """
        plain: dict[str, int] = {}
        sessions = self.sessions
        checked = bool(self.policy.authorizers or self.observing.chain)
        topic = message.topic
        for clientId, value in matches.items():
            if value < 4:
                plain[clientId] = value
                continue
            # One copy for all of the session's matching subscriptions [MQTT-3.3.4-2]; its
            # options are in the session, since the tree kept only the largest value.
            session = sessions[clientId]
            granted = -1
            retain = False
            for topicFilter, options in session.subscriptions.items():
                if topicFilter.startswith(SHARE_PREFIX) or not filter_matches(topicFilter, topic):
                    continue
                if options & NO_LOCAL and message.publisherId == clientId:
                    continue  # [MQTT-3.8.3-3]
                if options & QOS_BITS > granted:
                    granted = options & QOS_BITS
                if options & RETAIN_AS_PUBLISHED:
                    retain = message.retain  # [MQTT-3.3.1-13]
            if granted < 0:
                continue
            qos = min(granted, message.qos)
            if checked:
                self.deliverChecked(session, message, qos, retain)
            else:
                session.deliver(message, qos, retain)
        return plain

    def _online(self, clientId: str) -> bool:
        return self.sessions[clientId].connection is not None

    def addSubscription(self, topicFilter: str, clientId: str, options: int) -> bool:
        """See L{IRouteTable.addSubscription}."""
        if topicFilter.startswith(SHARE_PREFIX):
            added = self.shared.subscribe(topicFilter, clientId, options)
        else:
            added = self.subscriptions.subscribe(topicFilter, clientId, options)
        self._richRouting = bool(self.shared.groups or self.subscriptions.optioned)
        return added

    def removeSubscription(self, topicFilter: str, clientId: str) -> bool:
        """See L{IRouteTable.removeSubscription}."""
        if topicFilter.startswith(SHARE_PREFIX):
            removed = self.shared.unsubscribe(topicFilter, clientId)
        else:
            removed = self.subscriptions.unsubscribe(topicFilter, clientId)
        self._richRouting = bool(self.shared.groups or self.subscriptions.optioned)
        return removed

    def _routeSelected(
        self, message: Message, publisher: ClientInfo | None, matches: Mapping[str, int]
    ) -> bool:
        # Neither the tree's cached matches nor a selector's prepared mapping may be changed, so
        # recipients is copied before its first change; a lone mapping is delivered from as is.
        recipients: Mapping[str, int] = matches
        merged: dict[str, int] | None = None
        # One Message per distinct topic override, so its encoded prefix is shared too.
        overridden: dict[str, tuple[Message, dict[str, int]]] = {}
        kept = False
        for selector in self.selectors:
            try:
                selected = selector.select(message, publisher)
                # A plain dict, the usual answer, is told apart without the ABC's check.
                plain = selected.__class__ is dict
                if not plain and isinstance(selected, Kept):
                    kept = True
                if plain or isinstance(selected, Mapping):
                    self.stats.selectedDeliveries += len(selected)
                    if not recipients:
                        recipients = selected
                        continue
                    if merged is None:
                        recipients = merged = dict(recipients)
                    for clientId, wanted in selected.items():
                        if merged.get(clientId, -1) < wanted:
                            merged[clientId] = wanted
                    continue
                for recipient in selected:
                    self.stats.selectedDeliveries += 1
                    clientId, wanted = recipient[0], recipient[1]
                    if len(recipient) > 2:
                        topic = recipient[2]
                        entry = overridden.get(topic)
                        if entry is None:
                            if not self.publishable(topic, selector):
                                continue
                            override = Message(topic, message.payload, message.qos)
                            entry = overridden[topic] = (override, {})
                        target = entry[1]
                    else:
                        if merged is None:
                            recipients = merged = dict(recipients)
                        target = merged
                    if target.get(clientId, -1) < wanted:
                        target[clientId] = wanted
            except Exception:
                self.log.failure("subscriber selector {selector!r} failed", selector=selector)
        delivered = self._deliverAll(message, recipients)
        for override, overrideRecipients in overridden.values():
            delivered = self._deliverAll(override, overrideRecipients) or delivered
        return delivered or kept

    def publishable(self, topic: str, source: object) -> bool:
        """
        Whether C{topic}, which a plugin chose, is a topic name a PUBLISH may carry: a client
        would take one with a wildcard for a protocol error [MQTT-3.3.2-2], a bridge too.  One
        that is not is counted as dropped and logged, naming C{source}.
        """
        try:
            validate_topic_name(topic, self.config.max_topic_levels)
        except InvalidTopic as e:
            self.stats.drop(DROP_INVALID_TOPIC)
            self.log.warn(
                "{source!r} chose {topic!r}, not a topic name ({why}): not delivered",
                source=source,
                topic=topic[:128],
                why=str(e),
            )
            return False
        return True

    def _deliverAll(self, message: Message, recipients: Mapping[str, int]) -> bool:
        # Whether any recipient had a session.
        sessions = self.sessions
        qos = message.qos
        found = False
        if not (self.policy.authorizers or self.observing.chain):
            # As route's own fan-out: a selected group of thousands costs what a topic does.
            for clientId, granted in recipients.items():
                session = sessions.get(clientId)
                if session is not None:
                    found = True
                    session.deliver(message, granted if granted < qos else qos)
            return found
        for clientId, granted in recipients.items():
            session = sessions.get(clientId)
            if session is not None:
                found = True
                self.deliverChecked(session, message, granted if granted < qos else qos)
        return found

    def retain(self, message: Message) -> None:
        """Keep C{message} as its topic's retained message, or forget it if its payload is empty."""
        if message.payload:
            self.retained.set(message.topic, message)
            self.store.retainedSet(message)
        elif self.retained.delete(message.topic):
            # [MQTT-3.3.1-10, MQTT-3.3.1-11]
            self.store.retainedDeleted(message.topic)

    def publishWill(self, will: Will, client: ClientInfo | None = None) -> None:
        """
        Publish a Last Will as if its client had sent it, so the publish ACL
        applies to it when C{client} is known.  A will on a C{$} topic (kept
        by a store from before such CONNECTs were refused) is dropped.
        """
        if will.topic.startswith("$"):
            self.stats.drop(DROP_WILL_DENIED)
            self.log.warn("a will on {topic}, a server topic, is dropped", topic=will.topic)
            return
        message: Message
        if will.properties is NO_PROPERTIES:
            message = Message(will.topic, will.payload, will.qos, will.retain)
        else:
            message = PropertiedMessage(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                will.properties,
                self.clock.seconds(),
            )
        if not self.policy.authorizers or client is None:
            self.route(message, client)
            return
        decision = self.policy.decide(client, Action.PUBLISH, will.topic)
        if isinstance(decision, Deferred):
            decision.addCallback(self._willDecided, message, client)
        else:
            self._willDecided(decision, message, client)

    def _willDecided(self, allowed: bool, message: Message, client: ClientInfo) -> None:
        if allowed:
            self.route(message, client)
        else:
            self.stats.drop(DROP_WILL_DENIED)
            self.stats.aclDenied[ACL_PUBLISH] += 1
            self.policy.logDenied(client.clientId, "will to", message.topic)
            if self.observing.chain:
                self.observing.notify("messageDropped", client.clientId, message, "will denied")

    def deliverChecked(
        self, session: Session, message: Message, qos: int, retain: bool = False
    ) -> None:
        """
        Deliver through the receive ACL and tell the observers.  Deliveries
        to a client whose check still waits on a Deferred queue behind it,
        keeping that client's order.
        """
        if not self.policy.authorizers:
            self._delivered(True, session, message, qos, retain)
            return
        clientId = session.clientId
        client = self.clients.get(clientId)
        if client is None:
            # Restored from the store and not back since: who it is, and so what it may read,
            # is unknown until it reconnects, and its subscriptions were granted by the ACL.
            session.deliver(message, qos, retain)
            return
        tail = self._receiving.get(clientId)
        waiting: Deferred[Any]
        if tail is None:
            decision = self.policy.decide(client, Action.RECEIVE, message.topic)
            if not isinstance(decision, Deferred):
                self._delivered(decision, session, message, qos, retain)
                return
            waiting = decision
        else:
            waiting = Deferred()
            tail.addBoth(_release, waiting)
            waiting.addCallback(lambda _: self.policy.decide(client, Action.RECEIVE, message.topic))
        waiting.addCallback(self._delivered, session, message, qos, retain)
        waiting.addErrback(self._deliveryFailed, clientId)
        self._receiving[clientId] = waiting
        waiting.addBoth(self._receiveSettled, clientId, waiting)

    def _deliveryFailed(self, failure: Failure, clientId: str) -> None:
        self.log.failure("delivering to {clientId}", failure, clientId=clientId)

    def _receiveSettled(self, ignored: object, clientId: str, waiting: Deferred[Any]) -> None:
        if self._receiving.get(clientId) is waiting:
            del self._receiving[clientId]

    def _delivered(
        self, allowed: bool, session: Session, message: Message, qos: int, retain: bool
    ) -> None:
        if allowed:
            session.deliver(message, qos, retain)
            if self.observing.chain:
                self.observing.notify("messageDelivered", session.clientId, message, qos)
        else:
            self.stats.drop(DROP_RECEIVE_DENIED)
            self.stats.aclDenied[ACL_RECEIVE] += 1
            self.policy.logDenied(session.clientId, "receive from", message.topic)
            if self.observing.chain:
                self.observing.notify("messageDropped", session.clientId, message, "receive denied")

    def sendRetained(self, session: Session, topicFilter: str, options: int, new: bool) -> None:
        """
        Send C{session} the retained messages matching its subscription to
        C{topicFilter} with C{options}, as Retain Handling says (C{new}: the
        subscription did not exist before).
        """
        if topicFilter.startswith(SHARE_PREFIX):
            # Retained messages go to new non-shared subscriptions only (5.0 section 3.3.1.3).
            return
        handling = options & RETAIN_HANDLING
        if handling == RETAIN_HANDLING_NEVER or (handling and not new):
            # [MQTT-3.3.1-10, MQTT-3.3.1-11]
            return
        checked = bool(self.policy.authorizers or self.observing.chain)
        qos = options & QOS_BITS
        now = self.clock.seconds()
        for message in self.retained.matching(topicFilter):
            if message.expired(now):
                continue  # [MQTT-3.3.2-5]
            if checked:
                self.deliverChecked(session, message, min(qos, message.qos), retain=True)
            else:
                session.deliver(message, min(qos, message.qos), retain=True)

    # True while the selectors choose again, among this node's own sessions, for a message
    # another node of a cluster routed (L{selectElsewhere}): they keep nothing and count no
    # drops then, the publisher's node having done so.
    reselecting = False

    def selectElsewhere(self) -> None:
        """
        A selector chose the recipients of the message being routed among this node's own
        sessions (members by user name): on a cluster, every other node is to choose again
        among its own.  Nothing to do for a single broker.
        """

    def mayBeElsewhere(self) -> bool:
        """
        Whether a client id without a session here may have one that a selector's recipients
        reach anyway: on another node of a cluster; never for a single broker.
        """
        return False

    def deliverTo(self, clientId: str, message: Message, qos: int) -> bool:
        """
        Deliver C{message} to C{clientId}'s session at C{qos} (at most the
        message's), through the receive ACL as any delivery.

        @return: whether the session exists.
        """
        session = self.sessions.get(clientId)
        if session is None:
            return False
        if not self.publishable(message.topic, "a delivery to " + clientId):
            return True
        qos = min(qos, message.qos)
        if self.policy.authorizers or self.observing.chain:
            self.deliverChecked(session, message, qos)
        else:
            session.deliver(message, qos)
        return True


def _release(ignored: object, waiting: Deferred[Any]) -> None:
    waiting.callback(None)
