"""
The seams of mqttd.

Everything the broker core asks of the outside world, and everything the
outside world may replace, is an interface here.  Each method's docstring is
its contract: what it returns, whether that may be a L{Deferred}, who may raise.

Over 500 lines, for a reason: the project keeps every interface in this one
module (the plugin contracts and the seams a cluster replaces), each with the
contract docstring a plugin author reads and the small values its methods take
and return (L{Allow}, L{Deny}, L{Group}, ...); the length is those contracts
written out, and split, one plugin's contract would be spread over several
places.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface


class IClientConnection(Interface):
    """
    The broker's view of one live client connection.

    Implemented by the transport-facing protocol; the broker and sessions use
    only this, so they never learn whether bytes travel over TCP, TLS or
    WebSocket.
    """

    protocolLevel = Attribute("The MQTT protocol level the client connected with (3, 4 or 5).")
    clientAddress = Attribute("A printable peer address for logs.")
    paused = Attribute(
        "True while the transport's write buffer is full.  Sessions queue"
        " instead of writing while it is set, and are told by"
        " L{mqttd.session.Session.resume} when it clears."
    )

    def sendPacket(packet: Any) -> None:
        """
        Encode and write one packet.  Never raises for a closed connection.
        """

    def writeSequence(chunks: Sequence[bytes]) -> None:
        """
        Write one already-encoded PUBLISH packet, its fixed header and topic
        first and its payload last, or a PUBREL as its fixed header and its
        packet identifier (each is counted from the first and last chunks;
        other packets go through L{sendPacket}).  Never raises for a closed
        connection.
        """

    def close(reason: str, reasonCode: int | None = None) -> None:
        """
        Close the connection, logging C{reason}.  The session is detached by
        the caller first, so the connection's loss does not touch it again.

        @param reasonCode: the MQTT 5 reason code a 5.0 client is sent in
            DISCONNECT first; ignored for 3.1 / 3.1.1 clients.
        """


class IMessageStore(Interface):
    """
    Durable broker state: persistent sessions (subscriptions, queued and
    in-flight outbound messages, inbound QoS 2 identifiers awaiting PUBREL),
    retained messages and the wills of open connections.

    The broker keeps live state in memory and tells the store of every change
    as it happens, as a journal of events; on start it restores from the store
    before any listener accepts a connection.  Only persistent sessions and
    QoS 1/2 messages produce session events, so QoS 0 traffic and clean
    sessions cost a store nothing.  A message delivered to many persistent
    sessions arrives as the same L{mqttd.message.Message} object in each
    event: a store writes it once (L{mqttd.message.Message.storeId}) and
    references it from each session.

    Every event method returns at once and does no blocking I/O on the
    reactor thread: a durable store records the change and writes it later,
    in order.  When the broker must not answer a client before a change is
    durable, it asks L{flush}.  A store raises (or fails a L{Deferred}) only
    for errors the operator must see.
    """

    def restore() -> Any:
        """
        Return (or fire with) a L{mqttd.store.StoredState}: the retained
        messages, every persistent session's L{mqttd.session.SessionState},
        and the wills of connections that were open when the broker stopped,
        which the broker publishes (they are then cleared with
        L{willCleared}) before accepting connections.
        """

    def flush(exactlyOnce: bool = False) -> Any:
        """
        Return L{None} if every change recorded so far is as durable as the
        store promises (a memory store, or one writing in batches that keeps
        up), or a L{Deferred} firing once it is (a store in C{sync} mode; one
        writing in batches that has fallen behind fires it when it has caught
        up): the broker answers a client's packet, and reads its next one,
        only after it fires, so a message acknowledged to its publisher
        survives a crash.

        With C{exactlyOnce}, the L{Deferred} fires once every change recorded
        so far is on disk, in any mode (a memory store returns L{None}): what
        QoS 2 waits for before PUBREC, PUBREL, PUBCOMP and a QoS 2 PUBLISH,
        whose packet identifiers a restarted broker must still know.
        """

    def close() -> Any:
        """
        Make every recorded change durable and release the store's files and
        threads; return L{None} or a L{Deferred} firing when done.  No event
        follows.
        """

    def sessionSaved(clientId: str, subscriptions: Mapping[str, int]) -> None:
        """
        C{clientId} has a persistent session with these subscriptions (topic
        filter to granted QoS): created with none when it first connects, and
        saved again whenever they change.
        """

    def sessionDeleted(clientId: str) -> None:
        """
        Forget the session of C{clientId} and every message queued for it
        [MQTT-3.1.2-6].
        """

    def sessionOwned(clientId: str, owner: str) -> None:
        """
        C{clientId}'s persistent session belongs to the identity C{owner}
        (the user name or TLS certificate identity of the client that
        created it; C{""} for an anonymous client), told once after its
        first L{sessionSaved}.  A restored session carries it as
        L{mqttd.session.SessionState.owner}, and a client with another
        identity never resumes it.
        """

    def sessionExpiry(clientId: str, interval: int, expiresAt: float | None) -> None:
        """
        C{clientId}'s persistent session has this Session Expiry Interval
        (seconds; C{0xFFFFFFFF} for never) and, once its client is offline,
        expires at C{expiresAt} (broker clock, the wall clock outside tests);
        C{expiresAt} is L{None} while the client is connected.  A restarted
        broker ends the session at C{expiresAt}, or C{interval} after the
        restart if the client was connected at the crash [MQTT-3.1.2-23].
        """

    def messageQueued(clientId: str, message: Any, qos: int, retain: bool) -> None:
        """
        C{message} (QoS 1 or 2 as delivered) joined the end of C{clientId}'s
        queue, because the client is offline [MQTT-3.1.2-5] or its in-flight
        window is full.  A durable store keeps its MQTT 5 properties and its
        C{expiresAt} deadline too (L{mqttd.store.dumpProperties},
        L{mqttd.store.storedMessage}), here and in L{messageSent} and
        L{retainedSet}.
        """

    def messageSent(
        clientId: str, packetId: int, message: Any, qos: int, retain: bool, queued: bool
    ) -> None:
        """
        C{message} was sent to C{clientId} as PUBLISH C{packetId} and awaits
        PUBACK (QoS 1) or PUBREC (QoS 2).  C{queued} says it left the head of
        the session's queue; otherwise it was sent without being queued.
        Unacknowledged messages are re-sent with DUP=1 when the session
        resumes [MQTT-4.4.0-1].
        """

    def messageReleased(clientId: str, packetId: int) -> None:
        """
        C{clientId} answered PUBREC for QoS 2 delivery C{packetId}: from now
        on the broker re-sends PUBREL for it, never the PUBLISH, so the client
        cannot deliver it twice [MQTT-4.3.3-1].
        """

    def messageAcknowledged(clientId: str, packetId: int) -> None:
        """
        C{clientId} answered PUBACK (QoS 1) or PUBCOMP (QoS 2) for C{packetId}:
        the delivery is over.
        """

    def qos2Received(clientId: str, packetId: int, when: float) -> None:
        """
        C{clientId} sent a new QoS 2 PUBLISH C{packetId} at C{when}; a resend
        before its PUBREL must not be routed again [MQTT-4.3.3-2].
        """

    def qos2Released(clientId: str, packetId: int) -> None:
        """
        C{clientId}'s QoS 2 message C{packetId} was released (PUBREL) or
        forgotten after C{await_rel_timeout}.
        """

    def willSet(clientId: str, will: Any) -> None:
        """
        A connection of C{clientId} with this L{mqttd.codec.packets.Will} was
        accepted; any session, clean or not, may have one.  Its Will
        Properties are kept with it, the Will Delay Interval included.
        """

    def willCleared(clientId: str) -> None:
        """C{clientId}'s will was published or discarded."""

    def retainedSet(message: Any) -> None:
        """
        Store C{message} as the retained message of its topic, replacing any.
        """

    def retainedDeleted(topic: str) -> None:
        """
        Forget the retained message of C{topic}, if any.
        """


