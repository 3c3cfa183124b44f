#!/usr/bin/env python3
"""
bench/transports.py: S1 (QoS 0 fan-in: 8 publishers on T/0..T/7 -> 1 subscriber on T/#, 64-byte
payloads) over TCP, TLS and WebSocket, against brokers already listening.

The shared C load generator speaks plain TCP only, so this driver does the same scenario in
Python (asyncio, raw MQTT packets) for every transport, and is run against mqttd and mosquitto
alike so the comparison is like for like.  Closed loop, as the C generator's S1: publishers stop
while more than 10,000 messages are published but not received; with --rate, open loop at that
offered rate (within the same bound), to compare brokers' CPU at one rate below saturation.
Publishers write 50 PUBLISH packets per write; over WebSocket (``ws``) the 50 go in one frame,
which [MQTT-6.0.0-2] allows, and over ``ws1`` in a frame each, as MQTT.js and paho send them.
Each publisher's frames are masked with random keys once and the same bytes sent every time (a
broker cannot tell), and the subscriber reads the brokers' unmasked frames by their headers, so
the Python side costs less per message than the brokers do; the subscriber counts bytes, every
delivered packet having the same length.  wsproto does the upgrade.  With --poll-reader the
subscriber looks at its socket every 0.5 ms instead of waiting on it in epoll, so that a broker's
send() never pays for waking it (bench/transports.sh says why that matters to mosquitto).

    bench/transports.py tcp:127.0.0.1:1883 tls:127.0.0.1:8883:ca.pem ws:127.0.0.1:8080/mqtt \
        ws1:127.0.0.1:8080/mqtt

prints one line per target: messages/s received in the measured window, and with --broker-pid
the broker's CPU use in it (100 = one core; well below 100 means the driver was the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import struct
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

PUBLISHERS = 8
PAYLOAD = b"x" * 64
BATCH = 50
MAX_OUTSTANDING = 10_000
# How often a polling subscriber (--poll-reader) looks at its socket.
POLL = 0.0005


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def connect(clientId: str) -> bytes:
    return _packet(
        0x10, _string("MQTT") + bytes([4, 2]) + struct.pack("!H", 60) + _string(clientId)
    )


def publish(topic: str) -> bytes:
    return _packet(0x30, _string(topic) + PAYLOAD)


class Stream:
    """MQTT bytes over TCP, TLS or WebSocket (binary frames, subprotocol mqtt)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def sendBatch(self, batch: bytes) -> None:
        """C{batch}: BATCH copies of one PUBLISH."""
        await self.send(batch)

    async def recv(self) -> bytes:
        data = await self.reader.read(262144)
        if not data:
            raise ConnectionError("closed by the broker")
        return data

    def startPolling(self) -> None:
        """
        From now on read by L{polledRecv}: the socket is taken out of the event loop's epoll, so
        a broker's send() finds no reader asleep on it to wake.
        """
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]
        fd = self.writer.get_extra_info("socket").fileno()
        self.raw = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        self.raw.setblocking(False)

    async def polledRecv(self) -> bytes:
        """What the socket holds, looked for every POLL seconds."""
        while True:
            try:
                data = self.raw.recv(262144)
            except BlockingIOError:
                await asyncio.sleep(POLL)
                continue
            if not data:
                raise ConnectionError("closed by the broker")
            return self.payloads(data)

    def payloads(self, data: bytes) -> bytes:
        return data


