"""
C{scram}: MQTT 5.0 enhanced authentication with SCRAM-SHA-256 (RFC 5802, RFC 7677), the
Authentication Method C{SCRAM-SHA-256}.

The client's CONNECT carries the client-first message as its Authentication Data; the broker
answers AUTH 0x18 with the server-first message (nonce, salt, iteration count); the client's AUTH
0x18 carries the client-final message with its proof; CONNACK 0x00 carries the server-final
message (the server signature the client verifies), or the client gets CONNACK 0x86.  Neither the
password nor anything that lets a listener log in travels on the wire.  Channel binding is not
offered; user names are taken as sent (no SASLprep).

Options (C{[plugin:scram]}): C{file}, the credentials file, relative to the configuration file's
directory.  Each line is C{user:salt:iterations:storedKey:serverKey}, salt and keys in base64, as
C{mqttd scram add FILE USER PASSWORD} writes it; blank lines and lines starting with C{#} are
skipped.  Only the derived keys are kept, so the file does not give the passwords away, and the
slow key derivation runs when a user is added, never per login.  SIGHUP re-reads the file; a file
that cannot be read or parsed then leaves the previous users in place.

A CONNECT without an Authentication Method is not this plugin's to judge: it abstains.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.files import replaceUserLine
from mqttd.interfaces import (
    Allow,
    Continue,
    Credentials,
    Deny,
    IEnhancedAuthenticator,
    IPluginFactory,
    IReloadable,
    IUserStore,
    PluginConfigError,
    PluginContext,
    ReloadError,
)
from mqttd.plugin_loader import checkOptions

METHOD = "SCRAM-SHA-256"
BAD_USERNAME_OR_PASSWORD = 4
DEFAULT_ITERATIONS = 4096  # RFC 7677's minimum
SALT_BYTES = 16
NONCE_BYTES = 18


class ScramFileError(Exception):
    """A line of a SCRAM credentials file cannot be used."""


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """One user's stored SCRAM keys (RFC 5802 section 3)."""

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes

    def encode(self) -> str:
        """The C{salt:iterations:storedKey:serverKey} part of a file line."""
        b64 = base64.b64encode
        return (
            f"{b64(self.salt).decode()}:{self.iterations}:"
            f"{b64(self.storedKey).decode()}:{b64(self.serverKey).decode()}"
        )