# Plugins: discovery and configuration


class PluginConfigError(Exception):
    """
    A plugin's options cannot be used.  Raised by L{IPluginFactory.build};
    the loader turns it into a L{mqttd.config.ConfigError} naming the file
    and the C{[plugin:NAME]} section, so start-up stops with one line.

    @ivar key: the offending option, or L{None} when the section as a whole
        is at fault (a required option missing is reported under its key).
    @ivar why: what is wrong, for a human.
    """

    def __init__(self, key: str | None, why: str) -> None:
        super().__init__(key, why)
        self.key = key
        self.why = why


@dataclass(frozen=True, slots=True)
class PluginContext:
    """
    What a plugin may use besides its options.

    @ivar reactor: the reactor the broker runs on; a plugin schedules timers
        and makes connections with it, never with the global one.
    @ivar configDirectory: the directory of the configuration file (the
        working directory without one); relative paths in options are
        relative to it.
    @ivar brokerConfig: the broker's C{[broker]} settings.
    @ivar lookup: what L{plugin} asks; L{None} where no other plugin can be
        had (a plugin built on its own, as in a unit test).
    @ivar storePlugin: the name of the broker's store plugin (C{[store]
        plugin}), which L{plugin} gives; L{None} for the memory store.
    """

    reactor: Any
    configDirectory: str
    brokerConfig: Any
    lookup: Callable[[str, Any], Any] | None = None
    storePlugin: str | None = None

    def path(self, value: str) -> str:
        """C{value}, a path from an option, made absolute against L{configDirectory}."""
        return os.path.join(self.configDirectory, os.path.expanduser(value))

    def plugin(self, name: str, interface: Any) -> Any:
        """
        Another plugin of the same configuration, built once from its own
        C{[plugin:NAME]} section however many plugins and chains name it.

        @param interface: what the caller will use it as.
        @raise PluginConfigError: (with no key: the caller re-raises it under
            the option that named the plugin) C{name} is unknown or does not
            provide C{interface}.
        """
        if self.lookup is None:
            raise PluginConfigError(None, f"plugin {name!r} is not available here")
        return self.lookup(name, interface)


