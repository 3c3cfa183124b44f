"""
A lean TCP server transport for the broker's C{tcp:} and C{tcp6:} listeners.

Twisted's C{tcp.Server} costs an idle connection ~0.88 KB of heap: the object with its own
dict (~20 attributes), two log prefix strings built at accept, a bound C{fileno} method, an
empty write list, the Python C{socket.socket} and its address tuple, and the epoll reactor's
tables keyed by two more int objects (C{fileno()} makes a new one per call).  Its C{write}
never sends: it buffers and asks epoll to watch the socket (a system call), and the reactor
calls C{doWrite} on the next turn.

L{Connection} keeps its state in slots, holds the C{_socket.socket} underneath (48 bytes, no
cycle-collector header) and one int for its descriptor, shared by the reactor's tables, and
builds its peer's address and log prefix only when asked.  Its C{write} sends at once when
nothing older waits, and only what the kernel does not take is buffered and handed to the
reactor's write watch, with the back-pressure, half-close and abort behaviour of Twisted's
C{tcp.Server}: the producer registered is paused while more than C{bufferSize} bytes wait and
resumed once they are written, C{loseConnection} closes with a FIN once they are, the peer's
FIN ends a protocol that is not half-closeable and is C{readConnectionLost} for one that is,
C{abortConnection} drops what waits and resets the connection, and errors reach the protocol
as C{connectionLost} on a later turn, never inside C{write}.

L{Port} is Twisted's listening C{tcp.Port} accepting into L{Connection}s; what its accept loop
does not expect (C{EMFILE}, C{EPERM}, ...) goes to Twisted's own loop, which knows how to
recover.  TLS and WebSocket listeners run on it too, their layers being protocols over the
transport; the HTTP listener keeps Twisted's transport.
"""

from __future__ import annotations

import _socket
import socket
import struct
import sys
from errno import EAGAIN, EWOULDBLOCK
from socket import inet_aton, inet_ntoa
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionAborted
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IListeningPort,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReadWriteDescriptor,
    IStreamServerEndpoint,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_LINGER_RESET = struct.pack("ii", 1, 0)
_AF_INET6 = socket.AF_INET6
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def _packPeer(address: tuple[Any, ...]) -> int | tuple[Any, ...]:
    """
    A peer's address as a connection keeps it: an IPv4 one as one int, its address shifted
    left of its port (32 bytes, where the tuple and the port's int take 88); others as given.
    """
    if len(address) == 2:
        try:
            return int.from_bytes(inet_aton(address[0]), "big") << 16 | address[1]
        except OSError:
            pass
    return address


def _ipv4Host(packed: int) -> str:
    """The dotted text of a packed IPv4 address; one string per address, shared (interned)."""
    return sys.intern(inet_ntoa(packed.to_bytes(4, "big")))


def _realAddress(address: tuple[Any, ...]) -> tuple[Any, ...]:
    """An IPv6 socket address with its host as Twisted gives it (scope id as C{%name})."""
    if len(address) == 4:
        host = socket.getnameinfo(address, _NUMERIC)[0]
        return (host, *address[1:])
    return address


# Connection._flags: the state Twisted's transport keeps in eight attributes, in one int.  An
# open connection's usual values (connected, TCP_NODELAY on, a streaming producer: 7) stay
# among the ints CPython keeps cached (up to 256), so the slot costs no int object of its own.
_CONNECTED = 1
# TCP_NODELAY is on: inherited from the listening socket (Linux), so setting it needs no call.
_NODELAY = 2
# The producer registered is a streaming one.
_STREAMING = 4
_DISCONNECTING = 8
_DISCONNECTED = 16
_WRITE_DISCONNECTING = 32
_WRITE_DISCONNECTED = 64
_ABORTING = 128
# This transport has paused its (streaming) producer.
_PRODUCER_PAUSED = 256
# A send() in write() failed: the connection is lost, as its next doRead or doWrite reports (the
# error is consumed by that send, so a later recv() would read a clean end of file instead).
_SEND_FAILED = 512
# write() sends only with _CONNECTED alone of these.
_NOT_WRITABLE = _CONNECTED | _WRITE_DISCONNECTED | _ABORTING | _SEND_FAILED
# Whether an accepted socket has its listening socket's TCP_NODELAY (as Linux's do).
_NODELAY_INHERITED = sys.platform.startswith("linux")


