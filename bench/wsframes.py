#!/usr/bin/env python3
"""
bench/wsframes.py: the server's cost of reading WebSocket frames, in CPU ns per MQTT packet, with
wsproto and with mqttd's own frame reader (mqttd/transports/wsframes.py), on S1's input: masked
binary frames of 64-byte-payload PUBLISH packets, 50 packets to a frame (as bench/transports.py
sends) and one packet to a frame (as MQTT.js and paho send), cut into 64 KiB reads (Twisted's
read size).  Alternating, in one process; prints the median of --repeat runs.

    .venv/bin/python bench/wsframes.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from mqttd.transports.wsframes import FrameDecoder

PUBLISH = b"\x30\x4a\x00\x08bench0/0" + b"x" * 64
READ = 65536
PACKETS = 200_000


def reads(perFrame: int) -> list[bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/mqtt", subprotocols=["mqtt"])))
    for _ in server.events():
        pass
    client.receive_data(server.send(AcceptConnection(subprotocol="mqtt")))
    for _ in client.events():
        pass
    stream = b"".join(
        client.send(BytesMessage(data=PUBLISH * perFrame)) for _ in range(PACKETS // perFrame)
    )
    return [stream[i : i + READ] for i in range(0, len(stream), READ)]


def upgradedServer() -> WSConnection:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/mqtt", subprotocols=["mqtt"])))
    for _ in server.events():
        pass
    server.send(AcceptConnection(subprotocol="mqtt"))
    return server


def withWsproto(chunks: list[bytes]) -> int:
    server = upgradedServer()
    got = 0
    start = time.process_time_ns()
    for chunk in chunks:
        server.receive_data(chunk)
        got += len(b"".join(e.data for e in server.events() if isinstance(e, BytesMessage)))
    elapsed = time.process_time_ns() - start
    assert got == PACKETS * len(PUBLISH), got
    return elapsed


def withFrameDecoder(chunks: list[bytes]) -> int:
    decoder = FrameDecoder()
    got = 0
    start = time.process_time_ns()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            got += len(event)  # type: ignore[arg-type]
    elapsed = time.process_time_ns() - start
    assert got == PACKETS * len(PUBLISH), got
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for perFrame in (50, 1):
        chunks = reads(perFrame)
        times: dict[str, list[int]] = {"wsproto": [], "FrameDecoder": []}
        for _ in range(args.repeat):
            times["wsproto"].append(withWsproto(chunks))
            times["FrameDecoder"].append(withFrameDecoder(chunks))
        a, b = (statistics.median(times[k]) / PACKETS for k in ("wsproto", "FrameDecoder"))
        print(
            f"{perFrame:>2} packets per frame: wsproto {a:7.0f} ns/packet, "
            f"FrameDecoder {b:6.0f} ns/packet ({a / b:.1f}x)"
        )


if __name__ == "__main__":
    main()