class IPluginFactory(Interface):
    """
    Builds one kind of plugin from its C{[plugin:NAME]} section.

    A module in C{mqttd.plugins}, or in a directory listed in C{[plugins]
    paths}, exposes module-level objects providing both this and
    L{twisted.plugin.IPlugin}; L{mqttd.plugin_loader.findPlugins} finds them.
    """

    name = Attribute("The name that selects this plugin in mqttd.ini, e.g. 'passwordfile'.")

    def build(options: Mapping[str, str], context: PluginContext) -> Any:
        """
        Return a provider of one or more of L{IAuthenticator}, L{IAuthorizer},
        L{ISubscriberSelector}, L{IBrokerObserver} or L{IMessageStore},
        configured by C{options} (the section's keys, unparsed strings).

        Called once per broker start, before any listener accepts; reading
        files here (synchronously) is fine.

        @raise PluginConfigError: an option is unknown, missing or malformed.
        """


class ReloadError(Exception):
    """
    A plugin could not reload and kept its previous state; the text says why, naming the file
    at fault, for the one line the broker logs.
    """


class IReloadable(Interface):
    """A plugin whose state comes from files or settings it can re-read."""

    def reload() -> None:
        """
        Re-read the plugin's sources (on SIGHUP).  Live connections are kept.
        On error, keep the previous state (a typo in a password file must not
        lock every client out) and raise L{ReloadError} saying why.
        """


# Authentication


@dataclass(frozen=True, slots=True)
class Credentials:
    """
    What a CONNECT presents to the authenticators.

    @ivar clientId: as sent; empty when the broker will assign one.
    @ivar username: L{None} when the CONNECT has no user name.
    @ivar password: raw bytes; L{None} when the CONNECT has no password.
    @ivar peerCertificateName: the common name of the TLS client
        certificate the connection verified, or L{None}.
    @ivar address: the peer's host (an IP address for TCP), for logs and
        address-based policies.
    @ivar listener: the name of the listener the connection arrived on.
    """

    clientId: str
    username: str | None
    password: bytes | None
    peerCertificateName: str | None
    address: str
    listener: str


@dataclass(frozen=True, slots=True)
class Allow:
    """
    An authenticator accepts the client.

    @ivar identity: the name the authorizers know the client by (and ACL
        files call the user); L{None} keeps the CONNECT's user name.
    @ivar authData: from an L{IEnhancedAuthenticator} only: the last
        Authentication Data the client is sent (in CONNACK, or in AUTH 0x00
        after a re-authentication), such as a SCRAM server signature.
    """

    identity: str | None = None
    authData: bytes | None = None