def maskedFrame(payload: bytes) -> bytes:
    """One final binary client frame carrying C{payload}, masked with a random key."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 65536:
        head = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    keys = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")
    return head + key + masked


class WebSocketStream(Stream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, perFrame: int
    ) -> None:
        super().__init__(reader, writer)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.perFrame = perFrame
        self.frames: dict[bytes, bytes] = {}
        self.buffer = b""
        self.remaining = 0

    async def upgrade(self, host: str, path: str) -> None:
        self.writer.write(self.ws.send(Request(host=host, target=path, subprotocols=["mqtt"])))
        while True:
            self.ws.receive_data(await super().recv())
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"upgrade refused: {event.status_code}")

    async def send(self, data: bytes) -> None:
        await super().send(maskedFrame(data))

    async def sendBatch(self, batch: bytes) -> None:
        framed = self.frames.get(batch)
        if framed is None:
            step = len(batch) // BATCH * self.perFrame
            framed = b"".join(maskedFrame(batch[i : i + step]) for i in range(0, len(batch), step))
            self.frames[batch] = framed
        await super().send(framed)

    async def recv(self) -> bytes:
        while True:
            got = self.payloads(await super().recv())
            if got:
                return got

    def payloads(self, data: bytes) -> bytes:
        """The payload bytes of the binary frames read, whatever the framing."""
        data = self.buffer + data
        got, pos, end = [], 0, len(data)
        if self.remaining:
            pos = min(self.remaining, end)
            got.append(data[:pos])
            self.remaining -= pos
        while pos < end:
            if end - pos < 2:
                break
            first, n = data[pos], data[pos + 1]
            if first & 0x0F not in (0, 2) or n & 0x80:
                raise ConnectionError(f"unexpected frame {data[pos : pos + 2].hex()}")
            start = pos + 2
            if n == 126:
                start += 2
                n = int.from_bytes(data[pos + 2 : start], "big")
            elif n == 127:
                start += 8
                n = int.from_bytes(data[pos + 2 : start], "big")
            if end < start:
                break
            got.append(data[start : start + n])
            self.remaining = max(0, start + n - end)
            pos = min(start + n, end)
        self.buffer = data[pos:]
        return b"".join(got)


async def open_stream(target: str) -> Stream:
    kind, rest = target.split(":", 1)
    if kind in ("ws", "ws1"):
        hostport, _, path = rest.partition("/")
        host, port = hostport.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        ws = WebSocketStream(reader, writer, 1 if kind == "ws1" else BATCH)
        await ws.upgrade(host, "/" + path)
        return ws
    host, port, *extra = rest.split(":")
    context = None
    if kind == "tls":
        context = ssl.create_default_context(cafile=extra[0])
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname=host if context else None
    )
    return Stream(reader, writer)


async def session(target: str, clientId: str) -> Stream:
    stream = await open_stream(target)
    await stream.send(connect(clientId))
    got = b""
    while len(got) < 4:
        got += await stream.recv()
    assert got[:4] == b"\x20\x02\x00\x00", got
    return stream


def cpuSeconds(pid: int | None) -> float:
    """User plus system CPU time of process C{pid} (and its reaped children), from /proc."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def run(
    target: str,
    warmup: float,
    measure: float,
    prefix: str,
    pid: int | None,
    offered: float,
    poll: bool,
) -> tuple[float, float]:
    sub = await session(target, f"{prefix}-sub")
    await sub.send(_packet(0x82, struct.pack("!H", 1) + _string(f"{prefix}/#") + b"\x00"))
    got = b""
    while len(got) < 5:
        got += await sub.recv()
    size = len(publish(f"{prefix}/0"))
    recv = sub.recv
    if poll and not target.startswith("tls:"):
        sub.startPolling()
        recv = sub.polledRecv
    state = {"published": 0, "received": 0, "stop": False}
    room = asyncio.Event()
    room.set()

    async def publisher(n: int) -> None:
        stream = await session(target, f"{prefix}-pub{n}")
        batch = publish(f"{prefix}/{n}") * BATCH
        period = BATCH * PUBLISHERS / offered if offered else 0.0
        due = time.monotonic() + period * n / PUBLISHERS
        while not state["stop"]:
            if period:
                # Open loop: this publisher's share of the offered rate, a batch at a time.
                due += period
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if state["published"] - state["received"] > MAX_OUTSTANDING:
                room.clear()
                await room.wait()
                continue
            await stream.sendBatch(batch)
            state["published"] += BATCH

    async def subscriber() -> None:
        leftover = len(got) - 5
        while not state["stop"]:
            data = await recv()
            leftover += len(data)
            state["received"] += leftover // size
            leftover %= size
            if state["published"] - state["received"] <= MAX_OUTSTANDING:
                room.set()

    tasks = [asyncio.create_task(publisher(n)) for n in range(PUBLISHERS)]
    tasks.append(asyncio.create_task(subscriber()))
    await asyncio.sleep(warmup)
    start, t0, cpu0 = state["received"], time.monotonic(), cpuSeconds(pid)
    await asyncio.sleep(measure)
    elapsed = time.monotonic() - t0
    rate = (state["received"] - start) / elapsed
    cpu = 100 * (cpuSeconds(pid) - cpu0) / elapsed
    state["stop"] = True
    room.set()
    for task in tasks:
        task.cancel()
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "targets",
        nargs="+",
        help="tcp:HOST:PORT, tls:HOST:PORT:CAFILE, ws:HOST:PORT/PATH, ws1:HOST:PORT/PATH",
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--measure", type=float, default=10.0)
    parser.add_argument("--broker-pid", type=int, help="report this process's CPU use")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many msgs/s instead of as many as the broker takes (closed loop)",
    )
    parser.add_argument(
        "--poll-reader",
        action="store_true",
        help="the subscriber looks at its socket every 0.5 ms instead of waiting on it in epoll "
        "(not over TLS), so that no broker pays on loopback for waking it, as none would for a "
        "subscriber on another machine",
    )
    args = parser.parse_args()
    for i, target in enumerate(args.targets):
        rate, cpu = asyncio.run(
            run(
                target,
                args.warmup,
                args.measure,
                f"bench{i}",
                args.broker_pid,
                args.rate,
                args.poll_reader,
            )
        )
        print(f"S1 {target} msgs_per_s={rate:.0f} broker_cpu_pct={cpu:.0f}", flush=True)


if __name__ == "__main__":
    main()