@implementer(
    ITCPTransport,
    ISystemHandle,
    IReadWriteDescriptor,
    IHalfCloseableDescriptor,
    IPushProducer,
    IConsumer,
)
class Connection:
    """
    One accepted TCP connection: Twisted's C{tcp.Server} in behaviour, not in size.

    @ivar _peer: the peer's address: an IPv4 one packed in an int (L{_packPeer}), another
        as the socket gave it.
    """

    log = Logger()

    # Read by Twisted's and mqttd's code that tells transports apart (mqttd.writes, TLS).
    TLS = False
    # Bytes read per recv(), and buffered before the producer is paused: as tcp.Connection.
    bufferSize = 65536

    __slots__ = ("_fd", "_flags", "_out", "_peer", "producer", "protocol", "reactor", "socket")

    def __init__(
        self,
        sock: Any,
        fd: int,
        protocol: IProtocol,
        peer: int | tuple[Any, ...],
        reactor: Any,
        noDelay: bool = False,
    ) -> None:
        """
        @param sock: the accepted socket (a C{_socket.socket} or C{socket.socket}), already
            non-blocking.
        @param fd: its descriptor: this int object is the reactor's key for it too.
        @param peer: the peer's address, as L{_packPeer} gives it.
        @param noDelay: the socket has TCP_NODELAY on already.
        """
        self.socket = sock
        self._fd = fd
        self.protocol: IProtocol | None = protocol
        self._peer = peer
        self.reactor = reactor
        # What the kernel has not taken yet; None while nothing waits.
        self._out: bytearray | None = None
        self.producer: IProducer | None = None
        self._flags = _CONNECTED | _NODELAY if noDelay else _CONNECTED
        reactor.addReader(self)

    def __repr__(self) -> str:
        return f"<{type(self.protocol).__name__} on TCP fd {self._fd}>"

    # Twisted's names for the state, read by code written for its transports.

    @property
    def connected(self) -> bool:
        return bool(self._flags & _CONNECTED)

    @property
    def disconnecting(self) -> bool:
        return bool(self._flags & _DISCONNECTING)

    @property
    def disconnected(self) -> bool:
        return bool(self._flags & _DISCONNECTED)

    @property
    def streamingProducer(self) -> bool:
        return bool(self._flags & _STREAMING)

    @property
    def producerPaused(self) -> bool:
        return bool(self._flags & _PRODUCER_PAUSED)

    # IReadWriteDescriptor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return type(self.protocol).__name__

    def doRead(self) -> Any:
        """Read what the socket has (up to L{bufferSize}) and hand it to the protocol."""
        if self._flags & (_ABORTING | _SEND_FAILED):
            return main.CONNECTION_LOST if self._flags & _SEND_FAILED else None
        try:
            data = self.socket.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)  # type: ignore[union-attr]
        return None

    def doWrite(self) -> Any:
        """The socket is writable: send what waits; then close if that was asked."""
        flags = self._flags
        if flags & (_ABORTING | _SEND_FAILED):
            return main.CONNECTION_LOST if flags & _SEND_FAILED else None
        out = self._out
        if out:
            try:
                sent = self.socket.send(out)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            del out[:sent]
            if out:
                return None
        self._out = None
        self.reactor.removeWriter(self)
        producer = self.producer
        if producer is not None and (not flags & _STREAMING or flags & _PRODUCER_PAUSED):
            self._flags &= ~_PRODUCER_PAUSED
            producer.resumeProducing()  # type: ignore[attr-defined]
        elif flags & _DISCONNECTING:
            return main.CONNECTION_DONE
        elif flags & _WRITE_DISCONNECTING:
            self._flags |= _WRITE_DISCONNECTED
            self._closeWriteConnection()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        """The peer sent FIN: a half-closeable protocol is told so; any other ends here."""
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is None:
            self.connectionLost(reason)
            return
        try:
            p.readConnectionLost()
        except BaseException:
            self.log.failure("readConnectionLost of {protocol!r}", protocol=self.protocol)
            self.connectionLost(Failure())

    def writeConnectionLost(self, reason: Failure) -> None:
        self.connectionLost(reason)

    def connectionLost(self, reason: Failure) -> None:
        """Close the socket and tell the protocol; once only."""
        sock = self.socket
        if sock is None:
            return
        self._flags = (self._flags | _DISCONNECTED) & ~_CONNECTED
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        reactor = self.reactor
        reactor.removeReader(self)
        reactor.removeWriter(self)
        try:
            if reason.check(ConnectionAborted) is None:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                # By convention a linger of 0 makes close() reset the connection.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
        self.socket = None
        self._fd = -1
        self._out = None
        protocol, self.protocol = self.protocol, None
        protocol.connectionLost(reason)  # type: ignore[union-attr]

    # ITransport

    def write(self, data: bytes) -> None:
        """Send C{data} now if nothing older waits; what the kernel does not take waits."""
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if not data or self._flags & _NOT_WRITABLE != _CONNECTED:
            # Nothing more leaves once closed, half-closed, aborted or failed.
            return
        out = self._out
        if out is not None:
            out += data
            self._maybePauseProducer(out)
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Lost on a later turn, as by Twisted's transport: never inside write().
            self._flags |= _SEND_FAILED
            self.reactor.addWriter(self)
            return
        if sent == len(data):
            return
        out = self._out = bytearray(memoryview(data)[sent:])
        self.reactor.addWriter(self)
        self._maybePauseProducer(out)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            if not isinstance(chunk, bytes):
                raise TypeError(f"Data must be bytes, not {type(chunk).__name__}")
        self.write(b"".join(data))

    def _maybePauseProducer(self, out: bytearray) -> None:
        producer = self.producer
        if (
            producer is not None
            and self._flags & (_STREAMING | _PRODUCER_PAUSED) == _STREAMING
            and len(out) > self.bufferSize
        ):
            self._flags |= _PRODUCER_PAUSED
            producer.pauseProducing()  # type: ignore[attr-defined]

    def loseConnection(self) -> None:
        """Close with FIN once what waits has been written (on a later turn in any case)."""
        flags = self._flags
        if flags & (_CONNECTED | _DISCONNECTING | _ABORTING) != _CONNECTED:
            return
        reactor = self.reactor
        if flags & _WRITE_DISCONNECTED:
            reactor.removeReader(self)
            reactor.removeWriter(self)
            self.connectionLost(Failure(main.CONNECTION_DONE))
            return
        reactor.removeReader(self)
        reactor.addWriter(self)
        self._flags |= _DISCONNECTING

    def abortConnection(self) -> None:
        """Drop what waits and reset the connection; the protocol hears of it on the next turn."""
        if self._flags & (_DISCONNECTED | _ABORTING):
            return
        self._flags |= _ABORTING
        reactor = self.reactor
        reactor.removeReader(self)
        reactor.removeWriter(self)
        reactor.callLater(0, self.connectionLost, Failure(ConnectionAborted()))

    def loseWriteConnection(self) -> None:
        """Send FIN once what waits has been written; reading goes on."""
        if self._flags & _ABORTING:
            return
        self._flags |= _WRITE_DISCONNECTING
        self.reactor.addWriter(self)

    def _closeWriteConnection(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is not None:
            try:
                p.writeConnectionLost()
            except BaseException:
                self.log.failure("writeConnectionLost of {protocol!r}", protocol=self.protocol)
                self.connectionLost(Failure())

    def getPeer(self) -> IPv4Address | IPv6Address:
        peer = self._peer
        if isinstance(peer, int):
            return IPv4Address("TCP", _ipv4Host(peer >> 16), peer & 0xFFFF)
        if len(peer) == 2:
            return IPv4Address("TCP", *peer)
        return IPv6Address("TCP", *peer)

    def getHost(self) -> IPv4Address | IPv6Address:
        address = _realAddress(self.socket.getsockname())
        if len(address) == 2:
            return IPv4Address("TCP", *address)
        return IPv6Address("TCP", *address)

    # ITCPTransport

    def getTcpNoDelay(self) -> bool:
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        if enabled and self._flags & _NODELAY:
            # A system call per connection saved: the socket was born with it.
            return
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)
        if enabled:
            self._flags |= _NODELAY
        else:
            self._flags &= ~_NODELAY

    def getTcpKeepAlive(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    # ISystemHandle

    def getHandle(self) -> Any:
        return self.socket

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self.producer}"
                " was never unregistered."
            )
        if self._flags & _DISCONNECTED:
            producer.stopProducing()
            return
        self.producer = producer
        if streaming:
            self._flags |= _STREAMING
        else:
            self._flags &= ~_STREAMING
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self.producer = None
        if self._flags & (_CONNECTED | _DISCONNECTING) == _CONNECTED | _DISCONNECTING:
            self.reactor.addWriter(self)

    # IPushProducer: reading from the socket

    def pauseProducing(self) -> None:
        self.reactor.removeReader(self)

    def resumeProducing(self) -> None:
        if self._flags & (_CONNECTED | _DISCONNECTING | _ABORTING) == _CONNECTED:
            self.reactor.addReader(self)

    def stopProducing(self) -> None:
        self.loseConnection()