@dataclass(frozen=True, slots=True)
class Deny:
    """
    An authenticator refuses the client.

    @ivar code: the CONNACK return code: 4 (bad user name or password) or
        5 (not authorised).
    @ivar reason: for the broker's log, never sent to the client.
    """

    code: int = 5
    reason: str = ""


AuthDecision = Allow | Deny | None


@dataclass(frozen=True, slots=True)
class Continue:
    """
    An L{IEnhancedAuthenticator} needs another step: the client is sent AUTH
    0x18 with C{authData} [MQTT-4.12.0-2], and its answering AUTH 0x18
    [MQTT-4.12.0-3] goes to L{IEnhancedAuthenticator.continueAuthentication}
    with C{state}.

    @ivar state: whatever the authenticator needs to take the next step; the
        broker only hands it back.
    """

    authData: bytes | None
    state: Any = None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """
    An accepted client, as the authorizers and observers see it.

    @ivar username: the identity an authenticator allowed with, else the
        CONNECT's user name (only when no authenticator is configured for
        the listener), else L{None}.
    """

    clientId: str
    username: str | None
    address: str
    listener: str


class IAuthenticator(Interface):
    """
    Decides whether a CONNECT is accepted.

    Authenticators form a chain (C{[auth] chain}, or C{auth} of a listener):
    they are asked in order and the first that does not abstain decides.
    When all abstain, the client is accepted only if the listener has
    C{allow_anonymous = true} and the client sent no user name (a user name
    that no authenticator recognised is a failed login, not an anonymous
    one, as in mosquitto); with no authenticator configured, only
    C{allow_anonymous} counts.
    """

    def authenticate(credentials: Credentials) -> Any:
        """
        Return, or return a L{Deferred} firing with, L{Allow}, L{Deny} or
        L{None} (abstain: this authenticator does not know the client).

        While a Deferred is outstanding the client's later packets wait, so
        slow I/O here delays only this client.  A raised exception or failed
        Deferred denies the client (fail closed) and is logged.
        """


class IEnhancedAuthenticator(IAuthenticator):
    """
    An authenticator that also offers an MQTT 5.0 enhanced authentication
    method: a challenge / response exchange of AUTH packets (section 4.12).

    A 5.0 CONNECT naming an Authentication Method is decided by the first
    member of the listener's chain offering that method, and by it alone
    (no other is asked); with none, the client gets CONNACK 0x8C
    [MQTT-4.12.0-1].  Every packet the broker sends in the exchange, and
    the successful CONNACK, carries the method [MQTT-4.12.0-5].  The
    CONNECT timeout covers the whole exchange.  A CONNECT without a method
    is asked of L{authenticate}, which may abstain.

    Each step returns, or returns a L{Deferred} firing with, L{Continue}
    (another round trip), L{Allow} (CONNACK 0x00, or AUTH 0x00 after a
    re-authentication, with L{Allow.authData}) or L{Deny} (CONNACK 0x86 for
    code 4, else 0x87 [MQTT-4.12.0-4]; after CONNACK, DISCONNECT 0x87
    [MQTT-4.12.1-2], as 0x86 is no Disconnect Reason Code); anything else,
    a raised exception or a failed Deferred denies (fail closed) and is
    logged.  The client's packets wait
    while a Deferred is outstanding.

    A client may re-authenticate at any time after CONNACK with the same
    method [MQTT-4.12.1-1]: the exchange runs again from
    L{startAuthentication}, and must allow the same identity as before (a
    connection cannot change user), else the client is disconnected.
    """

    authenticationMethod = Attribute("The Authentication Method offered, e.g. 'SCRAM-SHA-256'.")

    def startAuthentication(credentials: Credentials, authData: bytes | None) -> Any:
        """
        Begin an exchange: C{authData} is the Authentication Data of the
        CONNECT, or of the client's AUTH 0x19 when it re-authenticates.
        """

    def continueAuthentication(state: Any, authData: bytes | None) -> Any:
        """
        Take the next step: C{state} is that of the L{Continue} the client
        answered, C{authData} the Authentication Data of its AUTH 0x18.
        """


# Authorisation


