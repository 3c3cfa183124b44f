"""
How a bridge reaches the remote broker: the endpoint of each address (TCP or TLS, with the
bridge's certificates and trust), the CONNECT it sends, the link's protocol factory, the probe
that finds the primary address back, and the backoff between attempts.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

from mqttd.codec.packets import Connect, Will
from mqttd.codec.properties import NO_PROPERTIES, Properties
from mqttd.config import BrokerConfig
from mqttd.transports.tls import TLS_VERSIONS

from .client import MQTTClientProtocol
from .config import BridgeConfig

if TYPE_CHECKING:
    from .bridge import Bridge


def remoteEndpoint(
    reactor: Any, config: BridgeConfig, host: str, port: int
) -> IStreamClientEndpoint:
    """The endpoint to one remote address: TCP with the connect timeout, in TLS if configured."""
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, host, port, timeout=config.connect_timeout
    )
    if config.tls:
        endpoint = wrapClientTLS(_tlsOptions(config, host), endpoint)
    return endpoint


def _tlsOptions(config: BridgeConfig, host: str) -> Any:
    minimum = TLS_VERSIONS[config.tls_version_min]
    client = None
    if config.certificate is not None and config.private_key is not None:
        with open(config.certificate, "rb") as f, open(config.private_key, "rb") as k:
            client = PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())
    trust = platformTrust()
    if config.ca_certificates is not None:
        with open(config.ca_certificates, "rb") as f:
            trust = trustRootFromCertificates(
                [Certificate.loadPEM(pem) for pem in _pemBlocks(f.read())]
            )
    if not config.verify_hostname:
        # The chain is still verified; only the name in the certificate is not checked.
        return CertificateOptions(
            privateKey=client.privateKey.original if client else None,
            certificate=client.original if client else None,
            trustRoot=trust,
            raiseMinimumTo=minimum,
        )
    return optionsForClientTLS(
        config.tls_server_name or host,
        trust,
        client,
        extraCertificateOptions={"raiseMinimumTo": minimum},
    )


def connectPacket(config: BridgeConfig, broker: BrokerConfig, private: bool) -> Connect:
    """
    The CONNECT the bridge sends: its client identifier, credentials and keepalive, the remote
    notification as its will, at level 5 the session expiry and the local broker's limits, and
    with C{private} the bridge bit of the protocol level (mosquitto's try_private).
    """
    level = config.protocolLevel
    properties = NO_PROPERTIES
    if level == 5:
        properties = Properties(
            session_expiry_interval=(
                None if config.clean_start else config.session_expiry_interval or None
            ),
            maximum_packet_size=broker.max_packet_size,
            receive_maximum=min(broker.max_awaiting_rel, 65535),
        )
    password = config.password.encode() if config.password is not None else None
    remoteState = config.remoteNotificationTopic
    return Connect(
        level,
        config.client_id,
        config.clean_start,
        config.keepalive,
        # The remote broker says 0 for us if the link fails (mosquitto's notifications).
        None if remoteState is None else Will(remoteState, b"0", 1, True),
        config.username,
        password,
        properties,
        bridge=private,
    )


class LinkFactory(Factory):
    """Builds the link: an MQTT client connection owned by the bridge."""

    noisy = False

    def __init__(self, bridge: Bridge, connect: Connect) -> None:
        self.bridge = bridge
        self.connect = connect

    def buildProtocol(self, addr: Any) -> Protocol:
        config = self.bridge.config
        return MQTTClientProtocol(
            self.bridge,
            self.connect,
            self.bridge.clock,
            config.connect_timeout,
            self.bridge.broker.config.max_packet_size,
        )


class Probe(Protocol):
    """Connects, and so proves the primary is reachable, then hangs up."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def nextDelay(previous: float, low: float, high: float, rng: random.Random) -> float:
    """
    The wait before the next connection attempt: exponential backoff with "decorrelated
    jitter", drawn between C{low} and three times the C{previous} wait (0 for the first),
    capped at C{high}, so bridges that lost the same broker do not all return in step.
    """
    return min(high, rng.uniform(low, max(low, previous * 3)))


def _pemBlocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN" in block]