class Port(tcp.Port):
    """
    A listening TCP port whose connections are L{Connection}s.  Twisted's listening, pausing
    (C{pauseProducing} stops accepting), address and shutdown code is kept; only the accept
    loop of the common case is its own.

    @ivar noDelay: set TCP_NODELAY on the listening socket, which (on Linux) its connections
        inherit: their C{setTcpNoDelay(True)} then costs no system call.
    """

    noDelay = False
    # Whether accepted sockets are known to have TCP_NODELAY.
    _acceptedNoDelay = False

    def startListening(self) -> None:
        tcp.Port.startListening(self)
        if self.noDelay and _NODELAY_INHERITED:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return
            self._acceptedNoDelay = True

    @staticmethod
    def transport(  # type: ignore[override]
        skt: socket.socket,
        protocol: IProtocol,
        addr: tuple[Any, ...],
        server: object,
        sessionno: int,
        reactor: Any,
    ) -> Connection:
        # How Twisted's own accept loop (the rare cases, see doRead) builds a connection.
        skt.setblocking(False)
        return Connection(skt, skt.fileno(), protocol, _packPeer(addr), reactor)

    def doRead(self) -> None:
        """Accept what waits, up to C{numberAccepts}: a L{Connection} and protocol each."""
        try:
            listening: Any = self.socket
            accept = listening._accept
            factory: Any = self.factory
            reactor = self.reactor
            family = self.addressFamily
            addressType = self._addressType
            numberAccepts = self.numberAccepts
            noDelay = self._acceptedNoDelay
            accepted = 0
            while accepted < numberAccepts:
                try:
                    fd, addr = accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    if e.errno in (EWOULDBLOCK, EAGAIN):
                        break
                    # EMFILE (with its reserved-descriptor recovery), EPERM from netfilter, ...
                    tcp.Port.doRead(self)
                    return
                accepted += 1
                sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
                sock.setblocking(False)
                if family == _AF_INET6:
                    addr = _realAddress(addr)
                protocol = factory.buildProtocol(addressType("TCP", *addr))
                if protocol is None:
                    sock.close()
                    continue
                transport = Connection(sock, fd, protocol, _packPeer(addr), reactor, noDelay)
                protocol.makeConnection(transport)
            if accepted == numberAccepts:
                self.numberAccepts += 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            self._logger.failure("accepting a connection on {port!r}", port=self)


