"""
What SUBSCRIBE and UNSUBSCRIBE do, and the operator's subscriptions.

It checks each filter (validity, shared subscriptions, the server's reserved
topics, the subscribe ACL through the L{Policy}), records what is granted in
the session, the store and the L{Router}'s table, answers SUBACK or UNSUBACK,
and has the router send the retained messages a new subscription brings.  It
never delivers a published message and never creates or ends a session.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from .codec.packets import (
    SUBACK_FAILURE,
    ProtocolLevel,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .handlers import PacketHandlers
from .interfaces import Action
from .policy import Decision, aclFilter
from .router import QOS_BITS
from .session import Session
from .stats import ACL_SUBSCRIBE
from .topics import SHARE_PREFIX, InvalidTopic, validate_topic_filter

# Topics only the server writes and no client may subscribe to, whatever the ACL says: virtual
# groups' and direct messages' fan-out, and control requests (plugins may reserve more).
RESERVED_PREFIXES = ("$group/", "$p2p/", "$CONTROL/")


class Subscribing(PacketHandlers):
    """
    What the broker does with SUBSCRIBE and UNSUBSCRIBE.

    @ivar reservedPrefixes: filters starting with these are refused to every
        client (SUBACK 0x80 / 0x87); plugins may add theirs.
    """

    log = Logger()
    # A tuple, so a plugin adding its prefixes rebinds it on the instance.
    reservedPrefixes: tuple[str, ...] = RESERVED_PREFIXES

    def subscribe(self, session: Session, packet: Subscribe) -> Deferred[None] | None:
        """
        Add or replace subscriptions [MQTT-3.8.4-3], answer SUBACK with one
        code per filter (0x80 for an invalid filter or one the ACL denies)
        [MQTT-3.8.4-5], then send the retained messages they match with
        RETAIN=1 [MQTT-3.3.1-8].

        @return: L{None}, or a L{Deferred} firing once an authorizer's
            Deferred answers are in and SUBACK is written.
        """
        maxLevels = self.config.max_topic_levels
        client = self.clients.get(session.clientId) if self.policy.authorizers else None
        decisions: list[Decision] = []
        for topicFilter, _ in packet.subscriptions:
            try:
                validate_topic_filter(topicFilter, maxLevels)
            except InvalidTopic:
                decisions.append(False)
                continue
            if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
                decisions.append(False)
                continue
            if self.reserved(topicFilter):
                # Whatever the ACL says: no client reads the server's fan-out topics.
                decisions.append(False)
                continue
            if client is None:
                decisions.append(True)
            else:
                decisions.append(
                    self.policy.decide(client, Action.SUBSCRIBE, aclFilter(topicFilter))
                )
        if any(isinstance(d, Deferred) for d in decisions):
            waiting = [d if isinstance(d, Deferred) else succeed(d) for d in decisions]
            return gatherResults(waiting).addCallback(self._subscribeDecided, session, packet)
        self._subscribeDecided(decisions, session, packet)  # type: ignore[arg-type]
        return None

    def _subscribeDecided(
        self, allowed: Sequence[bool], session: Session, packet: Subscribe
    ) -> None:
        if self.sessions.get(session.clientId) is not session:
            # Taken over or ended while an authorizer was answering.
            return
        conn = session.connection
        level5 = conn is not None and conn.protocolLevel == ProtocolLevel.MQTT_5
        codes = []
        granted = []
        # A 5.0 SUBSCRIBE's Subscription Identifier names each of its subscriptions; kept above
        # the options byte, so the one int the tree and the store hold per subscription has it.
        identifiers = packet.properties.subscription_identifiers
        identifier = identifiers[0] << 8 if identifiers else 0
        if identifier:
            session.identified = True
        for (topicFilter, requested), ok in zip(packet.subscriptions, allowed, strict=True):
            options = requested | identifier
            if not ok:
                failure = self._subscribeFailure(topicFilter)
                if failure == ReasonCode.NOT_AUTHORIZED:
                    self.stats.aclDenied[ACL_SUBSCRIBE] += 1
                    self.policy.logDenied(session.clientId, "subscribe to", topicFilter)
                codes.append(failure if level5 else SUBACK_FAILURE)
                continue
            new = topicFilter not in session.subscriptions
            self.router.addSubscription(topicFilter, session.clientId, options)
            session.setSubscription(topicFilter, options)
            codes.append(options & QOS_BITS)
            granted.append((topicFilter, options, new))
        durable = None
        if granted and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
            # Granted once the subscription is as durable as the store promises, and before
            # the retained messages it brings, which the session holds behind it.
            durable = self.store.flush()
        if conn is not None:
            session.hold(durable, conn.sendPacket, Suback(packet.packet_id, codes))
        client = self.clients.get(session.clientId)
        if self.observing.chain and client is not None:
            for topicFilter, options, _ in granted:
                self.observing.notify("subscribed", client, topicFilter, options & QOS_BITS)
        for topicFilter, options, new in granted:
            self.router.sendRetained(session, topicFilter, options, new)

    def unsubscribe(self, session: Session, packet: Unsubscribe) -> None:
        """
        Remove subscriptions; UNSUBACK always follows [MQTT-3.10.4-5], at 5.0
        with a reason code for each filter [MQTT-3.11.3-1].
        """
        removed = []
        codes: list[int] = []
        for topicFilter in packet.topic_filters:
            if session.subscriptions.pop(topicFilter, None) is not None:
                self.router.removeSubscription(topicFilter, session.clientId)
                removed.append(topicFilter)
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        if removed and not session.cleanSession:
            self.store.sessionSaved(session.clientId, session.subscriptions)
        client = self.clients.get(session.clientId)
        if self.observing.chain and client is not None:
            for topicFilter in removed:
                self.observing.notify("unsubscribed", client, topicFilter)
        conn = session.connection
        if conn is not None:
            level5 = conn.protocolLevel == ProtocolLevel.MQTT_5
            conn.sendPacket(Unsuback(packet.packet_id, codes if level5 else []))

    def subscribeFor(self, clientId: str, topicFilter: str, qos: int) -> bool:
        """
        Subscribe C{clientId}'s session to C{topicFilter} at C{qos} on the
        operator's authority (no SUBSCRIBE, no SUBACK, no subscribe ACL; the
        receive ACL still applies to each delivery), then send the retained
        messages it matches.

        @return: whether the session exists.
        @raise InvalidTopic: C{topicFilter} is not a valid filter.
        """
        validate_topic_filter(topicFilter, self.config.max_topic_levels)
        if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
            raise InvalidTopic("shared subscriptions are turned off", None)
        if self.reserved(topicFilter):
            raise InvalidTopic("topics reserved for the server cannot be subscribed to", None)
        session = self.sessions.get(clientId)
        if session is None:
            return False
        new = topicFilter not in session.subscriptions
        self.router.addSubscription(topicFilter, clientId, qos)
        session.setSubscription(topicFilter, qos)
        if not session.cleanSession:
            self.store.sessionSaved(clientId, session.subscriptions)
        client = self.clients.get(clientId)
        if self.observing.chain and client is not None:
            self.observing.notify("subscribed", client, topicFilter, qos)
        self.router.sendRetained(session, topicFilter, qos, new)
        return True

    def unsubscribeFor(self, clientId: str, topicFilter: str) -> bool:
        """
        Remove C{clientId}'s subscription to C{topicFilter}, without UNSUBACK.

        @return: whether there was one.
        """
        session = self.sessions.get(clientId)
        if session is None or session.subscriptions.pop(topicFilter, None) is None:
            return False
        self.router.removeSubscription(topicFilter, clientId)
        if not session.cleanSession:
            self.store.sessionSaved(clientId, session.subscriptions)
        client = self.clients.get(clientId)
        if self.observing.chain and client is not None:
            self.observing.notify("unsubscribed", client, topicFilter)
        return True

    def reserved(self, topicFilter: str) -> bool:
        """Whether C{topicFilter} reads topics reserved for the server."""
        return aclFilter(topicFilter).startswith(self.reservedPrefixes)

    def _subscribeFailure(self, topicFilter: str) -> int:
        # The 5.0 SUBACK says why: a valid filter was refused as shared or by the ACL.
        try:
            validate_topic_filter(topicFilter, self.config.max_topic_levels)
        except InvalidTopic:
            return ReasonCode.TOPIC_FILTER_INVALID
        if not self.config.shared_subscriptions and topicFilter.startswith(SHARE_PREFIX):
            return ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        return ReasonCode.NOT_AUTHORIZED
