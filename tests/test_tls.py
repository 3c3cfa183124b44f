"""
TLS listeners end to end: certificates made in the test, the broker on a real socket, and paho-mqtt
or Python's own C{ssl} module as the client.  Python's C{ssl} is used where the test must see what
happens during the handshake itself, which paho hides behind a failed connect.
"""

from __future__ import annotations

import importlib
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mqttd.codec.packets import Connect
from mqttd.config import ConfigError, ListenerConfig, load_config
from mqttd.plugin_loader import pluginPackage
from tests import e2e
from tests.listeners import PKI, Authority, Issued, Listen, tcpListener

CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"
# In a checkout the shipped plugins are loaded from plugins/ as mqttd.plugins.
pluginPackage()
aclfile = importlib.import_module("mqttd.plugins.aclfile")


def tlsListener(pki: PKI, **keys: Any) -> ListenerConfig:
    return tcpListener(
        certificate=str(pki.server.certificate), private_key=str(pki.server.key), **keys
    )


def mutualListener(pki: PKI, identity: str = "cn", **keys: Any) -> ListenerConfig:
    return tlsListener(
        pki, ca_certificates=str(pki.ca.path), require_certificate=True, identity=identity, **keys
    )


def clientContext(pki: PKI, cert: Issued | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against the test CA, presenting C{cert}."""
    context = ssl.create_default_context(cafile=str(pki.ca.path))
    if cert is not None:
        context.load_cert_chain(str(cert.certificate), str(cert.key))
    return context


def exchange(port: int, context: ssl.SSLContext, data: bytes) -> bytes:
    """
    Connect over TLS, send C{data}, and return what the broker answers before closing or within
    the timeout.  TLS failures surface as L{ssl.SSLError}; with TLS 1.3 a refused client
    certificate is only reported once the client reads, which is why this always reads.
    """
    with socket.create_connection((e2e.HOST, port), timeout=e2e.TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(data)
            try:
                return tls.recv(4)
            except (ConnectionResetError, TimeoutError):
                return b""


def refusedByServer(port: int, context: ssl.SSLContext) -> str:
    """Assert the handshake or the first read fails with an alert; return the error text."""
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
        answer = exchange(port, context, e2e.connect_packet("c"))
        # An EOF without CONNACK is a refusal too, but not one the test can tell from a crash.
        raise AssertionError(f"the broker answered {answer!r}")
    return str(info.value)


def pahoTLS(pki: PKI, cert: Issued | None = None) -> Any:
    def setup(client: Any) -> None:
        client.tls_set(
            ca_certs=str(pki.ca.path),
            certfile=str(cert.certificate) if cert else None,
            keyfile=str(cert.key) if cert else None,
        )

    return setup


def recordUsernames(started: Any) -> list[str | None]:
    """The usernames of the CONNECTs the broker itself is asked to decide."""
    broker = started.broker.broker
    seen: list[str | None] = []
    original = broker.connect

    def connect(conn: Any, packet: Connect, listener: ListenerConfig, *rest: Any) -> Any:
        seen.append(packet.username)
        return original(conn, packet, listener, *rest)

    broker.connect = connect
    return seen


def test_pahoVerifiesServerAndTalks(pki: PKI, listen: Listen) -> None:
    """
    paho-mqtt connects with full server verification (the test CA, hostname 127.0.0.1 in the
    server certificate's subjectAltName), subscribes and receives its own message over TLS.
    """
    started = listen(tlsListener(pki))
    c = e2e.Client(started.port, "tls-paho", setup=pahoTLS(pki))
    try:
        c.subscribe("tls/t", 1)
        c.publish("tls/t", b"secret", 1)
        assert c.wait_for(1) == [e2e.Received("tls/t", b"secret", 1, False)]
    finally:
        c.close()


def test_clientWithoutCertificateRefused(pki: PKI, listen: Listen) -> None:
    """With require_certificate, a client presenting no certificate never gets to MQTT."""
    started = listen(mutualListener(pki))
    refusedByServer(started.port, clientContext(pki))
    assert started.broker.broker.sessions == {}


def test_commonNameBecomesUsername(pki: PKI, listen: Listen) -> None:
    """
    With identity = cn the broker decides the CONNECT with the certificate's common name as the
    username, replacing the one the client sent, so no client can claim another's name.
    """
    started = listen(mutualListener(pki))
    seen = recordUsernames(started)

    def setup(client: Any) -> None:
        pahoTLS(pki, pki.client)(client)
        client.username_pw_set("mallory", "guess")

    c = e2e.Client(started.port, "cn-user", setup=setup)
    c.close()
    assert seen == ["alice"]


def test_commonNameOverSecureWebSocket(pki: PKI, listen: Listen) -> None:
    """Over WSS the client certificate is found beneath the WebSocket layer, and CN still rules."""
    started = listen(mutualListener(pki, protocol="websocket"))
    seen = recordUsernames(started)

    def setup(client: Any) -> None:
        pahoTLS(pki, pki.client)(client)
        client.ws_set_options(path="/mqtt")

    c = e2e.Client(started.port, "wss-cn", transport="websockets", setup=setup)
    c.close()
    assert seen == ["alice"]


def test_subjectAltNameBecomesUsername(pki: PKI, listen: Listen) -> None:
    """With identity = san the one e-mail address in subjectAltName is the username."""
    cert = pki.ca.issue("san", "ignored", san=[x509.RFC822Name("bob@example.com")])
    started = listen(mutualListener(pki, identity="san"))
    seen = recordUsernames(started)
    answer = exchange(started.port, clientContext(pki, cert), e2e.connect_packet("san-user"))
    assert answer == e2e.CONNACK_ACCEPTED
    assert seen == ["bob@example.com"]


def test_commonNameIsWhatTheACLSees(pki: PKI, listen: Listen, tmp_path: Path) -> None:
    """
    CN becomes the username and the ACL sees it: on a listener refusing anonymous clients, with
    an aclfile granting user alice only devices/alice/#, a client whose certificate says alice
    (and who claims to be bob) is let in by its certificate and gets alice's rights, not bob's.
    """
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite devices/alice/#\nuser bob\ntopic devices/#\n")
    started = listen(
        mutualListener(pki, allow_anonymous=False),
        authorizers=[aclfile.ACLFileAuthorizer(str(acl))],
    )

    def setup(client: Any) -> None:
        pahoTLS(pki, pki.client)(client)
        client.username_pw_set("bob")

    c = e2e.Client(started.port, "acl-cn", setup=setup)
    try:
        assert c.subscribe("devices/alice/#", 1) == 1
        assert c.subscribe("devices/bob/#", 1) == 0x80
    finally:
        c.close()


@pytest.mark.parametrize("cn", ["bell\x07", "line\nbreak", "zero\u200bwidth", "del\x7f"])
def test_controlCharacterIdentityRefused(pki: PKI, listen: Listen, cn: str) -> None:
    """
    A verified certificate whose common name holds a control or format character is refused
    with CONNACK 5: such a name could pass for another in logs and ACL files.
    """
    cert = pki.ca.issue("control", cn)
    started = listen(mutualListener(pki))
    seen = recordUsernames(started)
    answer = exchange(started.port, clientContext(pki, cert), e2e.connect_packet("ctl"))
    assert answer == CONNACK_NOT_AUTHORIZED
    assert seen == []


def test_expiredClientCertificateRefused(pki: PKI, listen: Listen) -> None:
    """A client certificate past its notAfter fails the handshake."""
    expired = pki.ca.issue("expired", "old", expired=True)
    started = listen(mutualListener(pki))
    assert "expired" in refusedByServer(started.port, clientContext(pki, expired))


def test_untrustedClientCertificateRefused(pki: PKI, listen: Listen) -> None:
    """A client certificate from a CA the listener does not trust fails the handshake."""
    other = Authority(pki.directory, "other").issue("stranger", "alice")
    started = listen(mutualListener(pki))
    assert "unknown ca" in refusedByServer(started.port, clientContext(pki, other)).lower()


def test_revokedClientCertificateRefused(pki: PKI, listen: Listen) -> None:
    """With crl_file, a certificate the CRL revokes is refused and one it does not is accepted."""
    revoked = pki.ca.issue("revoked", "eve")
    crl = pki.ca.crl("crl.pem", [revoked])
    started = listen(mutualListener(pki, crl_file=str(crl)))
    assert "revoked" in refusedByServer(started.port, clientContext(pki, revoked))
    answer = exchange(started.port, clientContext(pki, pki.client), e2e.connect_packet("ok"))
    assert answer == e2e.CONNACK_ACCEPTED


def test_tls11Refused(pki: PKI, listen: Listen) -> None:
    """
    A client that speaks at most TLS 1.1 is refused by the server with a protocol-version alert
    (the client is allowed TLS 1.1 at security level 0, so the refusal is the server's).
    """
    started = listen(tlsListener(pki))
    context = clientContext(pki)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Python rightly deprecates offering TLS 1.1; this client must, to be refused.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    error = refusedByServer(started.port, context).lower()
    assert "alert protocol version" in error, error


def test_tls12RefusedWhenMinimumIs13(pki: PKI, listen: Listen) -> None:
    """tls_version_min = 1.3 refuses a TLS 1.2 client and accepts a TLS 1.3 one."""
    started = listen(tlsListener(pki, tls_version_min="1.3"))
    old = clientContext(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert "protocol version" in refusedByServer(started.port, old).lower()
    answer = exchange(started.port, clientContext(pki), e2e.connect_packet("tls13"))
    assert answer == e2e.CONNACK_ACCEPTED


def serverSerial(port: int, pki: PKI) -> int:
    with socket.create_connection((e2e.HOST, port), timeout=e2e.TIMEOUT) as raw:
        with clientContext(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_reloadKeepsLiveConnections(pki: PKI, listen: Listen, tmp_path: Path) -> None:
    """
    Reloading (what SIGHUP does) makes new connections get the renewed certificate while a
    connection made before it stays up and keeps working.
    """
    certificate, key = tmp_path / "server.pem", tmp_path / "server.key"
    certificate.write_bytes(pki.server.certificate.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    started = listen(tcpListener(certificate=str(certificate), private_key=str(key)))
    before = serverSerial(started.port, pki)
    old = e2e.Client(started.port, "before-reload", setup=pahoTLS(pki))
    try:
        renewed = pki.ca.issue("renewed", "localhost", server=True)
        certificate.write_bytes(renewed.certificate.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        assert started.tls is not None
        e2e.in_reactor(started.tls.reload)
        after = serverSerial(started.port, pki)
        assert after != before
        assert after == x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number
        old.subscribe("reload/t", 1)
        old.publish("reload/t", b"still here", 1)
        assert old.wait_for(1) == [e2e.Received("reload/t", b"still here", 1, False)]
    finally:
        old.close()


def test_failedReloadKeepsPreviousCertificate(pki: PKI, listen: Listen, tmp_path: Path) -> None:
    """
    BrokerService.reloadCertificates with a broken key file logs the error and keeps serving
    the previous certificate, so a half-copied renewal cannot take a listener down.
    """
    from mqttd.service import BrokerService

    certificate, key = tmp_path / "server.pem", tmp_path / "server.key"
    certificate.write_bytes(pki.server.certificate.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    started = listen(tcpListener(certificate=str(certificate), private_key=str(key)))
    before = serverSerial(started.port, pki)
    service = BrokerService(started.broker.broker)
    assert started.tls is not None
    service.tls["t"] = started.tls
    key.write_text("not a key")
    e2e.in_reactor(service.reloadCertificates)
    errors = e2e.REACTOR.takeErrors()
    assert len(errors) == 1 and "private_key" in errors[0]
    assert serverSerial(started.port, pki) == before


# Configuration


def writeConfig(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mqttd.ini"
    path.write_text("[listener:secure]\nendpoint = tcp:8883:interface=127.0.0.1\n" + body)
    return path


def test_tlsConfigLoads(pki: PKI, tmp_path: Path) -> None:
    """Every TLS key is read into the listener's configuration."""
    path = writeConfig(
        tmp_path,
        f"certificate = {pki.server.certificate}\nprivate_key = {pki.server.key}\n"
        f"ca_certificates = {pki.ca.path}\nrequire_certificate = true\nidentity = san\n"
        f"tls_version_min = 1.3\ncrl_file = {pki.ca.crl('empty.pem', [])}\n",
    )
    (listener,) = load_config(str(path)).listeners
    assert listener.identity == "san" and listener.tls_version_min == "1.3"
    assert listener.require_certificate and listener.crl_file is not None


@pytest.mark.parametrize(
    ("body", "key", "why"),
    [
        ("certificate = {d}/missing.pem\nprivate_key = {key}\n", "certificate", "missing.pem"),
        ("certificate = {cert}\nprivate_key = {d}/missing.key\n", "private_key", "missing.key"),
        ("certificate = {cert}\nprivate_key = {cert}\n", "private_key", "server.pem"),
        ("certificate = {cert}\nprivate_key = {other}\n", "private_key", "cannot be used"),
        ("certificate = {cert}\n", "certificate", "both"),
        ("certificate = {cert}\nprivate_key = {key}\nidentity = cn\n", "identity", "require"),
        ("certificate = {cert}\nprivate_key = {key}\nrequire_certificate = true\n", None, "ca_"),
        ("certificate = {cert}\nprivate_key = {key}\ntls_version_min = 1.1\n", None, "1.2"),
        ("certificate = {cert}\nprivate_key = {key}\nca_certificates = {key}\n", None, "PEM"),
        (
            "certificate = {cert}\nprivate_key = {key}\nca_certificates = {ca}\ncrl_file = no\n",
            None,
            "/no:",
        ),
    ],
)
def test_badTLSConfig(pki: PKI, tmp_path: Path, body: str, key: str | None, why: str) -> None:
    """
    A missing or unreadable file, a key that is not the certificate's, or TLS keys that do not
    fit together stop the start-up with one line naming the file, section and key.
    """
    other = pki.ca.issue("other", "x")
    path = writeConfig(
        tmp_path,
        body.format(
            d=tmp_path,
            cert=pki.server.certificate,
            key=pki.server.key,
            other=other.key,
            ca=pki.ca.path,
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    error = info.value
    assert error.file == str(path) and error.section == "listener:secure"
    if key is not None:
        assert error.key == key
    assert why in str(error), str(error)


def test_identityTakesNoClientCertificateOverSsl(tmp_path: Path, pki: PKI) -> None:
    """TLS keys on an ssl: endpoint are refused: the two would stack two TLS layers."""
    path = tmp_path / "mqttd.ini"
    path.write_text(
        "[listener:s]\n"
        f"endpoint = ssl:8883:privateKey={pki.server.key}:certKey={pki.server.certificate}\n"
        f"certificate = {pki.server.certificate}\nprivate_key = {pki.server.key}\n"
    )
    with pytest.raises(ConfigError, match="already ssl"):
        load_config(str(path))


def test_tlsFileGoneBeforeServiceBuiltIsOneLine(pki: PKI, tmp_path: Path) -> None:
    """
    A key file that disappears between loading the configuration and building the service
    still stops start-up with a ConfigError naming the file, the listener's section and the key.
    """
    from twisted.internet.testing import MemoryReactorClock

    from mqttd.service import makeBrokerService

    key = tmp_path / "server.key"
    key.write_bytes(Path(pki.server.key).read_bytes())
    path = writeConfig(tmp_path, f"certificate = {pki.server.certificate}\nprivate_key = {key}\n")
    config = load_config(str(path))
    key.unlink()
    with pytest.raises(ConfigError) as raised:
        makeBrokerService(config, MemoryReactorClock())
    message = str(raised.value)
    assert str(path) in message and "[listener:secure]" in message and "private_key" in message
