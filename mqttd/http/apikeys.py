"""
API keys: the bearer tokens programs present to the HTTP API.

A key is made by C{mqttd apikey add NAME}, which prints the token once; the file keeps only its
SHA-256, one C{name:role:digest} line per key.  A token is 32 random bytes, so a fast hash is
enough: there is no password to guess from the digest, and no salt is needed to tell keys apart.
The file is read again whenever it changes, so a key added or deleted by the command counts at
the next request, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from mqttd.files import replaceUserLine

TOKEN_PREFIX = "mqttd_"
ROLES = ("admin", "viewer")


class ApiKeyError(Exception):
    """The key file, or a key's name or role, cannot be used."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """
    @ivar role: C{admin} may do anything; C{viewer} may only read.
    @ivar digest: the hex SHA-256 of the token.
    """

    name: str
    role: str
    digest: str


def newToken() -> str:
    """A fresh secret, printable and URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digestOf(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parseKeyFile(text: str) -> dict[str, ApiKey]:
    """
    @raise ApiKeyError: naming the first bad line.
    """
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[0] or parts[1] not in ROLES or len(parts[2]) != 64:
            raise ApiKeyError(f"line {number}: expected name:admin|viewer:sha256-hex")
        keys[parts[0]] = ApiKey(parts[0], parts[1], parts[2].lower())
    return keys


def checkName(name: str) -> str:
    if not name or any(c in name for c in ":\n\r#") or name != name.strip():
        raise ApiKeyError(f"a key name cannot be empty or hold ':' or '#', got {name!r}")
    return name


class ApiKeys:
    """The keys of one file, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}
        self._byDigest: dict[str, ApiKey] = {}
        self.keys()

    def keys(self) -> dict[str, ApiKey]:
        """
        The keys as the file has them now (none when it does not exist).

        @raise ApiKeyError: the file cannot be read or parsed.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        except OSError as e:
            raise ApiKeyError(f"cannot read {self.path}: {e.strerror}") from None
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp or stamp is None:
            keys: dict[str, ApiKey] = {}
            if stamp is not None:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        keys = parseKeyFile(f.read())
                except (OSError, UnicodeDecodeError) as e:
                    raise ApiKeyError(f"cannot read {self.path}: {e}") from None
            self._keys = keys
            self._byDigest = {key.digest: key for key in keys.values()}
            self._stamp = stamp
        return self._keys

    def check(self, token: str) -> ApiKey | None:
        """The key C{token} is, or L{None}."""
        digest = digestOf(token)
        self.keys()
        key = self._byDigest.get(digest)
        # The dictionary found it by a digest the caller cannot steer; compare once more in
        # constant time anyway, so the answer never depends on how much of a digest matched.
        if key is not None and hmac.compare_digest(key.digest, digest):
            return key
        return None

    def add(self, name: str, role: str = "admin") -> str:
        """
        Create (or replace) the key C{name}; return its token, which is nowhere else.

        @raise ApiKeyError: a bad name or role.
        @raise OSError: the file cannot be written.
        """
        checkName(name)
        if role not in ROLES:
            raise ApiKeyError(f"a role is one of {', '.join(ROLES)}, got {role!r}")
        token = newToken()
        replaceUserLine(self.path, name, f"{name}:{role}:{digestOf(token)}")
        return token

    def delete(self, name: str) -> bool:
        """
        @return: whether there was such a key.
        @raise OSError: the file cannot be written.
        """
        if name not in self.keys():
            return False
        replaceUserLine(self.path, name, None)
        return True
