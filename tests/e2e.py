"""
End-to-end helpers: the broker in this process on a real TCP socket, and
real clients (paho-mqtt, or a raw socket for what paho will not send).

The global Twisted reactor runs in one daemon thread for the whole test
session (L{start_reactor}); each test gets its own L{Broker} listening on an
ephemeral port of 127.0.0.1 (L{start_broker}), built and torn down inside
the reactor thread with L{blockingCallFromThread}.  Every wait is bounded
(L{TIMEOUT}) so that a broken broker fails a test instead of hanging it;
no test asserts on how long anything took.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from mqttd.broker import Broker
from mqttd.config import BrokerConfig, ListenerConfig
from mqttd.dispatch import installLeanDispatch
from mqttd.listening import serverEndpoint
from mqttd.message import Message
from mqttd.protocol import MQTTServerFactory, MQTTServerProtocol

MQTTv31 = MQTTProtocolVersion.MQTTv31
MQTTv311 = MQTTProtocolVersion.MQTTv311
MQTTv5 = MQTTProtocolVersion.MQTTv5

# Upper bound of every wait: only there so a failing broker cannot hang the run.
TIMEOUT = 5.0
HOST = "127.0.0.1"
LISTENER = ListenerConfig(name="e2e", endpoint=f"tcp:0:interface={HOST}", allow_anonymous=True)

reactor: Any = _reactor
T = TypeVar("T")


# The reactor thread


class _ReactorThread:
    """The global reactor, run once per test session in a daemon thread."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._observer = cast(ILogObserver, self._observe)
        # Errors logged inside the reactor (unhandled exceptions in protocol
        # callbacks, failed Deferreds); a test's broker fixture fails on any.
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _observe(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            text = formatEvent(event)
            failure = event.get("log_failure")
            if isinstance(failure, Failure):
                text += "\n" + failure.getTraceback()
            with self._lock:
                self.errors.append(text)

    def takeErrors(self) -> list[str]:
        with self._lock:
            errors, self.errors = self.errors, []
        return errors

    def start(self) -> None:
        if self.thread is not None:
            return
        globalLogPublisher.addObserver(self._observer)
        # As twistd mqttd runs it: the tests exercise the dispatch and turn ends of production.
        installLeanDispatch(reactor)
        self.thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="twisted-reactor",
            daemon=True,
        )
        self.thread.start()
        # Returns once the reactor is running and processing calls.
        blockingCallFromThread(reactor, lambda: None)

    def stop(self) -> None:
        if self.thread is None:
            return
        reactor.callFromThread(reactor.stop)
        self.thread.join(TIMEOUT)
        globalLogPublisher.removeObserver(self._observer)
        self.thread = None


REACTOR = _ReactorThread()


def start_reactor() -> None:
    """Run the global reactor in a daemon thread, once per process."""
    REACTOR.start()


def stop_reactor() -> None:
    REACTOR.stop()


def in_reactor(f: Callable[..., Any], *args: Any) -> Any:
    """
    Call C{f(*args)} in the reactor thread and return its result, waiting
    for it if it is a L{Deferred}.
    """
    return blockingCallFromThread(reactor, f, *args)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll C{condition} until it holds; fail loudly after C{timeout}."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# The broker


