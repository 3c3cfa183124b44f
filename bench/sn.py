"""
bench/sn.py [-r REPS] [--clients 100] [--messages 500] [--idle 10000]

MQTT-SN through mqttd: C{twistd mqttd} started fresh for every repetition (pinned to CPU 0) with
an MQTT-SN listener and an MQTT listener, and this driver (pinned to CPU 1, one thread, raw
sockets, mqttd's own codecs) measuring:

  SN0   msgs/s from --clients SN clients publishing QoS 0 to one MQTT subscriber (QoS 0); UDP
        has no flow control, so at most --window messages are unreceived at a time
  SN1   msgs/s from --clients SN clients publishing QoS 1 (each awaiting its PUBACK before the
        next, as MQTT-SN clients do) to one MQTT subscriber at QoS 1
  MQ0   SN0's load over MQTT/TCP instead (the same driver, --clients MQTT clients): the ratio
        SN0/MQ0 is what the gateway costs
  IDLE  broker RSS growth per 1,000 SN clients connected and idle (--idle of them), and the
        time to connect them one after the other

mosquitto has no MQTT-SN, so there is no mosquitto column.  Prints the median of each figure
and `uptime`; needs the project installed in .venv (the README's install) and util-linux.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mqttd.codec import Decoder, encode  # noqa: E402
from mqttd.codec.packets import Connack, Connect, Puback, Publish, Subscribe  # noqa: E402
from mqttd.sn import packets as sn  # noqa: E402
from mqttd.sn.codec import decode as snDecode  # noqa: E402
from mqttd.sn.codec import encode as snEncode  # noqa: E402

HOST = "127.0.0.1"
TCP_PORT, SN_PORT = 22990, 22991
PAYLOAD = b"x" * 64
CONFIG = f"""
[broker]
max_queued_messages = 1000000
[listener:sn]
endpoint = udp:{SN_PORT}:interface={HOST}
protocol = mqtt-sn
allow_anonymous = true
max_half_open = 1000
[listener:tcp]
endpoint = tcp:{TCP_PORT}:interface={HOST}:backlog=1024
allow_anonymous = true
"""


class Broker:
    def __init__(self, work: Path, venv: Path, cpu: str) -> None:
        config = work / "mqttd.ini"
        config.write_text(CONFIG)
        self.log = work / "mqttd.log"
        command = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", f"--logfile={self.log}"]
        command += ["mqttd", "--config", str(config)]
        if cpu:
            command = ["taskset", "-c", cpu, *command]
        # This checkout's mqttd (and its twistd drop-in), whatever copy the venv has installed.
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, TCP_PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    text = self.log.read_text() if self.log.exists() else ""
                    raise SystemExit(f"mqttd did not start:\n{text}") from None
                time.sleep(0.1)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")


class Subscriber:
    """One MQTT client on TCP subscribed to bench/#; counts (and acknowledges) what it gets."""

    def __init__(self, qos: int) -> None:
        self.sock = socket.create_connection((HOST, TCP_PORT))
        self.decoder = Decoder(server=False)
        self.received = 0
        self.last = 0.0
        self.sock.sendall(encode(Connect(4, f"bench-sub-{time.monotonic_ns()}", True, 0)))
        self.sock.sendall(encode(Subscribe(1, [("bench/#", qos)])))
        packets: list[object] = []
        while len(packets) < 2:
            packets += self.decoder.feed(self.sock.recv(65536))
        assert isinstance(packets[0], Connack) and packets[0].return_code == 0, packets
        self.sock.setblocking(False)

    def readable(self) -> None:
        data = self.sock.recv(1 << 20)
        self.last = time.monotonic()
        acks = []
        for packet in self.decoder.feed(data):
            if isinstance(packet, Publish):
                self.received += 1
                if packet.qos == 1:
                    assert packet.packet_id is not None
                    acks.append(encode(Puback(packet.packet_id)))
        if acks:
            self.sock.setblocking(True)
            self.sock.sendall(b"".join(acks))
            self.sock.setblocking(False)


