"""
TLS for listeners whose certificates mqttd manages: the C{certificate}, C{private_key},
C{ca_certificates}, C{require_certificate}, C{crl_file}, C{tls_version_min} and C{identity} keys
of a C{[listener:NAME]} section.

The files are read into an OpenSSL context once at start-up (where any problem becomes a
L{TLSFileError} naming the key) and again on L{ServerTLS.reload}; each connection takes the
context current when it was accepted, so a reload never touches a connection already up.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IAddress, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from mqttd.transports import TLSFileError

__all__ = ["TLSFileError"]

Identity = Literal["none", "cn", "san"]

TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The TLS keys of one listener, as paths and choices; nothing is read until L{load}."""

    certificate: str
    private_key: str
    ca_certificates: str | None = None
    require_certificate: bool = False
    crl_file: str | None = None
    tls_version_min: str = "1.2"


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(key, f"cannot read {path}: {e.strerror}") from None


def _certificates(key: str, path: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(key, path))
    except ValueError as e:
        raise TLSFileError(key, f"{path} holds no PEM certificate ({e})") from None
    return certificates


def _privateKey(key: str, path: str) -> PrivateKeyTypes:
    try:
        return load_pem_private_key(_read(key, path), password=None)
    except TypeError:
        # twistd has no terminal to ask for a passphrase once it runs as a daemon.
        raise TLSFileError(key, f"{path} is encrypted; give an unencrypted key") from None
    except ValueError as e:
        raise TLSFileError(key, f"{path} holds no usable PEM private key ({e})") from None


def _crls(key: str, path: str) -> list[x509.CertificateRevocationList]:
    blocks = _CRL_BLOCK.findall(_read(key, path))
    if not blocks:
        raise TLSFileError(key, f"{path} holds no PEM CRL")
    try:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as e:
        raise TLSFileError(key, f"{path} holds a malformed CRL ({e})") from None


def load(settings: TLSSettings) -> SSL.Context:
    """
    Read every file C{settings} names and build the server context.

    @raise TLSFileError: a file is missing, unreadable or malformed, or the key does not match
        the certificate.
    """
    chain = _certificates("certificate", settings.certificate)
    privateKey = _privateKey("private_key", settings.private_key)
    authorities = None
    if settings.ca_certificates is not None:
        authorities = _certificates("ca_certificates", settings.ca_certificates)
    crls = _crls("crl_file", settings.crl_file) if settings.crl_file is not None else []
    # Twisted's options choose the protocol versions, ciphers and session handling; the
    # certificates are installed here, as cryptography objects, which pyOpenSSL prefers.
    context = CertificateOptions(raiseMinimumTo=TLS_VERSIONS[settings.tls_version_min]).getContext()
    try:
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(privateKey)  # type: ignore[arg-type]
        context.check_privatekey()
    except (SSL.Error, TypeError) as e:
        raise TLSFileError(
            "private_key",
            f"{settings.private_key} cannot be used with {settings.certificate} ({e})",
        ) from None
    if authorities is not None:
        store = context.get_cert_store()
        assert store is not None
        for authority in authorities:
            store.add_cert(crypto.X509.from_cryptography(authority))
            # Tells clients with several certificates which CA's to present.
            context.add_client_ca(authority)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if settings.require_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    if crls:
        store = context.get_cert_store()
        assert store is not None
        for crl in crls:
            store.add_crl(crl)
        # Only the client's own certificate is checked: requiring a CRL from every CA up the
        # chain would refuse everyone whose root publishes none.
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The connection creator for one listener's L{TLSMemoryBIOFactory}, holding the current
    context.
    """

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self._context = load(settings)

    def reload(self) -> None:
        """
        Read the files again; new connections use them, live ones keep what they started with.

        @raise TLSFileError: the files cannot be used; the previous context stays in force.
        """
        self._context = load(self.settings)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class IdentityError(Exception):
    """The verified client certificate has no usable identity."""


def _checked(name: str) -> str:
    # MQTT usernames are UTF-8 strings without U+0000 [MQTT-1.5.3-2] and should be without
    # control characters; a name that renders differently from what it compares as (format,
    # surrogate, private-use or unassigned code points) must never select another user's ACL.
    if not name:
        raise IdentityError("the identity is empty")
    for ch in name:
        if unicodedata.category(ch).startswith("C"):
            raise IdentityError(f"the identity {name!r} holds a control character {ch!r}")
    return name


def certificateIdentity(certificate: crypto.X509, identity: Identity) -> str:
    """
    The username a verified client certificate stands for.

    C{cn}: the one common name of the subject.  C{san}: the one DNS name, e-mail address or URI
    in the subjectAltName extension; with several there is no telling which the operator meant.

    @raise IdentityError: there is no such name, more than one, or it is not valid UTF-8 text
        free of control characters.
    """
    try:
        cert = certificate.to_cryptography()
        if identity == "cn":
            names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            where = "common name"
        else:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                raise IdentityError("the certificate has no subjectAltName") from None
            names = [
                *san.get_values_for_type(x509.DNSName),
                *san.get_values_for_type(x509.RFC822Name),
                *san.get_values_for_type(x509.UniformResourceIdentifier),
            ]
            where = "DNS name, e-mail address or URI in subjectAltName"
    except (ValueError, UnicodeError) as e:
        # cryptography decodes names by their ASN.1 type and fails on bytes that are not text.
        raise IdentityError(f"the certificate's names are not valid text ({e})") from None
    if len(names) != 1:
        raise IdentityError(f"expected exactly one {where}, found {len(names)}")
    name = names[0]
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError as e:
            raise IdentityError(f"the identity is not valid UTF-8 ({e})") from None
    return _checked(name)


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    TLS around a factory that may refuse a connection (rate limit, max_connections) by
    building no protocol: the refusal closes the socket, before any handshake, instead of
    leaving a TLS layer with nothing inside it.
    """

    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