class IUserStore(Interface):
    """
    An authenticator whose users can be managed through mqttd (the HTTP
    API, C{mqttd ctl}): a change is written to its file and takes effect
    for the next CONNECT.
    """

    def usernames() -> Iterable[str]:
        """Every user it knows."""

    def setPassword(username: str, password: str) -> None:
        """
        Create C{username} or change its password.

        @raise ValueError: C{username} cannot be stored (empty, or holding
            a character the file format reserves).
        @raise OSError: the file cannot be written; nothing changed.
        """

    def deleteUser(username: str) -> bool:
        """
        Forget C{username}.

        @return: whether it existed.
        @raise OSError: the file cannot be written; nothing changed.
        """


class Action(enum.IntEnum):
    """What an authorizer is asked to allow on a topic."""

    PUBLISH = 1
    """The client sends a PUBLISH to a topic name (wills included)."""
    SUBSCRIBE = 2
    """The client subscribes to a topic filter."""
    RECEIVE = 3
    """A message on a topic name is delivered to the client (retained and wills included)."""


class IAuthorizer(Interface):
    """
    Decides what an accepted client may do on a topic.

    Authorizers form a chain (C{[acl] chain}): the first that does not
    abstain decides; when all abstain the action is denied.  With no
    authorizer configured everything is allowed and nothing is asked, so
    the broker's hot path pays nothing.

    The broker asks for C{PUBLISH} on every inbound PUBLISH (a denied QoS 1
    or 2 message is still acknowledged and then dropped, as mosquitto does,
    so the client does not resend it forever), for C{SUBSCRIBE} per topic
    filter (denied: SUBACK 0x80), and for C{RECEIVE} per delivery.  When a
    persistent session resumes, its subscriptions are asked again and those
    now denied are removed.
    """

    def authorize(client: ClientInfo, action: Action, topic: str) -> Any:
        """
        Return C{True} (allow), C{False} (deny) or L{None} (abstain), or a
        L{Deferred} firing with one of them.

        The answer must depend only on C{(client, action, topic)}: the
        broker caches it per client until L{IReloadable.reload} or the
        client reconnects.  Answer synchronously whenever possible: a plain
        value costs one call, a Deferred holds the client's packets (publish,
        subscribe) or that client's deliveries (receive) until it fires.  A
        raised exception or failed Deferred denies and is logged.
        """


# Routing and events


class IRuleListing(Interface):
    """An authorizer whose rules can be shown to an operator (the HTTP API)."""

    def listRules() -> Sequence[Mapping[str, Any]]:
        """
        Its rules in the order they are kept, each a mapping with at least
        C{topic} and C{access} (C{read}, C{write}, C{readwrite} or C{deny})
        and, where the rule is for one user or a pattern, C{user} or
        C{pattern: True}.
        """


class ISubscriberSelector(Interface):
    """
    Adds recipients to a message beyond the subscriptions matching its
    topic: group fan-out, direct messages.

    Called synchronously once per routed message, only when at least one
    selector is configured; it must not block.  For a group of thousands,
    return a generator or a prepared list rather than building new objects
    per message.
    """

    def select(message: Any, publisher: ClientInfo | None) -> Any:
        """
        Return an iterable of C{(clientId, qos)} or C{(clientId, qos,
        topic)} for the L{mqttd.message.Message} C{message}, published by
        C{publisher} (L{None} for wills of departed clients and broker
        messages), or a mapping of client identifier to QoS: the broker
        reads a mapping without copying it or unpacking a tuple per
        recipient, and never changes it, so one prepared for a large group
        can be returned for every message.

        Each recipient gets the message at the lower of C{qos} and the
        published QoS, once: a client also matched by a subscription gets
        the higher of the two QoS.  With C{topic}, the recipient receives
        the message under that topic name instead, as a separate delivery.
        Client identifiers without a session are skipped.  The receive ACL
        applies to every such delivery.  A L{Kept} mapping also says the
        message was kept for recipients who get it later, so an MQTT 5
        publisher's receipt is a success even when it is empty.
        """


class Kept(dict[str, int]):
    """
    What an L{ISubscriberSelector} returns for a message it kept for recipients who will get
    it later (a group's inbox): a mapping of the recipients to deliver to now, possibly
    empty, that also tells the broker the message did reach someone, so that an MQTT 5
    publisher is not told "no matching subscribers".
    """


