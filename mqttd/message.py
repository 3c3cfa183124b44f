"""
An application message as the broker routes it.
"""

from __future__ import annotations

from math import ceil

from .codec.encoder import encode_properties, property_block, publish_prefix
from .codec.properties import NO_PROPERTIES, Properties

# wirePrefix's cache key bit for the 5.0 form, whose Remaining Length counts the properties.
_LEVEL5 = 16


class Message:
    """
    One published message, shared by every session it is delivered to.

    The wire prefix (fixed header and topic) depends only on the delivered
    QoS band, RETAIN and DUP, so it is encoded once per distinct form and the
    same bytes object (like the payload) is written to every subscriber.

    @ivar storeId: the identifier the process's durable store wrote this
        message under, or L{None} until one does: a message queued for many
        persistent sessions is written once and referenced by each.
    @ivar publisherId: the client identifier of the session that published
        it, for MQTT 5's No Local; L{None} for the broker's own messages and
        for those restored from a store.
    @ivar properties: the MQTT 5 properties forwarded unaltered to every
        5.0 subscriber [MQTT-3.3.2-15 to MQTT-3.3.2-18]; none here, see
        L{PropertiedMessage}.
    @ivar expiresAt: when (broker clock) the Message Expiry Interval runs
        out, or L{None} if it has none.
    """

    __slots__ = (
        "_prefix",
        "_prefixKey",
        "_prefixes",
        "_topicBytes",
        "payload",
        "publisherId",
        "qos",
        "retain",
        "storeId",
        "topic",
    )

    # Class attributes, not slots: most messages have no properties, and
    # routing them stays as cheap as before MQTT 5 by not storing these.
    properties: Properties = NO_PROPERTIES
    expiresAt: float | None = None
    # The encoded properties, bare and as a whole property block.
    _properties5: tuple[bytes, bytes] = (b"", property_block(b""))
    # The shared subscription a L{SharedDelivery} copy was made for.
    viaShare: str | None = None

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.storeId: int | None = None
        self.publisherId: str | None = None
        self._topicBytes: bytes | None = None
        # The first wire form encoded, and its key: most messages go out in one form only, so
        # they need no dict (~0.2 KB each, queued ones included); the other forms, if any.
        self._prefixKey = -1
        self._prefix = b""
        self._prefixes: dict[int, bytes] | None = None

    def wirePrefix(self, qos: int, retain: bool, dup: bool) -> bytes:
        """
        The encoded PUBLISH up to (not including) the packet identifier.

        @param qos: the QoS this delivery uses; only 0 versus non-zero and the
            value itself change the prefix.
        """
        key = qos | (retain << 2) | (dup << 3)
        if key == self._prefixKey:
            return self._prefix
        prefixes = self._prefixes
        if prefixes is not None and key in prefixes:
            return prefixes[key]
        prefix = publish_prefix(self._encodedTopic(), len(self.payload), qos, retain, dup)
        self._keep(key, prefix)
        return prefix

    def _encodedTopic(self, keep: bool = False) -> bytes:
        # Kept once a second form, or a 5.0 delivery with properties of its own, needs it: most
        # messages take one form, whose prefix holds the topic already, and 40-odd bytes of
        # every message queued were its copy.
        topic = self._topicBytes
        if topic is None:
            topic = self.topic.encode("utf-8")
            if keep or self._prefixKey >= 0:
                self._topicBytes = topic
        return topic

    def _keep(self, key: int, prefix: bytes) -> None:
        """Keep C{prefix} as the wire form of C{key}, for the message's other deliveries."""
        if self._prefixKey < 0:
            self._prefixKey = key
            self._prefix = prefix
        elif self._prefixes is None:
            self._prefixes = {key: prefix}
        else:
            self._prefixes[key] = prefix

    def expired(self, now: float) -> bool:
        """Whether the Message Expiry Interval has passed at C{now}."""
        return self.expiresAt is not None and self.expiresAt <= now

    def wire5(
        self,
        qos: int,
        retain: bool,
        dup: bool,
        now: float,
        subscriptionIds: list[int],
        alias: int = 0,
        aliasKnown: bool = False,
    ) -> tuple[bytes, bytes]:
        """
        The encoded 5.0 PUBLISH up to the packet identifier, and its property
        block (which follows the identifier): the message's own properties,
        encoded once, then the remaining expiry interval [MQTT-3.3.2-6], the
        Subscription Identifiers of this delivery [MQTT-3.3.4-3] and its
        Topic Alias, if any.

        @param alias: the Topic Alias this delivery carries, or 0 for none.
        @param aliasKnown: the client already has C{alias} for this topic, so
            the Topic Name is sent empty.
        """
        shared, sharedBlock = self._properties5
        if self.expiresAt is None and not subscriptionIds and not alias:
            key = qos | (retain << 2) | (dup << 3) | _LEVEL5
            if key == self._prefixKey:
                return self._prefix, sharedBlock
            prefixes = self._prefixes
            if prefixes is not None and key in prefixes:
                return prefixes[key], sharedBlock
            prefix = publish_prefix(
                self._encodedTopic(), len(self.payload), qos, retain, dup, sharedBlock
            )
            self._keep(key, prefix)
            return prefix, sharedBlock
        remaining = None
        if self.expiresAt is not None:
            # Rounded up, so a message not yet expired is never forwarded as expiring at once.
            remaining = max(0, ceil(self.expiresAt - now))
        own = Properties(
            message_expiry_interval=remaining,
            subscription_identifiers=tuple(subscriptionIds),
            topic_alias=alias or None,
        )
        block = property_block(shared, encode_properties(own))
        topic = b"" if aliasKnown else self._encodedTopic(keep=True)
        return publish_prefix(topic, len(self.payload), qos, retain, dup, block), block

    def __repr__(self) -> str:
        return (
            f"<Message topic={self.topic!r} qos={self.qos} retain={self.retain} "
            f"payload={len(self.payload)} bytes>"
        )


