"""
An MQTT-SN client's way from CONNECT to CONNACK (section 6.3): the will exchange (WILLTOPICREQ,
WILLTOPIC, WILLMSGREQ, WILLMSG), the broker's authenticator chain, the broker's session, the
connect timeout, and the refusal that forgets a client never accepted.

L{Connecting} is mixed into L{mqttd.sn.client.SNClient}, whose handler table names its will
handlers; what it uses of that client is declared below.  Everything after CONNACK is the
client's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..codec import packets as mqtt
from ..interfaces import Allow, Deny
from ..session import Session
from ..topics import InvalidTopic, validate_topic_name
from . import packets as sn
from .packets import ReturnCode
from .states import CONNECTING, State

if TYPE_CHECKING:
    from .client import SNClient
    from .gateway import MQTTSNGateway


class Connecting:
    """The CONNECT exchange of an MQTT-SN client."""

    if not TYPE_CHECKING:
        # Empty, so SNClient's instances stay without a __dict__ (memory per idle client);
        # hidden from mypy, which would check the client's attributes against these.
        __slots__ = ()

    log: Logger
    # What connecting reads and sets of the client it is part of.
    gateway: MQTTSNGateway
    address: tuple[str, int, bytes]
    clientAddress: str
    clientId: str
    session: Session | None
    state: State
    paused: bool
    previous: SNClient | None
    _connect: sn.Connect
    _will: mqtt.Will | None
    _willTopic: sn.WillTopic
    _supervisor: IDelayedCall | None

    if TYPE_CHECKING:

        def _send(self, packet: Any) -> None: ...
        def _supervise(self) -> None: ...
        def _cancelSupervisor(self) -> None: ...
        def _lost(self, reason: str) -> None: ...
        def _closed(self) -> None: ...

    def begin(self, storedWill: mqtt.Will | None) -> None:
        """
        Start the CONNECT's exchange: ask for the will if the client has one, else authenticate.

        @param storedWill: the will the gateway kept for this client id, used when a CONNECT
            without the Will flag continues a session (section 6.3's CleanSession rules).
        """
        gateway = self.gateway
        self._supervisor = gateway.clock.callLater(
            gateway.broker.config.connect_timeout, self._connectTimedOut
        )
        if self._connect.will:
            self.state = State.WILLTOPIC
            self._send(sn.WillTopicReq())
            return
        self._will = None if self._connect.clean_session else storedWill
        self._authenticate()

    @property
    def connecting(self) -> bool:
        return self.state in CONNECTING

    def _connectTimedOut(self) -> None:
        self._supervisor = None
        self.gateway.count("connect timeout")
        self._forget(f"{self.state.value} for longer than the connect timeout")

    def _willTopicReceived(self, packet: sn.WillTopic) -> None:
        if self.state not in (State.WILLTOPIC, State.WILLMSG):
            self.gateway.count("unexpected")
            return
        if packet.topic:
            try:
                validate_topic_name(packet.topic, self.gateway.broker.config.max_topic_levels)
            except InvalidTopic as e:
                self._refuse(ReturnCode.NOT_SUPPORTED, f"will topic: {e}")
                return
            if packet.qos < 0:
                self._refuse(ReturnCode.NOT_SUPPORTED, "will QoS -1")
                return
        elif self.state == State.WILLTOPIC:
            # An empty WILLTOPIC: the client has no will after all (section 5.4.8).
            self._will = None
            self._authenticate()
            return
        self._willTopic = packet
        # A WILLTOPIC again means our WILLMSGREQ was lost.
        self.state = State.WILLMSG
        self._send(sn.WillMsgReq())

    def _willMsgReceived(self, packet: sn.WillMsg) -> None:
        if self.state != State.WILLMSG:
            self.gateway.count("unexpected")
            return
        topic = self._willTopic
        self._will = mqtt.Will(topic.topic, packet.payload, topic.qos, topic.retain)
        self._authenticate()

    def _authenticate(self) -> None:
        self.state = State.AUTHENTICATING
        connect = self._connect
        packet = mqtt.Connect(
            protocol_level=mqtt.ProtocolLevel.MQTT_3_1_1,
            client_id=connect.client_id,
            clean_session=connect.clean_session,
            keepalive=connect.duration,
            will=self._will,
        )
        gateway = self.gateway
        decision = gateway.broker.authenticate(packet, gateway.listener, self.address[0])
        if isinstance(decision, Deferred):
            decision.addCallback(self._authenticated, packet)
            decision.addErrback(self._authenticationFailed)
        else:
            self._authenticated(decision, packet)

    def _authenticationFailed(self, failure: Failure) -> None:
        self.log.failure("authenticating {clientId}", failure, clientId=self.clientId)
        self._refuse(ReturnCode.NOT_SUPPORTED, "authentication failed")

    def _authenticated(self, decision: Allow | Deny | None, packet: mqtt.Connect) -> None:
        if self.state != State.AUTHENTICATING:
            # Gone (timed out, replaced) while an authenticator was answering.
            return
        if not isinstance(decision, Allow):
            why = decision.reason if isinstance(decision, Deny) else "no decision"
            self._refuse(ReturnCode.NOT_SUPPORTED, f"not authenticated: {why}")
            return
        gateway = self.gateway
        # Mixed into SNClient, the IClientConnection.
        client = cast("SNClient", self)
        code, session, _ = gateway.broker.connect(
            client, packet, gateway.listener, decision, self.address[0]
        )
        if session is None:
            self._refuse(ReturnCode.NOT_SUPPORTED, f"refused by the broker (CONNACK {code})")
            return
        self._cancelSupervisor()
        self.session = session
        self.state = State.ACTIVE
        self.previous = None
        gateway.accepted(client, self._will if not packet.clean_session else None)
        self._send(sn.Connack(ReturnCode.ACCEPTED))
        self.log.info(
            "MQTT-SN client {clientId} connected from {address} (clean session {clean},"
            " keepalive {keepalive}, will {will})",
            clientId=self.clientId,
            address=self.clientAddress,
            clean=packet.clean_session,
            keepalive=packet.keepalive,
            will=self._will is not None,
        )
        self._supervise()
        self.paused = False
        # Through the broker, so what waited in the session passes the receive ACL first.
        resumed = gateway.broker.resume(session, client)
        if resumed is not None:
            resumed.addErrback(self._resumeFailed)

    def _resumeFailed(self, failure: Failure) -> None:
        self.log.failure("resuming {clientId}'s session", failure, clientId=self.clientId)
        self._lost("internal error")

    def _refuse(self, code: int, reason: str) -> None:
        self._send(sn.Connack(code))
        self.gateway.count("refused")
        self._forget(reason)

    def _forget(self, reason: str) -> None:
        """End a client that never got a session."""
        self.log.info(
            "MQTT-SN CONNECT of {clientId!r} from {address} refused: {reason}",
            clientId=self.clientId,
            address=self.clientAddress,
            reason=reason,
        )
        self._closed()
