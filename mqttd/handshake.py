"""
A connection's way from CONNECT to CONNACK: the certificate identity, the
authenticator chain or an MQTT 5 enhanced authentication exchange (and
later re-authentication), the broker's decision, and the CONNACK at the
client's protocol level with the 5.0 limits each side sets.

L{ConnectHandshake} is mixed into L{mqttd.protocol.MQTTServerProtocol},
whose packet tables name its handlers; what it uses of that connection is
declared below.  Everything after CONNACK is the protocol's.

A little over 500 lines, for a reason: the authenticator chain and the AUTH
exchange (with re-authentication) are two ways to the same decision and
CONNACK, sharing the pending CONNECT, the connect timer and the 5.0 limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from .broker import KEEPALIVE_UNLIMITED, Broker
from .codec import encode
from .codec.packets import (
    Auth,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    ProtocolLevel,
    ReasonCode,
)
from .codec.properties import Properties
from .config import ListenerConfig
from .interfaces import (
    Allow,
    Continue,
    Credentials,
    Deny,
    IClientConnection,
    IEnhancedAuthenticator,
)
from .session import Session, SessionError
from .stats import Stats

# Protocol levels as operators name them, for the connect line.
_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}

# A 3.1 / 3.1.1 CONNACK accepting the connection, by Session Present: the same four bytes for
# every client, encoded once.
_CONNACK_ACCEPTED = {present: encode(Connack(present, 0)) for present in (False, True)}

# What an authenticator refusing a login may answer, 3.1.1's two return codes and their 5.0
# counterparts; every one becomes one answer to a CONNECT carrying a user name.
_LOGIN_REFUSALS = frozenset(
    {
        ConnackCode.BAD_USERNAME_OR_PASSWORD,
        ConnackCode.NOT_AUTHORIZED,
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
    }
)


@dataclass(slots=True)
class EnhancedAuth:
    """
    A connection's enhanced authentication (section 4.12), kept after CONNACK
    for re-authentication.

    @ivar connect: the CONNECT awaiting its CONNACK; L{None} once accepted.
    @ivar identity: what the authenticator allowed the connection as, which
        a re-authentication must allow again.
    @ivar state: that of the last L{Continue}, for the client's answer.
    @ivar waiting: a L{Continue} was sent and the client's AUTH 0x18 is due.
    """

    authenticator: IEnhancedAuthenticator
    method: str
    credentials: Credentials
    connect: Connect | None
    identity: str | None = None
    state: Any = None
    waiting: bool = False


class ConnectHandshake:
    """
    The CONNECT, AUTH and CONNACK handling of an MQTT server connection.
    """

    log: Logger
    # What the handshake reads and sets of the connection it is part of.
    broker: Broker
    listener: ListenerConfig
    clock: IReactorTime
    transport: ITransport | None
    session: Session | None
    clientId: str | None
    clientAddress: str
    protocolLevel: ProtocolLevel
    maxPacketSize: int
    bridge: bool
    certificateIdentity: str | None
    _host: str
    _stats: Stats
    _closing: bool
    _closeReason: str
    _graceful: bool
    _enhanced: EnhancedAuth | None
    _handlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]]
    _handlers5: dict[type, Callable[[Any, Any], Deferred[Any] | None]]
    _authenticatingHandlers: dict[type, Callable[[Any, Any], Deferred[Any] | None]]
    _topicAliases: dict[int, str] | None
    _username: str | None
    _who: str

    if TYPE_CHECKING:

        def _notePeer(self) -> None: ...
        def _stopConnectTimer(self) -> None: ...
        def _startKeepalive(self, keepalive: int) -> None: ...
        def _refuse(self, code: int, reason: str) -> None: ...
        def _loseConnection(self) -> None: ...
        def _encodeWithin(self, packet: Packet) -> bytes | None: ...
        def _write(self, data: bytes) -> None: ...
        def sendPacket(self, packet: Packet) -> None: ...
        def close(self, reason: str, reasonCode: int | None = None) -> None: ...

    def connectReceived(self, packet: Connect) -> Deferred[None] | None:
        method = packet.properties.authentication_method
        if method is None:
            # An enhanced authentication exchange stays within the CONNECT's time budget, so
            # the timer runs on until its CONNACK.
            self._stopConnectTimer()
        # Refusals too are written at the client's level, and within its Maximum Packet Size.
        self.protocolLevel = ProtocolLevel(packet.protocol_level)
        self.bridge = packet.bridge
        if packet.protocol_level == ProtocolLevel.MQTT_5:
            self.maxPacketSize = packet.properties.maximum_packet_size or 0
        if self.listener.endpoint.startswith("haproxy:"):
            # Behind a haproxy: endpoint the peer is the balancer until the PROXY header, which
            # precedes CONNECT, has been read; from now on it is the client.
            self._notePeer()
        if self.listener.identity != "none":
            identified = self._identified(packet)
            if identified is None:
                return None
            packet = identified
        if method is not None:
            return self._startEnhanced(packet, method)
        decision = self.broker.authenticate(
            packet, self.listener, self._host, self.certificateIdentity
        )
        if isinstance(decision, Deferred):
            return decision.addCallback(self._authenticated, packet)
        return self._authenticated(decision, packet)

    def _startEnhanced(self, packet: Connect, method: str) -> Deferred[None] | None:
        authenticator = self.broker.enhancedAuthenticator(self.listener, method)
        if authenticator is None:
            # [MQTT-4.12.0-1]
            self._refuse(
                ReasonCode.BAD_AUTHENTICATION_METHOD,
                f"authentication method {method!r} not offered",
            )
            return None
        credentials = self.broker.credentials(
            packet, self.listener, self._host, self.certificateIdentity
        )
        self._enhanced = EnhancedAuth(authenticator, method, credentials, packet)
        self._handlers = self._authenticatingHandlers
        return self._authStep(
            authenticator.startAuthentication, credentials, packet.properties.authentication_data
        )

    def _authStep(self, step: Callable[..., Any], *args: Any) -> Deferred[None] | None:
        """
        Ask the enhanced authenticator for its next step and act on it; a
        L{Deferred} answer holds the client's packets until it fires.
        """
        try:
            result = step(*args)
        except Exception:
            result = self._authenticatorFailed(Failure())
        if isinstance(result, Deferred):
            return result.addErrback(self._authenticatorFailed).addCallback(self._authStepped)
        return self._authStepped(result)

    def _authenticatorFailed(self, failure: Failure) -> Deny:
        self.log.failure(
            "enhanced authenticator failed on {address}; refusing",
            failure,
            address=self.clientAddress,
        )
        return Deny(ConnackCode.NOT_AUTHORIZED, "authenticator failed")

    def _authStepped(self, step: object) -> Deferred[None] | None:
        enhanced = self._enhanced
        if self._closing or enhanced is None:
            return None
        if isinstance(step, Continue):
            enhanced.state = step.state
            enhanced.waiting = True
            # [MQTT-4.12.0-2, MQTT-4.12.0-5]
            self.sendPacket(
                Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(
                        authentication_method=enhanced.method, authentication_data=step.authData
                    ),
                )
            )
            return None
        connect = enhanced.connect
        if connect is not None:
            if isinstance(step, Allow):
                enhanced.identity = step.identity
            # Anything but a decision denies, as an abstention does [MQTT-4.12.0-4].
            return self._authenticated(step if isinstance(step, Allow | Deny) else None, connect)
        if isinstance(step, Allow) and step.identity == enhanced.identity:
            self.sendPacket(
                Auth(
                    ReasonCode.SUCCESS,
                    Properties(
                        authentication_method=enhanced.method, authentication_data=step.authData
                    ),
                )
            )
            return None
        why = step.reason if isinstance(step, Deny) else "no decision"
        # [MQTT-4.12.1-2]; 0x86 is no Disconnect Reason Code, so every refusal is 0x87.
        self.close(f"re-authentication failed: {why}", ReasonCode.NOT_AUTHORIZED)
        return None

    def _authenticated(
        self, decision: Allow | Deny | None, packet: Connect
    ) -> Deferred[None] | None:
        if self._closing:
            # Gone while an authenticator was answering: nothing to attach to.
            return None
        if not isinstance(decision, Allow):
            self._stats.authFailures += 1
            code = decision.code if isinstance(decision, Deny) else ConnackCode.NOT_AUTHORIZED
            why = decision.reason if isinstance(decision, Deny) else "no decision"
            if packet.username is not None and code in _LOGIN_REFUSALS and self._enhanced is None:
                # One answer for every failed login, an unknown user or a wrong password alike,
                # so that the answer does not tell which user names exist (as mosquitto).
                code = (
                    ReasonCode.BAD_USER_NAME_OR_PASSWORD
                    if self.protocolLevel == ProtocolLevel.MQTT_5
                    else ConnackCode.NOT_AUTHORIZED
                )
            user = "anonymous" if packet.username is None else f"user {packet.username!r}"
            self._refuse(code, f"{user} (client id {packet.client_id!r}) not authenticated: {why}")
            return None
        if self.listener.use_identity_as_clientid:
            # The configuration allows this key only on identity = cn | san listeners.
            assert self.certificateIdentity is not None
            packet = replace(packet, client_id=self.certificateIdentity)
        elif self.listener.use_username_as_clientid:
            name = decision.identity if decision.identity is not None else packet.username
            if name is None:
                self._refuse(ConnackCode.NOT_AUTHORIZED, "use_username_as_clientid: no user name")
                return None
            packet = replace(packet, client_id=name)
        claimed = self.broker.claim(packet, decision)
        if claimed is not None:
            return claimed.addCallbacks(self._claimed, self._claimFailed, (packet, decision))
        return self._connect(packet, decision)

    def _claimed(
        self, refusal: int | None, packet: Connect, decision: Allow
    ) -> Deferred[None] | None:
        if self._closing:
            # Gone while the cluster answered: the claim goes with no session to keep it.
            return None
        if refusal is not None:
            self._refuse(refusal, f"client id {packet.client_id!r} refused by the cluster")
            return None
        return self._connect(packet, decision)

    def _claimFailed(self, failure: Failure) -> None:
        # Redis could not be asked: another node may hold the client id, so the client is
        # told to come back rather than given a session two nodes might own.
        self._graceful = True
        if not self._closing:
            self._refuse(
                ConnackCode.SERVER_UNAVAILABLE, "the cluster could not claim its client id"
            )

    def _connect(self, packet: Connect, decision: Allow) -> Deferred[None] | None:
        # Mixed into MQTTServerProtocol, this is the client's IClientConnection.
        conn = cast(IClientConnection, self)
        code, session, sessionPresent = self.broker.connect(
            conn, packet, self.listener, decision, self._host
        )
        if session is None:
            self._refuse(code, f"CONNACK {code} for client id {packet.client_id!r}")
            return None
        self.session = session
        self.clientId = session.clientId
        stored = self.broker.whenSessionStored(session, conn)
        if stored is not None:
            return stored.addCallbacks(
                self._sessionStored,
                self._sessionNotStored,
                (packet, session, sessionPresent, decision),
            )
        return self._accept(packet, session, sessionPresent, decision)

    def _sessionStored(
        self, ours: bool, packet: Connect, session: Session, sessionPresent: bool, decision: Allow
    ) -> Deferred[None] | None:
        if not ours:
            # Taken over, or gone, while its session was being committed: settled there.
            return None
        return self._accept(packet, session, sessionPresent, decision)

    def _sessionNotStored(self, failure: Failure) -> None:
        # The store logged why; the client is told to come back rather than that a session
        # exists which a crash would forget.  Refused, its will is not published either.
        self._graceful = True
        self._refuse(ConnackCode.SERVER_UNAVAILABLE, "the store could not record its session")

    def _accept(
        self, packet: Connect, session: Session, sessionPresent: bool, decision: Allow
    ) -> Deferred[None] | None:
        """Answer CONNACK to the admitted C{packet} and resume C{session}."""
        conn = cast(IClientConnection, self)
        keepalive = packet.keepalive
        self._stopConnectTimer()
        if self.protocolLevel == ProtocolLevel.MQTT_5:
            properties, keepalive = self._accepted5(packet, session)
            if self._enhanced is not None:
                # [MQTT-4.12.0-5]
                properties = replace(
                    properties,
                    authentication_method=self._enhanced.method,
                    authentication_data=decision.authData,
                )
                self._enhanced.connect = None
            connack = self._encodeWithin(Connack(sessionPresent, 0, properties))
            if connack is None:
                # The client cannot be told it is connected [MQTT-3.1.2-25]; closed as
                # refused, so its will is not published either, and the session is
                # attached only for connectionLost to end it as any other.
                self._graceful = True
                session.connection = conn
                self.close("CONNACK larger than the client's Maximum Packet Size")
                return None
            self._write(connack)
        else:
            session.maxInflight = self.broker.config.max_inflight
            # MQTT 3.1 has no Session Present flag; its CONNACK byte is reserved.
            present = sessionPresent and self.protocolLevel == ProtocolLevel.MQTT_3_1_1
            self._write(_CONNACK_ACCEPTED[present])
        if keepalive:
            self._startKeepalive(keepalive)
        self._username = decision.identity if decision.identity is not None else packet.username
        if self.certificateIdentity is not None:
            self._who = f"certificate identity {self.certificateIdentity!r}"
        elif self._username is not None:
            self._who = f"user {self._username!r}"
        if self.broker.logConnections:
            self.log.info(
                "client {clientId} connected from {address} on listener {listener} as {who}"
                " (MQTT {version}{bridge}, clean {clean}, session present {sessionPresent},"
                " keepalive {keepalive})",
                clientId=session.clientId,
                address=self.clientAddress,
                listener=self.listener.name,
                who=self._who,
                username=self._username,
                version=_VERSIONS.get(packet.protocol_level, packet.protocol_level),
                protocolLevel=packet.protocol_level,
                bridge=", bridge" if self.bridge else "",
                clean=packet.clean_session,
                sessionPresent=sessionPresent,
                keepalive=packet.keepalive,
            )
        return self.broker.resume(session, conn)

    def _accepted5(self, packet: Connect, session: Session) -> tuple[Properties, int]:
        """
        Apply a 5.0 client's limits to its connection and session, and say
        the broker's own in CONNACK.

        @return: the CONNACK properties and the keepalive to enforce.
        """
        config = self.broker.config
        requested = packet.properties
        # The client's Receive Maximum bounds the outbound window [MQTT-3.3.4-9].
        session.maxInflight = min(config.max_inflight, requested.receive_maximum or 65535)
        session.maxPacketSize = requested.maximum_packet_size or 0
        # Absent or 0: no Topic Alias is sent [MQTT-3.1.2-27].
        session.aliasMaximum = requested.topic_alias_maximum or 0
        keepalive = packet.keepalive
        serverKeepAlive = None
        if keepalive > config.max_keepalive or (
            keepalive == 0 and config.max_keepalive < KEEPALIVE_UNLIMITED
        ):
            # Where 3.1.1 refuses, 5.0 tells the client the keepalive to use [MQTT-3.2.2-21].
            keepalive = serverKeepAlive = config.max_keepalive
        self._handlers = self._handlers5
        properties = Properties(
            # [MQTT-3.2.2-16]
            assigned_client_identifier=None if packet.client_id else session.clientId,
            server_keep_alive=serverKeepAlive,
            # Inbound QoS 1 is acknowledged as it is read, so the QoS 2 messages awaiting
            # PUBREL are what a client can have unacknowledged [MQTT-3.3.4-7].
            receive_maximum=min(config.max_awaiting_rel, 65535),
            retain_available=int(config.retain_available),
            # The decoder's limit is on the Remaining Length, so every packet within this
            # total size is within it.
            maximum_packet_size=config.max_packet_size,
            topic_alias_maximum=config.topic_alias_maximum or None,
            wildcard_subscription_available=1,
            subscription_identifier_available=1,
            shared_subscription_available=int(config.shared_subscriptions),
            response_information=self._responseInformation(requested, session.clientId),
        )
        return properties, keepalive

    def _responseInformation(self, requested: Properties, clientId: str) -> str | None:
        """
        The Response Information for a client that asked for it: the configured prefix,
        never sent unasked [MQTT-3.1.2-28], nor when the client identifier would put a
        wildcard in it (the prefix is for building topic names).
        """
        prefix = self.broker.config.response_information
        if requested.request_response_information != 1 or not prefix:
            return None
        if "{clientid}" in prefix and ("+" in clientId or "#" in clientId):
            return None
        return prefix.replace("{clientid}", clientId)

    def _identified(self, packet: Connect) -> Connect | None:
        """
        The CONNECT as the broker is to see it on a listener with C{identity = cn | san}: the
        username is the one the verified client certificate names, whatever the client sent
        (as mosquitto's use_identity_as_username), so no client can claim another's name.  The
        password is dropped because the certificate is the credential.  L{None} once refused.
        """
        getPeerCertificate = getattr(self.transport, "getPeerCertificate", None)
        certificate = getPeerCertificate() if getPeerCertificate is not None else None
        if certificate is None:
            # Only reachable when TLS is not mqttd's (config refuses identity without it).
            self._refuse(ConnackCode.NOT_AUTHORIZED, "no client certificate")
            return None
        from .transports.tls import IdentityError, certificateIdentity

        try:
            username = certificateIdentity(certificate, self.listener.identity)  # type: ignore[arg-type]
        except IdentityError as e:
            self._refuse(ConnackCode.NOT_AUTHORIZED, f"client certificate refused: {e}")
            return None
        self.certificateIdentity = username
        return replace(packet, username=username, password=None)

    def authReceived(self, packet: Auth) -> Deferred[None] | None:
        enhanced = self._enhanced
        if enhanced is None:
            # [MQTT-4.12.0-7]
            raise SessionError("AUTH without an authentication method")
        if packet.properties.authentication_method != enhanced.method:
            # [MQTT-4.12.0-5, MQTT-4.12.1-1]
            raise SessionError("AUTH with another authentication method")
        data = packet.properties.authentication_data
        if packet.reason_code == ReasonCode.CONTINUE_AUTHENTICATION and enhanced.waiting:
            # [MQTT-4.12.0-3]
            enhanced.waiting = False
            return self._authStep(
                enhanced.authenticator.continueAuthentication, enhanced.state, data
            )
        if (
            packet.reason_code == ReasonCode.RE_AUTHENTICATE
            and enhanced.connect is None
            and not enhanced.waiting
        ):
            # [MQTT-4.12.1-1]; other packets flow on meanwhile.
            return self._authStep(
                enhanced.authenticator.startAuthentication, enhanced.credentials, data
            )
        raise SessionError(f"AUTH 0x{packet.reason_code:02x} out of turn")

    def authBeforeConnack(self, packet: Auth) -> Deferred[None] | None:
        try:
            return self.authReceived(packet)
        except SessionError as e:
            # Not yet accepted, so answered in CONNACK rather than DISCONNECT.
            self._refuse(e.reasonCode, f"protocol error: {e}")
            return None

    def notDuringAuthentication(self, packet: Packet) -> None:
        # [MQTT-3.1.2-30]
        self._refuse(
            ReasonCode.PROTOCOL_ERROR,
            f"protocol error: {type(packet).__name__} during enhanced authentication",
        )

    def authenticationAbandoned(self, packet: Disconnect) -> None:
        self._closing = True
        self._closeReason = "client sent DISCONNECT during enhanced authentication"
        self._loseConnection()