class PropertiedMessage(Message):
    """
    A message published with MQTT 5 properties: what they say about the
    message itself is kept; the rest (a Topic Alias, a Will Delay Interval)
    concerned only its way to the broker [MQTT-3.3.2-7].
    """

    __slots__ = ("_properties5", "expiresAt", "properties")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        now: float,
    ) -> None:
        """
        @param properties: the PUBLISH's or the will's properties.
        @param now: when (broker clock) the message was received, from which
            its Message Expiry Interval runs.
        """
        super().__init__(topic, payload, qos, retain)
        interval = properties.message_expiry_interval
        self.expiresAt = None if interval is None else now + interval
        forwarded = Properties(
            payload_format_indicator=properties.payload_format_indicator,
            content_type=properties.content_type,
            response_topic=properties.response_topic,
            correlation_data=properties.correlation_data,
            user_properties=properties.user_properties,
        )
        self.properties = NO_PROPERTIES if forwarded == NO_PROPERTIES else forwarded
        bare = encode_properties(self.properties)
        self._properties5 = (bare, property_block(bare))


class SharedDelivery(PropertiedMessage):
    """
    A message's copy for the one member of a shared subscription it goes to,
    so that the Subscription Identifiers it carries are that subscription's
    and not those of the member's other subscriptions [MQTT-3.3.4-5].
    """

    __slots__ = ("viaShare",)

    def __init__(self, message: Message, viaShare: str) -> None:
        """
        @param viaShare: the whole C{$share/} filter of the subscription.
        """
        Message.__init__(self, message.topic, message.payload, message.qos, message.retain)
        self.publisherId = message.publisherId
        self.properties = message.properties
        self.expiresAt = message.expiresAt
        self._properties5 = message._properties5
        self.viaShare = viaShare