class IBrokerObserver(Interface):
    """
    Receives the broker's events, for metrics, C{$SYS} and integrations.

    Each method is called synchronously in the reactor thread as the event
    happens, so an observer must not block: hand slow work to a thread or
    a queue.  Exceptions are logged and swallowed; an observer can never
    change what the broker does.  With no observer configured the broker
    makes no calls.
    """

    def clientConnected(client: ClientInfo) -> None:
        """C{client} was accepted; its CONNACK is written next."""

    def clientDisconnected(client: ClientInfo, graceful: bool) -> None:
        """C{client}'s connection ended; C{graceful} if it sent DISCONNECT."""

    def subscribed(client: ClientInfo, topicFilter: str, qos: int) -> None:
        """C{client} was granted C{topicFilter} at C{qos}."""

    def unsubscribed(client: ClientInfo, topicFilter: str) -> None:
        """
        C{client}'s subscription to C{topicFilter} was removed, by its
        UNSUBSCRIBE or by an operator.
        """

    def messagePublished(client: ClientInfo | None, message: Any) -> None:
        """
        A L{mqttd.message.Message} is about to be routed; C{client} is
        L{None} for wills and messages the broker itself routes.
        """

    def messageDelivered(clientId: str, message: Any, qos: int) -> None:
        """C{message} was handed to C{clientId}'s session at C{qos}."""

    def messageAcknowledged(clientId: str, message: Any, qos: int) -> None:
        """
        C{clientId}'s client acknowledged its QoS C{qos} delivery of
        C{message}: PUBACK for QoS 1, PUBCOMP for QoS 2.
        """

    def messageDropped(clientId: str | None, message: Any, reason: str) -> None:
        """
        C{message} was refused: from its publisher (C{clientId} L{None}
        unless known) by the publish ACL or a limit, or for one recipient by
        the receive ACL.
        """


class IBrokerAware(Interface):
    """
    A plugin that acts on the broker itself rather than only answering it:
    one that publishes messages of its own, or must know which sessions
    exist.  It may use, of the L{mqttd.broker.Broker} it is given, C{route}
    (publish a L{mqttd.message.Message}), C{sessions} and C{clients} (read
    only), C{clientIdsByUsername}, C{stats}, C{authorizationChanged},
    C{authorize} (the ACL chain's answer for a client), C{deliverTo} (one
    session, through the receive ACL), C{whenConnected} (be told of clients
    coming and going) and C{reservedPrefixes} (extend it, in C{attach}, with
    topic prefixes no client may subscribe to).
    """

    def attach(broker: Any) -> None:
        """
        The broker is built and about to restore its store; no client is
        connected yet.  Start timers here.
        """

    def detach() -> Any:
        """
        The broker has stopped: stop timers and let go of it.  May return a L{Deferred}
        that fires once what the plugin still writes is written; the service waits for it.
        """


# Virtual groups


@dataclass(frozen=True, slots=True)
class Group:
    """
    A virtual group: what a message published to C{$group/NAME/...} reaches.

    Immutable: a change to a group is a new L{Group}, so a reader holding
    one (and what it prepared from it) is never changed under its feet.

    @ivar members: member to the highest QoS it receives at.  A member is a
        client identifier, or with C{byUsername} a user name (the identity
        the authenticators allowed), standing for every session of that
        user.
    @ivar topic: the delivered topic, a template of C{{group}}, C{{member}},
        C{{clientid}}, C{{publisher}} and C{{rest}} (what follows the group
        name); L{None} delivers under the published topic.
    @ivar echo: whether the publisher's own session receives the message.
    @ivar owners: the members (by the same kind of name) who manage the
        group: add and remove its members.
    @ivar publish: who may publish to it: C{"members"} (its members, and
        whomever the ACL allows besides), C{"owners"} (its owners alone: an
        announcement channel) or C{"acl"} (whomever the ACL allows).
    @ivar events: whether a member joining or leaving sends the group a
        message (C{$group/NAME/$membership}, JSON C{{"event": "joined" or
        "left", "group": NAME, "member": MEMBER}}).
    @ivar inbox: whether the group's messages are kept in the store for
        members who are not connected, and handed to each when it next
        connects, whatever its clean start.
    @ivar history: with C{inbox}, how many of the group's last messages a
        member added to it is given.
    """

    name: str
    members: Mapping[str, int]
    byUsername: bool = False
    topic: str | None = None
    echo: bool = False
    owners: frozenset[str] = frozenset()
    publish: str = "members"
    events: bool = False
    inbox: bool = False
    history: int = 0