def leanReactor(reactor: object) -> bool:
    """Whether C{reactor} can run L{Port}s: one of Twisted's POSIX reactors (epoll, poll...)."""
    return isinstance(reactor, PosixReactorBase)


def listenTCP(
    reactor: Any,
    port: int,
    factory: IProtocolFactory,
    backlog: int = 50,
    interface: str = "",
    noDelay: bool = False,
) -> Port:
    """
    L{IReactorTCP.listenTCP} with L{Port}.

    @param noDelay: L{Port.noDelay}.
    @raise CannotListenError: the port cannot be bound.
    """
    p = Port(port, factory, backlog, interface, reactor)
    p.noDelay = noDelay
    p.startListening()
    return p


def adoptPort(reactor: Any, fd: int, family: socket.AddressFamily, factory: Any) -> Port:
    """
    L{IReactorSocket.adoptStreamPort} with L{Port}: listen on a copy of the bound, listening,
    non-blocking socket C{fd} (the caller closes its own).
    """
    p = Port._fromListeningDescriptor(reactor, fd, family, factory)
    p.startListening()
    return p


@implementer(IStreamServerEndpoint)
class TCPServerEndpoint:
    """A C{tcp:} or C{tcp6:} endpoint listening with L{Port}."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        backlog: int = 50,
        interface: str = "",
        noDelay: bool = False,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface
        self.noDelay = noDelay

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            port = listenTCP(
                self.reactor, self.port, factory, self.backlog, self.interface, self.noDelay
            )
        except CannotListenError as e:
            return fail(e)
        return succeed(port)
