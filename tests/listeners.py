"""
Helpers for the transport tests: certificates made on the spot with C{cryptography}, and a broker
listening through a full C{[listener:NAME]} (TLS, WebSocket, PROXY) on the e2e harness's reactor.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from mqttd.broker import Broker
from mqttd.config import BrokerConfig, ListenerConfig
from mqttd.interfaces import IAuthorizer
from mqttd.listening import serverEndpoint
from mqttd.service import listenerFactory
from mqttd.transports.tls import ServerTLS
from tests import e2e

_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    certificate: Path
    key: Path


class Authority:
    """A certificate authority that writes what it issues into C{directory}."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - _DAY)
            .not_valid_after(_NOW + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.path = directory / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        file: str,
        cn: str,
        *,
        server: bool = False,
        san: list[x509.GeneralName] | None = None,
        expired: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        if server:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(e2e.HOST))]
        notAfter = _NOW - _DAY if expired else _NOW + 30 * _DAY
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - 2 * _DAY)
            .not_valid_after(notAfter)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.directory / f"{file}.pem", self.directory / f"{file}.key")
        issued.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued

    def crl(self, file: str, revoked: list[Issued]) -> Path:
        """A CRL revoking C{revoked}, written to C{file}."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_NOW - _DAY)
            .next_update(_NOW + 30 * _DAY)
        )
        for issued in revoked:
            serial = x509.load_pem_x509_certificate(issued.certificate.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_NOW - _DAY)
                .build()
            )
        path = self.directory / file
        crl = builder.sign(self._key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


@dataclass(frozen=True)
class PKI:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a good client certificate."""

    directory: Path
    ca: Authority
    server: Issued
    client: Issued


def make_pki(directory: Path) -> PKI:
    ca = Authority(directory, "good")
    return PKI(
        directory, ca, ca.issue("server", "localhost", server=True), ca.issue("client", "alice")
    )


@dataclass(frozen=True)
class Started:
    """A broker listening through a full listener, and that listener's mqttd-managed TLS."""

    broker: e2e.RunningBroker
    tls: ServerTLS | None

    @property
    def port(self) -> int:
        return self.broker.port


Listen = Callable[..., Started]


def start_listener(
    listener: ListenerConfig, authorizers: Sequence[IAuthorizer] = (), **overrides: Any
) -> Started:
    """
    A fresh broker (C{BrokerConfig} defaults but for C{overrides}, with C{authorizers} as its
    ACL chain) listening through C{listener}, wrapped exactly as L{mqttd.service} wraps it;
    C{tcp:0} endpoints get an ephemeral port.
    """
    e2e.start_reactor()
    config = replace(BrokerConfig(), **overrides)

    def setup() -> Deferred[Started]:
        broker = Broker(config, e2e.reactor, authorizers=authorizers)
        factory = e2e._TrackingFactory(broker, listener, e2e.reactor)
        wrapped, tls = listenerFactory(factory, listener, e2e.reactor, config.connect_timeout)
        d: Deferred[Any] = broker.start()
        d.addCallback(lambda _: serverEndpoint(e2e.reactor, listener).listen(wrapped))

        def listening(port: IListeningPort) -> Started:
            address: Any = port.getHost()
            running = e2e.RunningBroker(broker, factory, port, address.host, address.port)
            return Started(running, tls)

        d.addCallback(listening)
        return d

    started: Started = e2e.in_reactor(setup)
    return started


def tcpListener(
    endpoint: str = f"tcp:0:interface={e2e.HOST}", allow_anonymous: bool = True, **keys: Any
) -> ListenerConfig:
    """A listener, by default on an ephemeral port of 127.0.0.1 and allowing anonymous clients."""
    return ListenerConfig(name="t", endpoint=endpoint, allow_anonymous=allow_anonymous, **keys)