def makeCredential(
    password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredential:
    """Derive the stored keys of C{password}, with a random salt unless given one."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    clientKey = _hmac(salted, b"Client Key")
    return ScramCredential(
        salt, iterations, hashlib.sha256(clientKey).digest(), _hmac(salted, b"Server Key")
    )


def parseScramFile(text: str) -> dict[str, ScramCredential]:
    """
    The users of a SCRAM credentials file.

    @raise ScramFileError: naming the first bad line.
    """
    users: dict[str, ScramCredential] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 5 or not parts[0] or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ScramFileError(
                f"line {number}: expected user:salt:iterations:storedKey:serverKey"
            )
        try:
            salt, storedKey, serverKey = (
                base64.b64decode(p, validate=True) for p in (parts[1], parts[3], parts[4])
            )
        except binascii.Error as e:
            raise ScramFileError(f"line {number} ({parts[0]}): bad base64: {e}") from None
        users[parts[0]] = ScramCredential(salt, int(parts[2]), storedKey, serverKey)
    return users


def readScramFile(path: str) -> dict[str, ScramCredential]:
    """
    @raise ScramFileError: the file cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScramFileError(f"cannot read {path}: {e}") from None
    return parseScramFile(text)


def _attributes(message: str) -> dict[str, str]:
    """The C{a=value} attributes of a SCRAM message; L{ValueError} if malformed."""
    result: dict[str, str] = {}
    for part in message.split(","):
        name, equals, value = part.partition("=")
        if len(name) != 1 or not equals:
            raise ValueError(f"bad attribute {part!r}")
        result.setdefault(name, value)
    return result


def _saslName(value: str) -> str:
    # RFC 5802 section 5.1: ',' and '=' are sent as =2C and =3D, and no other '=' may appear.
    unescaped = value.replace("=2C", ",").replace("=3D", "=")
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise ValueError("bad escape in user name")
    return unescaped


@dataclass(frozen=True, slots=True)
class _Exchange:
    """What the server-first step keeps for the client-final one."""

    username: str
    credential: ScramCredential
    known: bool
    gs2Header: str
    clientFirstBare: str
    serverFirst: str
    nonce: str


@implementer(IEnhancedAuthenticator, IReloadable, IUserStore)
class ScramAuthenticator:
    """The SCRAM-SHA-256 server side, over the users of one credentials file."""

    authenticationMethod = METHOD

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = readScramFile(path)
        # Keys the made-up credentials of unknown users, so that they look like real ones
        # (the same salt every time) and the exchange does not say which users exist.
        self._secret = os.urandom(32)

    def authenticate(self, credentials: Credentials) -> None:
        return None

    def startAuthentication(
        self, credentials: Credentials, authData: bytes | None
    ) -> Continue | Deny:
        try:
            message = (authData or b"").decode("utf-8")
            # gs2-header: "n" (no channel binding), "y" (client could but thinks we cannot),
            # then an optional authorization identity.
            flag, comma, rest = message.partition(",")
            authzid, comma2, bare = rest.partition(",")
            if flag not in ("n", "y") or not comma or not comma2:
                raise ValueError("bad or unsupported GS2 header")
            attributes = _attributes(bare)
            if "m" in attributes:
                raise ValueError("mandatory extension")
            username = _saslName(attributes["n"])
            clientNonce = attributes["r"]
            if authzid and (not authzid.startswith("a=") or _saslName(authzid[2:]) != username):
                raise ValueError("authorization identity differs from the user")
        except (UnicodeDecodeError, KeyError, ValueError) as e:
            return Deny(BAD_USERNAME_OR_PASSWORD, f"SCRAM client-first message refused: {e}")
        if credentials.username is not None and credentials.username != username:
            return Deny(BAD_USERNAME_OR_PASSWORD, "SCRAM user differs from the CONNECT's")
        credential = self.users.get(username)
        known = credential is not None
        if credential is None:
            fake = _hmac(self._secret, username.encode("utf-8"))
            credential = ScramCredential(fake[:SALT_BYTES], DEFAULT_ITERATIONS, fake, fake)
        nonce = clientNonce + base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii")
        salt = base64.b64encode(credential.salt).decode("ascii")
        serverFirst = f"r={nonce},s={salt},i={credential.iterations}"
        state = _Exchange(
            username, credential, known, f"{flag},{authzid},", bare, serverFirst, nonce
        )
        return Continue(serverFirst.encode("utf-8"), state)

    def continueAuthentication(self, state: _Exchange, authData: bytes | None) -> Allow | Deny:
        try:
            message = (authData or b"").decode("utf-8")
            withoutProof, separator, proofText = message.rpartition(",p=")
            if not separator:
                raise ValueError("no proof")
            attributes = _attributes(withoutProof)
            channelBinding = base64.b64decode(attributes["c"], validate=True)
            proof = base64.b64decode(proofText, validate=True)
            nonce = attributes["r"]
        except (UnicodeDecodeError, KeyError, ValueError, binascii.Error) as e:
            return Deny(BAD_USERNAME_OR_PASSWORD, f"SCRAM client-final message refused: {e}")
        if channelBinding != state.gs2Header.encode("utf-8") or nonce != state.nonce:
            return Deny(BAD_USERNAME_OR_PASSWORD, "SCRAM channel binding or nonce mismatch")
        authMessage = f"{state.clientFirstBare},{state.serverFirst},{withoutProof}".encode()
        credential = state.credential
        signature = _hmac(credential.storedKey, authMessage)
        if len(proof) != len(signature):
            return Deny(BAD_USERNAME_OR_PASSWORD, "SCRAM proof of the wrong length")
        clientKey = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        # Constant time, so response timing reveals nothing of how much of a guess was right.
        matches = hmac.compare_digest(hashlib.sha256(clientKey).digest(), credential.storedKey)
        if not (matches and state.known):
            return Deny(BAD_USERNAME_OR_PASSWORD, f"SCRAM proof of {state.username!r} refused")
        verifier = base64.b64encode(_hmac(credential.serverKey, authMessage))
        return Allow(state.username, b"v=" + verifier)

    def usernames(self) -> list[str]:
        return sorted(self.users)

    def setPassword(self, username: str, password: str) -> None:
        if not username or ":" in username or "\n" in username:
            raise ValueError("a user name cannot be empty or hold ':' or a line break")
        credential = makeCredential(password.encode("utf-8"))
        replaceUserLine(self.path, username, f"{username}:{credential.encode()}")
        self.users = {**self.users, username: credential}

    def deleteUser(self, username: str) -> bool:
        if username not in self.users:
            return False
        replaceUserLine(self.path, username, None)
        self.users = {u: c for u, c in self.users.items() if u != username}
        return True

    def reload(self) -> None:
        try:
            users = readScramFile(self.path)
        except ScramFileError as e:
            raise ReloadError(_naming(self.path, str(e))) from None
        self.users = users


@implementer(IPlugin, IPluginFactory)
class _Factory:
    name = "scram"

    def build(self, options: Mapping[str, str], context: PluginContext) -> ScramAuthenticator:
        checkOptions(options, required=("file",))
        try:
            return ScramAuthenticator(context.path(options["file"]))
        except ScramFileError as e:
            raise PluginConfigError("file", str(e)) from None


scram = _Factory()


def _naming(path: str, why: str) -> str:
    # Read errors name the file already; a line's error does not.
    return why if path in why else f"{path}: {why}"
