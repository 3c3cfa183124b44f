"""
How long a refused login takes, and what it answers, for a wrong password of an existing user and
for an unknown user: what a client probing for user names could measure.  Starts C{twistd mqttd}
from this checkout with the shipped passwordfile plugin on a file written by Debian's
C{mosquitto_passwd}, then times CONNECT to CONNACK over raw sockets, the two cases interleaved.

    python bench/bad_login.py [--rounds 400]

Prints the CONNACK codes and the median and 90th percentile of each case, and their ratio.  Run it
on a quiet machine and note the load (uptime) with the figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def connect(port: int, user: str, password: str) -> tuple[float, bytes]:
    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("!H", len(data)) + data

    body = string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += string("probe") + string(user) + string(password)
    packet = b"\x10" + bytes([len(body)]) + body
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(packet)
        answer = sock.recv(4)
        return time.perf_counter() - start, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument(
        "--iterations",
        type=int,
        help="write alice's $7$ entry with this many PBKDF2 iterations (mosquitto_passwd: 101),"
        " so that the cost of hashing stands out of the noise",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(work / "passwd"), "alice", "secret"], check=True
        )
        if args.iterations:
            entry = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from mqttd.plugin_loader import pluginPackage; pluginPackage();"
                    " from mqttd.plugins.passwordfile import hashPassword;"
                    " print(hashPassword(b'secret', int(sys.argv[1])).encode())",
                    str(args.iterations),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            (work / "passwd").write_text(f"alice:{entry}\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (work / "mqttd.ini").write_text(
            f"[listener:l]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            # Refusals are summarised per address; the connection rate is not limited.
            "[auth]\nchain = passwordfile\n[plugin:passwordfile]\nfile = passwd\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        broker = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "twistd"),
                "-n",
                "--pidfile=",
                "mqttd",
                "--config",
                str(work / "mqttd.ini"),
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.1)
            cases = {"wrong password": ("alice", "wrong"), "unknown user": ("mallory", "wrong")}
            times: dict[str, list[float]] = {name: [] for name in cases}
            answers: dict[str, set[bytes]] = {name: set() for name in cases}
            for _ in range(args.rounds):
                for name, (user, password) in cases.items():
                    took, answer = connect(port, user, password)
                    times[name].append(took)
                    answers[name].add(answer)
            for name in cases:
                samples = sorted(times[name])
                p90 = samples[int(len(samples) * 0.9)]
                print(
                    f"{name:15} CONNACK {sorted(a.hex() for a in answers[name])}"
                    f"  median {statistics.median(samples) * 1e3:.3f} ms  p90 {p90 * 1e3:.3f} ms"
                )
            ratio = statistics.median(times["wrong password"]) / statistics.median(
                times["unknown user"]
            )
            print(f"median wrong password / unknown user: {ratio:.2f}")
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    main()
