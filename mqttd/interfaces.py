"""
The seams of mqttd.

Everything the broker core asks of the outside world, and everything the
outside world may replace, is an interface here.  Each method's docstring is
its contract: what it returns, whether that may be a L{Deferred}, who may raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zope.interface import Attribute, Interface


class IClientConnection(Interface):
    """
    The broker's view of one live client connection.

    Implemented by the transport-facing protocol; the broker and sessions use
    only this, so they never learn whether bytes travel over TCP, TLS or
    WebSocket.
    """

    protocolLevel = Attribute("The MQTT protocol level the client connected with (3 or 4).")
    clientAddress = Attribute("A printable peer address for logs.")
    paused = Attribute(
        "True while the transport's write buffer is full.  Sessions queue"
        " instead of writing while it is set, and are told by"
        " L{mqttd.session.Session.resume} when it clears."
    )

    def sendPacket(packet: Any) -> None:
        """
        Encode and write one packet.  Never raises for a closed connection.
        """

    def writeSequence(chunks: Sequence[bytes]) -> None:
        """
        Write already-encoded bytes.  Never raises for a closed connection.
        """

    def close(reason: str) -> None:
        """
        Close the connection, logging C{reason}.  The session is detached by
        the caller first, so the connection's loss does not touch it again.
        """


class IMessageStore(Interface):
    """
    Durable broker state.

    The broker keeps live state in memory and writes through to the store at
    the points below; on start it restores from the store before any listener
    accepts a connection.  Methods may return a value or a L{Deferred} firing
    with it; the broker waits for the result where ordering matters (restore).
    A store raises (or fails its Deferred) only for errors the operator must
    see; the broker logs them and carries on with its in-memory state.
    """

    def restore() -> Any:
        """
        Return (or fire with) a tuple C{(retained, sessions)}: an iterable of
        retained L{mqttd.message.Message}s and an iterable of
        L{mqttd.session.SessionState} for every persistent session stored.
        """

    def retainedSet(message: Any) -> Any:
        """
        Store C{message} as the retained message of its topic, replacing any.
        """

    def retainedDeleted(topic: str) -> Any:
        """
        Forget the retained message of C{topic}, if any.
        """

    def sessionSaved(state: Any) -> Any:
        """
        Store the L{mqttd.session.SessionState} of a persistent session,
        replacing any earlier state of the same client identifier.
        """

    def sessionDeleted(clientId: str) -> Any:
        """
        Forget the session of C{clientId}, if any.
        """
