#!/usr/bin/env python3
"""
What S7's users cost the broker's memory beyond the idle broker, and where it goes.

usage: bench/immem.py [--users 2000] [--rate 2000] [--top 25] [--no-trace]

Runs the broker of this tree in this process with S7's configuration (`bench/run`'s: warn
logging, no queue bounds that S7 reaches, the virtual groups plugin given im_loadgen's groups),
on an ephemeral 127.0.0.1 port and the real reactor, and drives it with `bench/im_loadgen.c`
(built into bench/results/build) as S7 does: persistent MQTT 5 QoS 1 users, Zipf-sized virtual
groups, users away 10 s at a time with their sessions queueing.  At the end of the measured
phase, the moment S7 reads the broker's RSS, it takes a tracemalloc snapshot and prints the heap
grown since the idle broker's, per user, by module and by allocation site (file:line), with the
RSS growth beside it; and counts the objects messages live in (how many Message objects, how
many queue and in-flight entries refer to them).  C{--no-trace} leaves tracemalloc off and prints
the RSS alone (tracemalloc's own records inflate the RSS of a traced run).  S7L is
C{--users 10000 --rate 4000}.  With tracemalloc on, the broker is slower: at S7L's rate it may
not keep up, which grows its queues.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LOADGEN = ROOT / "bench" / "results" / "build" / "im_loadgen"


def rssKB() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def buildLoadgen() -> None:
    source = ROOT / "bench" / "im_loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= source.stat().st_mtime:
        return
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(source), "-lm"], check=True)


def writeConfig(directory: str, port: int, load: list[str]) -> str:
    groups = subprocess.run(
        [str(LOADGEN), "--print-groups", *load], check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(directory, "mqttd.ini")
    with open(path, "w") as f:
        f.write(
            "[broker]\nmax_queued_messages = 1000000\nmax_queued_bytes = 0\n\n"
            "[log]\nlevel = warn\n\n"
            f"[listener:bench]\nendpoint = tcp:{port}:interface=127.0.0.1:backlog=1024\n"
            "allow_anonymous = true\n\n"
            "[selectors]\nchain = virtual_groups\n\n"
            f"[plugin:virtual_groups]\npath = {directory}/groups.db\n{groups}"
        )
    return path


def messageCounts() -> Counter[str]:
    """How many messages the sessions hold, and in how many places."""
    from mqttd.message import Message
    from mqttd.session import Session

    counts: Counter[str] = Counter()
    held: set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, Session):
            counts["sessions"] += 1
            counts["online"] += obj.connection is not None
            for out in obj.inflight.values():
                counts["in-flight entries"] += 1
                held.add(id(out.message))
            for message, _, _ in obj.pending or ():
                counts["queued entries"] += 1
                held.add(id(message))
        elif isinstance(obj, Message):
            counts["Message objects alive"] += 1
    counts["distinct messages held"] = len(held)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--measure", type=float, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-trace", action="store_true")
    args = parser.parse_args()
    buildLoadgen()
    load = ["--users", str(args.users), "--rate", str(args.rate)]

    from mqttd.footprint import forgoUnusedTLS

    # As `twistd mqttd` does, before Twisted's reactor: S7's configuration uses no TLS.
    forgoUnusedTLS(None)
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    from mqttd.config import load_config
    from mqttd.dispatch import installLeanDispatch
    from mqttd.service import makeBrokerService
    from mqttd.tap import tuneCollector

    r: Any = reactor
    directory = tempfile.mkdtemp(prefix="immem-")
    port = freePort()
    service = makeBrokerService(load_config(writeConfig(directory, port, load)), reactor)
    service.startService()
    tuneCollector()
    installLeanDispatch(reactor)
    state: dict[str, Any] = {}

    def measure() -> None:
        gc.collect()
        rss = rssKB()
        n = args.users
        print(f"users={n} rate={args.rate}")
        print(f"rss_idle_kb={state['rss']} rss_loaded_kb={rss}")
        print(f"rss_per_user_bytes={(rss - state['rss']) * 1024 / n:.0f}")
        if not args.no_trace:
            after = tracemalloc.take_snapshot()
            before = state["snapshot"]
            grown = after.compare_to(before, "lineno")
            total = sum(stat.size_diff for stat in grown)
            print(f"heap_per_user_bytes={total / n:.0f} (tracemalloc, after gc.collect())")
            print("\nby module, bytes per user:")
            for stat in after.compare_to(before, "filename")[:12]:
                where = "/".join(Path(stat.traceback[0].filename).parts[-2:])
                print(f"  {stat.size_diff / n:8.1f}  {stat.count_diff / n:7.2f} blocks  {where}")
            print(f"\ntop {args.top} allocation sites, bytes per user:")
            for stat in grown[: args.top]:
                frame = stat.traceback[0]
                where = "/".join(Path(frame.filename).parts[-2:]) + f":{frame.lineno}"
                print(f"  {stat.size_diff / n:8.1f}  {stat.count_diff / n:7.2f} blocks  {where}")
        print("\nwhere messages are held:")
        for name, count in sorted(messageCounts().items()):
            print(f"  {count:8d}  {name}")
        sys.stdout.flush()

    class Loadgen(ProcessProtocol):
        def outReceived(self, data: bytes) -> None:
            state["out"] = state.get("out", b"") + data

        def errReceived(self, data: bytes) -> None:
            if b"setup:" in data and "timer" not in state:
                # The measured phase ends warmup + measure seconds after the set-up.
                state["timer"] = r.callLater(args.warmup + args.measure - 0.5, measure)

        def processEnded(self, reason: object) -> None:
            print("\nim_loadgen:", state.get("out", b"").decode().strip())
            service.stopService()
            r.callLater(0.5, r.stop)

    gc.collect()
    state["rss"] = rssKB()
    if not args.no_trace:
        tracemalloc.start(1)
        state["snapshot"] = tracemalloc.take_snapshot()
    argv = [
        str(LOADGEN),
        "-v",
        "-p",
        str(port),
        "--addr",
        "vgroup",
        "--warmup",
        str(args.warmup),
        "--measure",
        str(args.measure),
        *load,
        "--src-addrs",
        "3",
        "--src-base",
        f"127.{1 + os.getpid() % 250}.0.1",
    ]
    r.spawnProcess(Loadgen(), argv[0], argv, env=None)
    reactor.run()


if __name__ == "__main__":
    main()
