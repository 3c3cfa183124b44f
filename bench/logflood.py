"""
Log volume under a flood of bad connections: how many bytes C{twistd mqttd} writes to its log
per refused connection, for the code on PYTHONPATH (default: this checkout).

    python bench/logflood.py [CONNECTIONS] [PYTHONPATH]

Each connection sends a CONNECT with a wrong password to a listener with a password file, reads
its CONNACK and closes, as a password-guessing client or a misconfigured fleet does; the figure
is the growth of the log file.  Run it with an old checkout's path to compare.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mqttd.codec import encode  # noqa: E402
from mqttd.codec.packets import Connect  # noqa: E402


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


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    code = sys.argv[2] if len(sys.argv) > 2 else str(ROOT)
    twistd = str(Path(sys.executable).parent / "twistd")
    with tempfile.TemporaryDirectory() as directory:
        here = Path(directory)
        env = {**os.environ, "PYTHONPATH": code}
        subprocess.run(
            [sys.executable, "-m", "mqttd", "passwd", "-c", "-b", "passwd", "alice", "secret"],
            cwd=here,
            env=env,
            check=True,
        )
        port = freePort()
        (here / "mqttd.ini").write_text(
            f"[listener:main]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            "[auth]\nchain = passwordfile\n[plugin:passwordfile]\nfile = passwd\n"
        )
        log = here / "twistd.log"
        process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={log}", "mqttd", "--config", "mqttd.ini"],
            cwd=here,
            env=env,
        )
        try:
            waitFor(port)
            time.sleep(0.5)
            before = log.stat().st_size
            packet = encode(Connect(4, "guess", username="alice", password=b"wrong"))
            started = time.monotonic()
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(packet)
                    s.recv(4)
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            grown = log.stat().st_size - before
        finally:
            process.terminate()
            process.wait()
    print(
        f"{count} refused logins in {elapsed:.1f} s: log grew {grown} bytes,"
        f" {grown / count:.1f} bytes per connection (code: {code})"
    )


if __name__ == "__main__":
    main()