class IGroupSource(Interface):
    """
    Where the virtual groups plugin finds groups.  Implement this to compute
    members from elsewhere (a user database, a directory): see
    C{docs/virtual-groups.md}.
    """

    def group(name: str) -> Group | None:
        """
        The group called C{name} as it stands now, or L{None}.

        Called synchronously for every message published to a group: answer
        from memory, never block, and return the same L{Group} object while
        it has not changed, since what is prepared from it (the recipient
        list of a large group) is kept per object.
        """

    def groupNames() -> Iterable[str]:
        """The name of every group this source knows, for listings."""

    def watch(changed: Callable[[], None]) -> None:
        """
        Call C{changed()} after any group changed, in the reactor thread: the
        broker's cached answers about who may publish to a group are then
        dropped.
        """


class IGroupInbox(Interface):
    """
    A store that also keeps virtual groups' inboxes: each group's last
    messages (L{mqttd.groupinbox.InboxEntry}) and, per reader (a client id
    or a member), the sequence number of the last one it was given.
    Every method records and returns at once, as L{IMessageStore}'s events do.
    """

    def inboxes() -> Any:
        """
        Every group's inbox as it was stored, by group name: a mapping of
        L{mqttd.groupinbox.Inbox}; called once, at start-up.
        """

    def inboxAppended(group: str, entry: Any) -> None:
        """C{entry} joined the end of C{group}'s inbox."""

    def inboxTrimmed(group: str, firstSeq: int) -> None:
        """Entries of C{group} before sequence number C{firstSeq} are gone."""

    def inboxRead(group: str, reader: str, seq: int) -> None:
        """C{reader} of C{group} has had every entry up to C{seq}."""

    def inboxDeleted(group: str) -> None:
        """C{group}'s inbox, entries and readers, is gone."""


class IGroupStore(IGroupSource):
    """
    A source whose groups are managed through mqttd (configuration, the
    control topics and C{mqttd groups}) and kept durably.
    """

    def save(group: Group) -> Any:
        """
        Create or replace C{group}.  L{group} answers with it at once; return
        L{None}, or a L{Deferred} firing once it is durable.
        """

    def delete(name: str) -> Any:
        """
        Forget the group C{name} (nothing when there is none), at once for
        L{group}; return L{None} or a L{Deferred} as L{save} does.
        """


class ILinkOwner(Interface):
    """
    What an outbound MQTT connection to another broker
    (L{mqttd.bridge.client.MQTTClientProtocol}, the MQTT client on the
    codec) reports to: a bridge (L{mqttd.bridge.bridge.Bridge}), or any
    other client of another broker a deployment builds the same way.  Every
    method is called in the reactor thread, in the order the events happen;
    C{link} is the connection reporting.
    """

    def linkAccepted(link: Any, connack: Any) -> None:
        """CONNACK accepted the CONNECT: packets may be sent with C{link.send}."""

    def linkRefused(link: Any, connack: Any) -> None:
        """
        CONNACK refused the CONNECT (its code says why); the connection is
        being closed, and L{linkLost} follows.
        """

    def packetsReceived(link: Any, packets: Sequence[Any]) -> None:
        """
        Packets that followed CONNACK, in order; PINGRESP is handled by the
        link itself.
        """

    def linkPaused(link: Any, paused: bool) -> None:
        """
        The transport's write buffer filled (C{True}): stop writing until it
        drains (C{False}).
        """

    def linkLost(link: Any, reason: str) -> None:
        """The connection is gone, accepted or not; C{reason} is for the log."""


# The seams a cluster replaces: today each has one in-process implementation
# (mqttd.router.Router, mqttd.retain.RetainedMessages, mqttd.sessions.SessionRegistry).


