"""
What webhooks cost the broker: QoS 1 latency from publisher to subscriber through C{twistd
mqttd}, without observers, with the webhook plugin posting every event to a receiver that answers
at once, and with it posting to a receiver that is down (its queue full, retries pending).

    python bench/webhook.py [MESSAGES] [RATE]

MESSAGES (default 3000) are published at RATE per second (default 500) by one paho client to one
subscriber, both on 127.0.0.1; each payload carries its send time, so the figure is the time to
the subscriber's callback.  Prints p50 / p99 per case.  Latency on a shared machine is noisy:
note the load (uptime) with the figures, and compare the cases of one run.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitFor(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the broker did not listen")


def run(case: str, extra: str, messages: int, rate: float) -> list[float]:
    twistd = str(Path(sys.executable).parent / "twistd")
    with tempfile.TemporaryDirectory() as directory:
        here = Path(directory)
        port = freePort()
        (here / "mqttd.ini").write_text(
            f"[listener:m]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            f"allow_anonymous = true\n{extra}"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        broker = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "-l", str(here / "log"), "mqttd", "--config", "mqttd.ini"],
            cwd=here,
            env=env,
        )
        try:
            waitFor(port)
            latencies: list[float] = []
            done = threading.Event()

            def received(client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
                (sent,) = struct.unpack("!d", message.payload[:8])
                latencies.append(time.perf_counter() - sent)
                if len(latencies) == messages:
                    done.set()

            subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="sub")
            subscriber.on_message = received
            subscriber.connect("127.0.0.1", port)
            subscriber.subscribe("bench/#", 1)
            subscriber.loop_start()
            publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub")
            publisher.connect("127.0.0.1", port)
            publisher.loop_start()
            time.sleep(0.5)
            start = time.perf_counter()
            for i in range(messages):
                due = start + i / rate
                while time.perf_counter() < due:
                    time.sleep(0.0005)
                publisher.publish("bench/x", struct.pack("!d", time.perf_counter()) + b"x" * 56, 1)
            if not done.wait(60):
                raise SystemExit(f"{case}: {len(latencies)} of {messages} messages arrived")
            publisher.loop_stop()
            subscriber.loop_stop()
            return latencies
        finally:
            broker.terminate()
            broker.wait()


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 500.0
    # The receiver runs in a process of its own, so that it competes with neither the broker
    # nor the clients measuring.
    up = freePort()
    receiver = subprocess.Popen([sys.executable, __file__, "--receive", str(up)])
    waitFor(up)
    down = freePort()
    cases = [
        ("no observers", ""),
        (
            "webhook, receiver up",
            f"[observers]\nchain = webhook\n[plugin:webhook]\nurl = http://127.0.0.1:{up}/\n",
        ),
        (
            "webhook, receiver down",
            f"[observers]\nchain = webhook\n[plugin:webhook]\nurl = http://127.0.0.1:{down}/\n"
            "queue_size = 1000\nretries = 3\nretry_delay = 0.5\n",
        ),
    ]
    print(f"{messages} QoS 1 messages at {rate:.0f}/s; load: {os.getloadavg()[0]:.2f}")
    for case, extra in cases:
        latencies = sorted(run(case, extra, messages, rate))
        p50 = statistics.median(latencies) * 1e6
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e6
        print(f"{case:24s} p50 {p50:8.0f} us   p99 {p99:8.0f} us")
    receiver.terminate()
    receiver.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--receive"]:
        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Receiver).serve_forever()
    else:
        main()