class _TrackingFactory(MQTTServerFactory):
    """Remembers every live connection so that teardown can close it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.live: dict[MQTTServerProtocol, Deferred[None]] = {}
        self.accepted = 0

    def buildProtocol(self, addr: IAddress) -> MQTTServerProtocol | None:  # type: ignore[override]
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        self.accepted += 1
        lost: Deferred[None] = Deferred()
        self.live[protocol] = lost
        original = protocol.connectionLost

        def connectionLost(reason: Failure = connectionDone) -> None:
            try:
                original(reason)
            finally:
                self.live.pop(protocol, None)
                lost.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        return protocol


@dataclass
class RunningBroker:
    """A broker listening on C{host}:C{port}; touch C{broker} only via L{call}."""

    broker: Broker
    factory: _TrackingFactory
    listening: IListeningPort
    host: str
    port: int

    def call(self, f: Callable[..., T], *args: Any) -> T:
        result: T = in_reactor(f, *args)
        return result

    def is_connected(self, client_id: str) -> bool:
        """Whether the broker has a live connection for C{client_id}."""

        def check() -> bool:
            session = self.broker.sessions.get(client_id)
            return session is not None and session.connection is not None

        return self.call(check)

    def wait_gone(self, client_id: str) -> None:
        """Wait until the broker has handled the loss of C{client_id}'s connection."""
        wait_until(lambda: not self.is_connected(client_id), f"{client_id!r} to be disconnected")

    def inject(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Route a message as the broker itself would (e.g. into C{$SYS})."""
        self.call(self.broker.route, Message(topic, payload, qos, retain))

    def stop(self) -> None:
        in_reactor(self._shutdown)

    def _shutdown(self) -> Deferred[Any]:
        stopped = maybeDeferred(self.listening.stopListening)
        lost = list(self.factory.live.values())
        for protocol in list(self.factory.live):
            protocol.transport.abortConnection()  # type: ignore[union-attr]
        done: Deferred[Any] = DeferredList([stopped, *lost], fireOnOneErrback=True)
        done.addCallback(lambda _: self.broker.stop())
        return done


def start_broker(
    *,
    listener: ListenerConfig = LISTENER,
    plugins: Callable[[], dict[str, Any]] | None = None,
    transport: Literal["lean", "twisted"] = "lean",
    **overrides: Any,
) -> RunningBroker:
    """
    A fresh broker, C{BrokerConfig} defaults but for C{overrides}, on an ephemeral port, with no
    C{$SYS} tree unless C{sys_interval} is among them: other tests see only their own messages.

    @param listener: the listener's settings (its endpoint must be an ephemeral port).
    @param plugins: called in the reactor thread for the L{Broker}'s plugin keyword arguments
        (C{authenticators}, C{authorizers}, ...).
    @param transport: C{lean}, the listener's endpoint as C{twistd mqttd} makes it
        (L{serverEndpoint}: mqttd's lean TCP transport), or C{twisted}, Twisted's own
        transport for that endpoint string.
    """
    start_reactor()

    def setup() -> Deferred[RunningBroker]:
        extra = plugins() if plugins is not None else {}
        config = replace(BrokerConfig(), **{"sys_interval": 0, **overrides})
        broker = Broker(config, reactor, **extra)
        factory = _TrackingFactory(broker, listener, reactor)
        d: Deferred[Any] = broker.start()
        endpoint = (
            serverEndpoint(reactor, listener)
            if transport == "lean"
            else serverFromString(reactor, listener.listenEndpoint())
        )
        d.addCallback(lambda _: endpoint.listen(factory))

        def listening(port: IListeningPort) -> RunningBroker:
            address = port.getHost()
            return RunningBroker(broker, factory, port, address.host, address.port)  # type: ignore[attr-defined]

        d.addCallback(listening)
        return d

    running: RunningBroker = in_reactor(setup)
    return running


# paho-mqtt clients


@dataclass(frozen=True)
class Received:
    """One PUBLISH as a client received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class WillSpec:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    # MQTTv5 Will Properties (paho's PacketTypes.WILLMESSAGE).
    properties: Properties | None = None


class Client:
    """
    A connected paho-mqtt client with its network loop in its own thread.

    Automatic reconnection is off, so a connection the broker closes stays
    closed (L{disconnected} is set) and cannot take its client id back.
    """

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        clean: bool = True,
        protocol: MQTTProtocolVersion = MQTTv311,
        will: WillSpec | None = None,
        keepalive: int = 60,
        host: str = HOST,
        transport: Literal["tcp", "websockets"] = "tcp",
        setup: Callable[[paho.Client], object] | None = None,
        properties: Properties | None = None,
    ) -> None:
        """
        @param clean: Clean Session, or at MQTTv5 Clean Start.
        @param transport: paho's: C{"tcp"} or C{"websockets"}.
        @param setup: called with the paho client before it connects, for TLS and WebSocket
            options (C{tls_set}, C{ws_set_options}).
        @param properties: at MQTTv5, the CONNECT properties.
        """
        self.client_id = client_id
        # At MQTTv5: what CONNACK and the broker's DISCONNECT (if any) said.
        self.connack_properties: Any = None
        self.disconnect_reason: int | None = None
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.connack_code: int | None = None
        self._subacks: dict[int, list[int]] = {}
        self._subacked = threading.Condition()

        self.paho = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # paho refuses Clean Session at 5.0, where Clean Start is given to connect().
            clean_session=None if protocol == MQTTv5 else clean,
            protocol=protocol,
            reconnect_on_failure=False,
            transport=transport,
        )
        self.paho.on_connect = self._onConnect
        self.paho.on_disconnect = self._onDisconnect
        self.paho.on_message = self._onMessage
        self.paho.on_subscribe = self._onSubscribe
        if will is not None:
            self.paho.will_set(will.topic, will.payload, will.qos, will.retain, will.properties)
        if setup is not None:
            setup(self.paho)
        if protocol == MQTTv5:
            self.paho.connect(host, port, keepalive, clean_start=clean, properties=properties)
        else:
            self.paho.connect(host, port, keepalive)
        self.paho.loop_start()
        if not self.connected.wait(TIMEOUT):
            self.close()
            raise AssertionError(f"{client_id!r}: no CONNACK within {TIMEOUT} s")
        if self.connack_code != 0:
            self.close()
            raise AssertionError(f"{client_id!r}: CONNACK return code {self.connack_code}")

    # paho callbacks, in paho's network thread

    def _onConnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.connack_code = int(rc.value)
        self.connack_properties = props
        self.connected.set()

    def _onDisconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_reason = int(rc.value)
        self.disconnected.set()

    def _onMessage(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        )

    def _onSubscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._subacked:
            self._subacks[mid] = [int(code.value) for code in codes]
            self._subacked.notify_all()

    # Operations, from the test's thread

    def subscribe(self, topic_filter: str, qos: int = 0) -> int:
        """Subscribe and wait for SUBACK; return the granted QoS (or 0x80)."""
        rc, mid = self.paho.subscribe(topic_filter, qos)
        assert mid is not None
        assert rc == paho.MQTT_ERR_SUCCESS, f"{self.client_id!r}: subscribe failed: {rc}"
        with self._subacked:
            if not self._subacked.wait_for(lambda: mid in self._subacks, TIMEOUT):
                raise AssertionError(f"{self.client_id!r}: no SUBACK for {topic_filter!r}")
            (code,) = self._subacks.pop(mid)
        return code

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Publish and wait until paho is done with it (QoS 1/2: acknowledged)."""
        info = self.paho.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise AssertionError(f"{self.client_id!r}: publish to {topic!r} not completed")
        return info

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> list[Received]:
        """The next C{n} messages received; fail loudly if they do not come."""
        deadline = time.monotonic() + timeout
        got: list[Received] = []
        while len(got) < n:
            remaining = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(remaining, 0.0)))
            except queue.Empty:
                shown = got if len(got) <= 5 else [*got[:5], "..."]
                raise AssertionError(
                    f"{self.client_id!r}: {len(got)} of {n} messages within {timeout} s: {shown}"
                ) from None
        return got

    def pending(self) -> list[Received]:
        """Messages received and not yet taken by L{wait_for}."""
        got = []
        while True:
            try:
                got.append(self.messages.get_nowait())
            except queue.Empty:
                return got

    def drop(self) -> None:
        """
        Cut the TCP connection under the client without DISCONNECT, as a
        network failure would; paho's loop then sees the close and stops.
        """
        sock = self.paho.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        if not self.disconnected.wait(TIMEOUT):
            raise AssertionError(f"{self.client_id!r}: paho did not notice the dropped socket")
        self.paho.loop_stop()

    def disconnect(self) -> None:
        """Send DISCONNECT and wait for paho to close the socket."""
        self.paho.disconnect()
        if not self.disconnected.wait(TIMEOUT):
            raise AssertionError(f"{self.client_id!r}: DISCONNECT did not complete")
        self.paho.loop_stop()

    def close(self) -> None:
        """Teardown: disconnect if still connected, and stop the network thread."""
        if not self.disconnected.is_set():
            self.paho.disconnect()
            self.disconnected.wait(TIMEOUT)
        self.paho.loop_stop()


def client(
    port: int,
    client_id: str,
    *,
    clean: bool = True,
    protocol: MQTTProtocolVersion = MQTTv311,
    will: WillSpec | None = None,
    keepalive: int = 60,
    properties: Properties | None = None,
) -> Client:
    """A paho client connected (CONNACK 0 received) to the broker on C{port}."""
    return Client(
        port,
        client_id,
        clean=clean,
        protocol=protocol,
        will=will,
        keepalive=keepalive,
        properties=properties,
    )


# Raw sockets, for what paho will not do


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str, *, keepalive: int = 60, clean: bool = True, will: WillSpec | None = None
) -> bytes:
    """An MQTT 3.1.1 CONNECT, encoded here by hand, independently of mqttd.codec."""
    flags = 0x02 if clean else 0
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _string(will.topic) + struct.pack("!H", len(will.payload)) + will.payload
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _remaining_length(len(body)) + body


CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class RawClient:
    """A bare TCP connection to the broker."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {data!r}, expected {n} bytes")
            data += chunk
        return data

    def connect(self, client_id: str, **kwargs: Any) -> None:
        """Send CONNECT and expect CONNACK 0, session not present."""
        self.send(connect_packet(client_id, **kwargs))
        assert self.recv_exactly(4) == CONNACK_ACCEPTED

    def wait_closed(self, timeout: float = TIMEOUT) -> bytes:
        """
        Read until the broker closes the connection (EOF or reset); return
        what it sent first.  Fails if it is still open after C{timeout}.
        """
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            except TimeoutError:
                chunk = None
            if chunk == b"":
                return data
            if chunk:
                data += chunk
            if time.monotonic() > deadline:
                raise AssertionError(f"broker kept the connection open for {timeout} s")

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0): the peer vanishes."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