class IRouteTable(Interface):
    """
    Which subscriptions exist and whose they are, and the routing of a
    message to them.  The in-process table is L{mqttd.router.Router}.
    """

    def addSubscription(topicFilter: str, clientId: str, options: int) -> bool:
        """
        Record that C{clientId}'s session holds C{topicFilter} (a shared
        C{$share/NAME/...} filter joins that group) with C{options}: the QoS
        bits, the MQTT 5 option bits and the Subscription Identifier shifted
        above them.  A second call for the same pair replaces the options.

        @return: whether the pair is new.
        """

    def removeSubscription(topicFilter: str, clientId: str) -> bool:
        """
        Forget C{clientId}'s subscription to C{topicFilter}.

        @return: whether it existed.
        """

    def route(message: Any, publisher: ClientInfo | None = None) -> bool:
        """
        Retain C{message} if it asks to be, and deliver it to every matching
        subscription and selected recipient, each through the receive ACL.

        @param publisher: who sent it; L{None} for the broker's own.
        @return: whether anything matched (an MQTT 5 receipt's 0x10 is its
            negation).
        """

    def whenForwarded() -> Any:
        """
        L{None} when everything routed so far is with its recipients; else a L{Deferred}
        firing once what was handed elsewhere (a cluster's other nodes) is safely held
        there, which a publisher's PUBACK / PUBREC waits for.  It fails with
        L{mqttd.session.SessionError} when a message could not be handed on and the
        publisher must be disconnected unacknowledged.
        """


class IRetainedStore(Interface):
    """
    At most one retained message per topic, held in memory for matching
    (durability is the L{IMessageStore}'s).  The in-process store is
    L{mqttd.retain.RetainedMessages}.
    """

    def __len__() -> int:
        """The number of retained messages."""

    def set(topic: str, message: Any) -> None:
        """Retain C{message} for C{topic}, replacing any message retained there."""

    def get(topic: str) -> Any:
        """The message retained for exactly C{topic}, or L{None}."""

    def delete(topic: str) -> bool:
        """Forget C{topic}'s message; return whether there was one."""

    def matching(topicFilter: str) -> list[Any]:
        """
        The retained messages a new subscription to C{topicFilter} receives
        (C{+} and C{#} at the start never match C{$} topics [MQTT-4.7.2-1]).
        """


class ISessionRegistry(Interface):
    """
    Which sessions exist and which connection, and identity, owns each
    client id.  The in-process registry is L{mqttd.sessions.SessionRegistry}.
    """

    sessions = Attribute(
        "Mapping of client identifier to every live session, connected or offline;"
        " only the registry changes it."
    )

    def attach(
        conn: IClientConnection,
        packet: Any,
        listener: Any,
        allowed: Allow,
        address: str,
        clientId: str,
        expiryInterval: int,
        will: Any,
    ) -> tuple[int, Any, bool]:
        """
        Give C{conn} the session of C{clientId}, new or continued, taking it
        over from any other connection [MQTT-3.1.4-2], unless it belongs to
        another identity and the configuration refuses that.

        @return: C{(returnCode, session, sessionPresent)}, C{session} being
            L{None} unless the code is 0.
        """

    def resume(session: Any, conn: IClientConnection) -> Any:
        """
        Start C{session}'s deliveries on C{conn} once CONNACK is written;
        L{None}, or a L{Deferred} firing once the receive ACL has answered.
        """

    def connectionLost(session: Any, conn: IClientConnection, graceful: bool, reason: str) -> None:
        """
        C{conn} is gone: settle its will and end the session or keep it for
        its Session Expiry Interval.
        """

    def kick(clientId: str) -> bool:
        """Disconnect C{clientId}'s client as a network failure would; whether it was connected."""

    def endSession(clientId: str) -> bool:
        """End C{clientId}'s session, disconnecting it first; whether there was one."""


class IClientIdClaims(Interface):
    """
    Who holds each client id across a cluster's nodes (L{mqttd.cluster.sessions}): asked by
    the broker (C{Broker.claims}) before it attaches a connecting client's session, so that
    one node at a time owns a client id, whichever node the client connects to.
    """

    def claim(packet: Any, allowed: Allow) -> Any:
        """
        Make this node the holder of C{packet}'s client id for the client the authenticators
        allowed (C{allowed} naming its identity): the node that held it disconnects its client
        [MQTT-3.1.4-2] and writes the session no more, and the session, if persistent, is
        brought here for L{ISessionRegistry.attach} to continue.

        @return: a L{Deferred} firing with L{None} once the claim is made, or with the CONNACK
            refusal code (3.1.1's) when the session belongs to another identity and the
            configuration refuses that; failing when the cluster cannot be asked.
        """