class SNClient:
    def __init__(self, number: int, duration: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((HOST, SN_PORT))
        self.number = number
        self.duration = duration

    def call(self, packet: object, answer: type) -> object:
        self.sock.settimeout(10)
        for _ in range(5):
            self.sock.send(snEncode(packet))  # type: ignore[arg-type]
            try:
                while True:
                    reply = snDecode(self.sock.recv(65536))
                    if isinstance(reply, answer):
                        return reply
            except TimeoutError:
                continue
        raise SystemExit(f"no {answer.__name__} for SN client {self.number}")

    def connect(self) -> None:
        connack = self.call(sn.Connect(f"bench-sn-{self.number}", self.duration), sn.Connack)
        assert connack == sn.Connack(0), connack

    def register(self) -> int:
        regack = self.call(sn.Register(0, 1, f"bench/sn/{self.number}"), sn.Regack)
        assert isinstance(regack, sn.Regack) and regack.return_code == 0, regack
        return regack.topic_id


def runSN(clients: int, messages: int, qos: int, window: int) -> float:
    subscriber = Subscriber(qos)
    senders = [SNClient(i, duration=600) for i in range(clients)]
    for client in senders:
        client.connect()
    topicIds = [c.register() for c in senders]
    datagrams = [snEncode(sn.Publish(topicId, 0, PAYLOAD)) for topicId in topicIds]
    for client in senders:
        client.sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(subscriber.sock, selectors.EVENT_READ, None)
    total = clients * messages
    sent = [0] * clients
    start = time.monotonic()
    if qos == 0:
        done = 0
        while subscriber.received < total:
            while done < total and done - subscriber.received < window:
                i = done % clients
                senders[i].sock.send(datagrams[i])
                done += 1
            if not selector.select(timeout=2):
                # UDP dropped some (a full socket buffer): what arrived is the figure.
                print(f"  SN0: {total - subscriber.received} of {total} lost", flush=True)
                total = subscriber.received
                break
            subscriber.readable()
    else:
        for index, client in enumerate(senders):
            selector.register(client.sock, selectors.EVENT_READ, index)
        msgId = [1] * clients

        def publish(i: int) -> None:
            senders[i].sock.send(snEncode(sn.Publish(topicIds[i], msgId[i], PAYLOAD, qos=1)))
            sent[i] += 1

        for i in range(clients):
            publish(i)
        while subscriber.received < total:
            for key, _ in selector.select(timeout=5):
                if key.data is None:
                    subscriber.readable()
                    continue
                i = key.data
                reply = snDecode(senders[i].sock.recv(65536))
                if isinstance(reply, sn.Puback) and reply.msg_id == msgId[i]:
                    msgId[i] = msgId[i] % 0xFFFF + 1
                    if sent[i] < messages:
                        publish(i)
            if time.monotonic() - start > 120:
                raise SystemExit(f"SN1: {subscriber.received} of {total} received")
    elapsed = subscriber.last - start
    for client in senders:
        client.sock.send(snEncode(sn.Disconnect()))
        client.sock.close()
    subscriber.sock.close()
    return total / elapsed


def runMQTT(clients: int, messages: int, window: int) -> float:
    subscriber = Subscriber(0)
    senders = []
    for i in range(clients):
        s = socket.create_connection((HOST, TCP_PORT))
        s.sendall(encode(Connect(4, f"bench-mq-{i}", True, 0)))
        decoder = Decoder(server=False)
        got: list[Any] = []
        while not got:
            got = decoder.feed(s.recv(1024))
        senders.append((s, encode(Publish(f"bench/mq/{i}", PAYLOAD))))
    selector = selectors.DefaultSelector()
    selector.register(subscriber.sock, selectors.EVENT_READ, None)
    total, done = clients * messages, 0
    start = time.monotonic()
    while subscriber.received < total:
        while done < total and done - subscriber.received < window:
            s, data = senders[done % clients]
            s.sendall(data)
            done += 1
        for _ in selector.select(timeout=5):
            subscriber.readable()
    elapsed = subscriber.last - start
    for s, _ in senders:
        s.close()
    subscriber.sock.close()
    return total / elapsed


def runIdle(broker: Broker, idle: int) -> tuple[float, float]:
    before = broker.rss()
    start = time.monotonic()
    kept = []
    for i in range(idle):
        client = SNClient(100000 + i)
        client.connect()
        kept.append(client)
    elapsed = time.monotonic() - start
    time.sleep(1)
    grown = broker.rss() - before
    for client in kept:
        client.sock.close()
    return elapsed, grown / idle * 1000 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=500, help="per client")
    # Unreceived QoS 0 messages at a time; more overflow the broker's UDP receive buffer
    # (net.core.rmem_default) and are lost.
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--idle", type=int, default=10000)
    args = parser.parse_args()
    venv = Path(os.environ.get("MQTTD_VENV", ROOT / ".venv"))
    brokerCpu, driverCpu = os.environ.get("BROKER_CPU", "0"), os.environ.get("GEN_CPU", "1")
    if driverCpu:
        os.sched_setaffinity(0, {int(driverCpu)})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sn-") as work:
        for _ in range(args.reps):
            for name in ("SN0", "SN1", "MQ0", "IDLE"):
                broker = Broker(Path(work), venv, brokerCpu)
                values: dict[str, float]
                try:
                    if name == "SN0":
                        values = {name: runSN(args.clients, args.messages, 0, args.window)}
                    elif name == "SN1":
                        values = {name: runSN(args.clients, args.messages, 1, args.window)}
                    elif name == "MQ0":
                        values = {name: runMQTT(args.clients, args.messages, args.window)}
                    else:
                        seconds, perThousand = runIdle(broker, args.idle)
                        values = {"IDLE connect s": seconds, "IDLE MB/1000": perThousand}
                finally:
                    broker.stop()
                for key, value in values.items():
                    figures.setdefault(key, []).append(value)
                    print(f"{key}: {value:,.2f}", flush=True)
    print(
        f"\nmedians of {args.reps} ({args.clients} clients x {args.messages} messages, "
        f"64-byte payloads; {args.idle} idle clients)"
    )
    for key, series in figures.items():
        print(f"  {key:16} {statistics.median(series):12,.2f}")
    sn0, mq0 = statistics.median(figures["SN0"]), statistics.median(figures["MQ0"])
    print(f"  SN0/MQ0          {sn0 / mq0:12.2f}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
