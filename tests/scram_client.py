"""
The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), written here from the RFC and apart from
the broker's plugin, for the enhanced authentication tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


class ScramClient:
    """One SCRAM-SHA-256 login: L{first}, then L{final} on the server-first message."""

    def __init__(self, user: str, password: str, nonce: str = "rOprNGfwEbeRWgbNEkqO") -> None:
        self.password = password.encode("utf-8")
        self.bare = f"n={user},r={nonce}"
        self.nonce = nonce
        self.serverSignature = b""

    def first(self) -> bytes:
        return ("n,," + self.bare).encode()

    def final(self, serverFirst: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in serverFirst.decode().split(","))
        assert fields["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password, base64.b64decode(fields["s"]), int(fields["i"])
        )
        clientKey = _hmac(salted, b"Client Key")
        withoutProof = f"c=biws,r={fields['r']}"
        authMessage = f"{self.bare},{serverFirst.decode()},{withoutProof}".encode()
        signature = _hmac(hashlib.sha256(clientKey).digest(), authMessage)
        proof = bytes(a ^ b for a, b in zip(clientKey, signature, strict=True))
        self.serverSignature = _hmac(_hmac(salted, b"Server Key"), authMessage)
        return f"{withoutProof},p={base64.b64encode(proof).decode()}".encode()

    def verified(self, serverFinal: bytes | None) -> bool:
        """Whether the server-final message proves the server knew the user's keys."""
        return serverFinal == b"v=" + base64.b64encode(self.serverSignature)
