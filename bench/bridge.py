"""
bench/bridge.py [-r REPS] [--warmup SECONDS] [--measure SECONDS]

Messages per second through a bridge: publishers on the local broker, the subscriber on the
remote one (a mosquitto), the local broker bridging the topic out.  The local broker is mqttd
(a [bridge:NAME] section) or mosquitto (its own bridge), started fresh for every run and pinned
to CPU 0; the remote mosquitto and the load generator are pinned to CPU 1.  A third column runs
publishers and subscriber on the remote mosquitto alone, without a bridge, for reference.

The load is the shared C generator's (../shared/bench/mqtt_loadgen.c, copied into
bench/results/ and given --sub-port by bench/loadgen-sub-port.patch, so that its subscriber
connects to another broker than its publishers), in its S1 and S3 shapes: QoS 0, 8 publishers
to 1 subscriber, at most 10,000 messages undelivered; QoS 1, 8 publishers with 10 unacknowledged
each, at most 80 undelivered.  Closed loop, so no queue grows without bound and each figure is
a sustainable rate.  Runs are interleaved; prints each run with the load average, then medians
and the ratio mqttd/mosquitto.  Needs the project in .venv (the README's install) and Debian's
mosquitto, gcc, patch and util-linux (taskset).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
sys.path.insert(0, str(ROOT))

from mqttd.codec import encode  # noqa: E402
from mqttd.codec.packets import Connect, Publish, Subscribe  # noqa: E402

HOST = "127.0.0.1"


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def waitPort(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"broker on {port} exited with {process.returncode}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def pinned(cpu: int, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *args] if shutil.which("taskset") else args


def mosquitto(directory: Path, name: str, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    conf = directory / f"{name}.conf"
    user = f"user {os.environ.get('USER') or 'root'}\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\nmax_queued_messages 1000000\n"
        f"{user}log_dest none\n{extra}"
    )
    cpu = 0 if name == "local" else 1
    process = subprocess.Popen(pinned(cpu, ["mosquitto", "-c", str(conf)]))
    waitPort(port, process)
    return process


def mqttd(directory: Path, port: int, remote: int, qos: int) -> subprocess.Popen[bytes]:
    ini = directory / "mqttd.ini"
    ini.write_text(
        "[broker]\nmax_queued_messages = 1000000\n"
        f"[listener:local]\nendpoint = tcp:{port}:interface={HOST}\nallow_anonymous = true\n"
        f"[bridge:bench]\naddresses = {HOST}:{remote}\nclient_id = bench-bridge\n"
        f"topic = bench/# out {qos}\nmax_queued_messages = 1000000\nmax_queued_bytes = 0\n"
    )
    twistd = ROOT / ".venv" / "bin" / "twistd"
    # This checkout's mqttd, whatever version .venv has installed.
    process = subprocess.Popen(
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        args=pinned(
            0,
            [
                str(twistd),
                "-n",
                "--pidfile=",
                f"--logfile={directory}/mqttd.log",
                "mqttd",
                "--config",
                str(ini),
            ],
        ),
    )
    waitPort(port, process)
    return process


async def mqttConnect(
    port: int, clientId: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(encode(Connect(4, clientId, True, 60)))
    await reader.readexactly(4)
    return reader, writer


async def waitBridged(localPort: int, remotePort: int) -> None:
    """Publish probes on the local broker until one reaches the remote: the bridge is up."""
    subReader, subWriter = await mqttConnect(remotePort, "bench-probe-sub")
    subWriter.write(encode(Subscribe(1, [("bench/#", 0)])))
    await subReader.readexactly(5)
    _, pubWriter = await mqttConnect(localPort, "bench-probe-pub")
    deadline = time.monotonic() + 20
    while True:
        pubWriter.write(encode(Publish("bench/probe", b"", 0)))
        try:
            await asyncio.wait_for(subReader.read(1), 0.2)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise SystemExit("the bridge did not come up within 20 s") from None
    pubWriter.close()
    subWriter.close()


def loadgen() -> Path:
    """The shared C load generator with --sub-port (bench/loadgen-sub-port.patch), built once."""
    build = ROOT / "bench" / "results" / "build-bridge"
    binary = build / "mqtt_loadgen_subport"
    if binary.exists():
        return binary
    build.mkdir(parents=True, exist_ok=True)
    source = build / "mqtt_loadgen.c"
    shutil.copy(SHARED / "mqtt_loadgen.c", source)
    subprocess.run(
        ["patch", "-s", str(source), str(ROOT / "bench" / "loadgen-sub-port.patch")], check=True
    )
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source), "-lm"], check=True)
    return binary


def drive(localPort: int, remotePort: int, qos: int, warmup: float, measure: float) -> float:
    """S1 (QoS 0) or S3 (QoS 1) across the bridge; return deliveries per second."""
    asyncio.run(waitBridged(localPort, remotePort))
    flow = (
        ["--max-outstanding", "10000"]
        if qos == 0
        else ["--window", "10", "--refill", "1", "--max-outstanding", "80"]
    )
    result = subprocess.run(
        pinned(
            1,
            [
                str(loadgen()),
                "-h",
                HOST,
                "-p",
                str(localPort),
                "--sub-port",
                str(remotePort),
                "--mode",
                "pubsub",
                "--pubs",
                "8",
                "--subs",
                "1",
                "--qos",
                str(qos),
                "--size",
                "64",
                "--topic",
                "bench/t",
                "--filter",
                "bench/#",
                "--warmup",
                str(warmup),
                "--measure",
                str(measure),
                "--drain",
                "2",
                *flow,
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    fields = dict(f.split("=", 1) for f in result.stdout.split() if "=" in f)
    if int(fields.get("lost", "0")):
        print(f"  ({fields['lost']} messages not delivered within the drain)", file=sys.stderr)
    return float(fields["msgs_per_s"])


def run(kind: str, qos: int, warmup: float, measure: float) -> float:
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        remotePort, localPort = freePort(), freePort()
        started = [mosquitto(directory, "remote", remotePort)]
        try:
            if kind == "direct":
                # No bridge: publisher and subscriber on the remote mosquitto, the driver's ceiling.
                localPort = remotePort
            elif kind == "mqttd":
                started.append(mqttd(directory, localPort, remotePort, qos))
            else:
                started.append(
                    mosquitto(
                        directory,
                        "local",
                        localPort,
                        f"connection bench\naddress {HOST}:{remotePort}\nclientid bench-bridge\n"
                        f"topic bench/# out {qos}\n",
                    )
                )
            return drive(localPort, remotePort, qos, warmup, measure)
        finally:
            for process in started:
                process.terminate()
                process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("-r", "--reps", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=8.0)
    args = parser.parse_args()
    results: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.reps):
        for qos in (0, 1):
            for kind in ("mqttd", "mosquitto", "direct"):
                rate = run(kind, qos, args.warmup, args.measure)
                results.setdefault((kind, qos), []).append(rate)
                load = os.getloadavg()[0]
                print(f"rep {rep + 1} {kind:9} QoS {qos}: {rate:10,.0f} msgs/s (load {load:.2f})")
    print()
    header = (
        "| QoS | mqttd → mosquitto | mosquitto → mosquitto | ratio | no bridge (one mosquitto) |"
    )
    print(header)
    print("|---|---|---|---|---|")
    for qos in (0, 1):
        ours = statistics.median(results[("mqttd", qos)])
        theirs = statistics.median(results[("mosquitto", qos)])
        direct = statistics.median(results[("direct", qos)])
        print(
            f"| {qos} | {ours:,.0f} msgs/s | {theirs:,.0f} msgs/s | {ours / theirs:.2f}"
            f" | {direct:,.0f} msgs/s |"
        )


if __name__ == "__main__":
    main()
