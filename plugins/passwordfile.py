"""
C{passwordfile}: authenticates against a mosquitto C{password_file}, read unchanged.

Each line is C{user:hash}.  mosquitto's two hash forms are accepted:
C{$6$SALT$HASH} (SHA-512 over the password followed by the salt; mosquitto 1.6 and earlier) and
C{$7$ITERATIONS$SALT$HASH} (PBKDF2-HMAC-SHA512; mosquitto 2.0's default and what
C{mqttd passwd} writes), salt and hash in base64.  Blank lines and lines starting with C{#} are
skipped.

Options (C{[plugin:passwordfile]}): C{file}, the password file, relative to the configuration
file's directory.

A client without a user name or password, or whose user is not in the file, is not this plugin's
to judge: it abstains, so the next authenticator, or the listener's C{allow_anonymous}, decides.
A known user with a wrong password is refused.  An unknown user's password is still hashed,
against a dummy entry of the file's most common hash form, so that the time an answer takes does
not tell which user names exist; the broker answers both failed logins alike (CONNACK 5, at
MQTT 5.0 0x86).  SIGHUP re-reads the file; a file that
cannot be read or parsed then leaves the previous users in place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.files import replaceUserLine
from mqttd.interfaces import (
    Allow,
    Credentials,
    Deny,
    IAuthenticator,
    IPluginFactory,
    IReloadable,
    IUserStore,
    PluginConfigError,
    PluginContext,
    ReloadError,
)
from mqttd.plugin_loader import checkOptions

BAD_USERNAME_OR_PASSWORD = 4
SALT_BYTES = 12
DEFAULT_ITERATIONS = 101  # mosquitto_passwd's, so files it and mqttd write look alike


class PasswordFileError(Exception):
    """A line of a password file cannot be used."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One user's stored hash."""

    iterations: int | None  # None: the $6$ form
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        if self.iterations is None:
            computed = hashlib.sha512(password + self.salt).digest()
        else:
            computed = hashlib.pbkdf2_hmac(
                "sha512", password, self.salt, self.iterations, len(self.digest)
            )
        # Constant time, so response timing reveals nothing of how much of a guess was right.
        return hmac.compare_digest(computed, self.digest)

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        if self.iterations is None:
            return f"$6${salt}${digest}"
        return f"$7${self.iterations}${salt}${digest}"


def hashPassword(password: bytes, iterations: int = DEFAULT_ITERATIONS) -> PasswordHash:
    """A new C{$7$} hash of C{password} with a random salt."""
    salt = os.urandom(SALT_BYTES)
    return PasswordHash(
        iterations, salt, hashlib.pbkdf2_hmac("sha512", password, salt, iterations, 64)
    )


def dummyHash(hashes: Iterable[PasswordHash]) -> PasswordHash:
    """
    A hash no password matches, of the form (scheme, iterations, length) most of C{hashes} have,
    so that checking a password against it costs what checking one against a real entry does.
    """
    forms = Counter((h.iterations, len(h.salt), len(h.digest)) for h in hashes)
    iterations, saltLength, digestLength = (
        forms.most_common(1)[0][0] if forms else (DEFAULT_ITERATIONS, SALT_BYTES, 64)
    )
    return PasswordHash(iterations, os.urandom(saltLength), os.urandom(digestLength))


def parseHash(text: str) -> PasswordHash:
    """
    @raise PasswordFileError: C{text} is neither a C{$6$} nor a C{$7$} hash.
    """
    parts = text.split("$")
    try:
        if len(parts) == 4 and parts[:2] == ["", "6"]:
            return PasswordHash(None, base64.b64decode(parts[2]), base64.b64decode(parts[3]))
        if len(parts) == 5 and parts[:2] == ["", "7"] and parts[2].isdigit():
            iterations = int(parts[2])
            if iterations < 1:
                raise PasswordFileError("iterations must be positive")
            return PasswordHash(iterations, base64.b64decode(parts[3]), base64.b64decode(parts[4]))
    except binascii.Error as e:
        raise PasswordFileError(f"bad base64: {e}") from None
    raise PasswordFileError("not a $6$ or $7$ hash (plain-text passwords are not accepted)")


def parsePasswordFile(text: str) -> dict[str, PasswordHash]:
    """
    The users of a mosquitto password file.

    @raise PasswordFileError: naming the first bad line.
    """
    users: dict[str, PasswordHash] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # User names cannot hold ':', hashes cannot either, so the split is unambiguous.
        user, colon, hashText = line.partition(":")
        if not colon or not user:
            raise PasswordFileError(f"line {number}: expected user:hash")
        try:
            users[user] = parseHash(hashText)
        except PasswordFileError as e:
            raise PasswordFileError(f"line {number} ({user}): {e}") from None
    return users


def readPasswordFile(path: str) -> dict[str, PasswordHash]:
    """
    @raise PasswordFileError: the file cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PasswordFileError(f"cannot read {path}: {e}") from None
    return parsePasswordFile(text)


@implementer(IAuthenticator, IReloadable, IUserStore)
class PasswordFileAuthenticator:
    """Checks user names and passwords against the users of one password file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = readPasswordFile(path)
        self._dummy = dummyHash(self.users.values())

    def authenticate(self, credentials: Credentials) -> Allow | Deny | None:
        if credentials.username is None or credentials.password is None:
            return None
        stored = self.users.get(credentials.username)
        if stored is None:
            # The work a known user's check costs, so that timing does not tell them apart.
            self._dummy.matches(credentials.password)
            return None
        if stored.matches(credentials.password):
            return Allow(credentials.username)
        return Deny(BAD_USERNAME_OR_PASSWORD, "wrong password")

    def usernames(self) -> list[str]:
        return sorted(self.users)

    def setPassword(self, username: str, password: str) -> None:
        if not username or ":" in username or "\n" in username:
            raise ValueError("a user name cannot be empty or hold ':' or a line break")
        hashed = hashPassword(password.encode("utf-8"))
        replaceUserLine(self.path, username, f"{username}:{hashed.encode()}")
        self.users = {**self.users, username: hashed}

    def deleteUser(self, username: str) -> bool:
        if username not in self.users:
            return False
        replaceUserLine(self.path, username, None)
        self.users = {u: h for u, h in self.users.items() if u != username}
        return True

    def reload(self) -> None:
        try:
            users = readPasswordFile(self.path)
        except PasswordFileError as e:
            raise ReloadError(_naming(self.path, str(e))) from None
        self.users = users
        self._dummy = dummyHash(users.values())


@implementer(IPlugin, IPluginFactory)
class _Factory:
    name = "passwordfile"

    def build(
        self, options: Mapping[str, str], context: PluginContext
    ) -> PasswordFileAuthenticator:
        checkOptions(options, required=("file",))
        try:
            return PasswordFileAuthenticator(context.path(options["file"]))
        except PasswordFileError as e:
            raise PluginConfigError("file", str(e)) from None


passwordfile = _Factory()


def _naming(path: str, why: str) -> str:
    # Read errors name the file already; a line's error does not.
    return why if path in why else f"{path}: {why}"
