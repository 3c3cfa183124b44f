"""
Where an idle broker's memory goes: the RSS of a fresh interpreter after each layer of what
C{twistd -n mqttd} loads (each in its own process), then of the idle broker itself, with
what is anonymous memory (Python's objects) and what is mapped files (shared libraries).

    .venv/bin/python bench/idle_rss.py

Takes about 15 s.  A configuration equal to the default one (one anonymous listener on
127.0.0.1) is used, on a free port, so that a broker already on 1883 does not matter.
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
PYTHON = sys.executable
TWISTD = str(Path(sys.executable).parent / "twistd")

# Each layer imports what the ones before it did, plus its own; OpenSSL is refused as
# mqttd.footprint refuses it for a configuration without TLS.
LAYERS = [
    ("Python", []),
    ("+ zope.interface, attrs", ["zope.interface", "attr"]),
    (
        "+ twisted.python.compat (urllib.request, http.client, email, ssl)",
        ["twisted.python.compat"],
    ),
    ("+ twisted.internet.defer (asyncio)", ["twisted.internet.defer"]),
    ("+ the reactor", ["twisted.internet.reactor"]),
    ("+ twistd", ["twisted.scripts.twistd"]),
    ("+ mqttd's modules", ["mqttd.service", "mqttd.tap"]),
]

MEASURE = """
import importlib, sys
sys.modules["OpenSSL"] = None
for name in sys.argv[1:]:
    importlib.import_module(name)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["VmRSS"].split()[0], len(sys.modules))
"""


def status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    return fields


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def idleBroker() -> tuple[dict[str, int], list[tuple[int, str]]]:
    """The idle broker's RSS fields, and its largest file mappings (KB, path)."""
    with tempfile.TemporaryDirectory(prefix="mqttd-rss-") as directory:
        port = freePort()
        config = Path(directory) / "mqttd.ini"
        config.write_text(
            f"[listener:default]\nendpoint = tcp:{port}:interface=127.0.0.1\n"
            "allow_anonymous = true\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "mqttd", "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            # Settled: start-up's garbage collected, nothing connected.
            time.sleep(3)
            fields = status(process.pid)
            mappings: dict[str, int] = {}
            name = ""
            with open(f"/proc/{process.pid}/smaps") as f:
                for line in f:
                    parts = line.split()
                    if "-" in parts[0] and len(parts) >= 5:
                        name = parts[5] if len(parts) > 5 else ""
                    elif parts[0] == "Rss:" and name.startswith("/"):
                        mappings[name] = mappings.get(name, 0) + int(parts[1])
        finally:
            process.terminate()
            process.wait()
    largest = sorted(((kb, path) for path, kb in mappings.items()), reverse=True)[:6]
    return fields, largest


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| layer | RSS | modules |\n|---|---|---|")
    names: list[str] = []
    for label, modules in LAYERS:
        names += modules
        result = subprocess.run(
            [PYTHON, "-c", MEASURE, *names],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            check=True,
        )
        rss, count = result.stdout.split()
        print(f"| {label} | {int(rss) / 1024:.1f} MB | {count} |")
    fields, largest = idleBroker()
    print(
        f"| idle `twistd -n mqttd` (default configuration) | {fields['VmRSS'] / 1024:.1f} MB"
        f" (anonymous {fields['RssAnon'] / 1024:.1f}, files {fields['RssFile'] / 1024:.1f}) | |"
    )
    print(
        "largest file mappings: " + ", ".join(f"{os.path.basename(p)} {kb} KB" for kb, p in largest)
    )


if __name__ == "__main__":
    main()
