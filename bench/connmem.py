#!/usr/bin/env python3
"""
What one idle MQTT connection costs the broker's Python heap, and where it goes.

usage: bench/connmem.py [-n 10000] [--keepalive 60] [--top 20] [--walk]

Runs the broker of this tree in this process (the listener of C{makeBrokerService} on an
ephemeral 127.0.0.1 port, on the real reactor), and opens C{-n} connections from a child
process that sends each a 3.1.1 CONNECT and waits for its CONNACK, then holds them.  Between a
tracemalloc snapshot before the first connection and one with all of them idle it prints the
heap per connection and the allocation sites (file:line) that grew most, which is where an idle
connection's bytes go.  C{--walk} adds C{sys.getsizeof} summed per type over the objects one
connection owns (its protocol, session, transport, socket, decoder, timers): reachable from it
and not from another connection, stopping at the broker, listener and reactor; it leaves out
allocator and collector overhead, which tracemalloc counts.  The broker's CPU time to accept the
connections is printed too, per connection.  The child's allocations are in another process, so
the figures are the broker's alone.  Other work on the machine changes the CPU figure, not the
memory ones.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tracemalloc
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The child: N blocking connections, each CONNECT then its 4-byte CONNACK, then "ready" and a
# wait for stdin to close.
CLIENT = r"""
import socket, struct, sys
port, n, keepalive = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    cid = b"mem%06d" % i
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!HH", keepalive, len(cid)) + cid
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(bytes([0x10, len(body)]) + body)
    got = b""
    while len(got) < 4:
        chunk = s.recv(4 - len(got))
        if not chunk:
            raise SystemExit("connection %d closed before CONNACK" % i)
        got += chunk
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

# Objects every connection refers to but none owns: the walk stops at them.
SHARED_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def reachable(root: object, shared: set[int]) -> dict[int, object]:
    """What C{root} reaches without passing through C{shared}, a class, module or function."""
    found: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in found or id(obj) in shared or isinstance(obj, SHARED_TYPES):
            continue
        found[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return found


def ownedSize(root: object, other: object, shared: set[int]) -> Counter[str]:
    """
    C{sys.getsizeof} per type name of what is reachable from C{root} but not from C{other}, a
    second connection: what both reach (codec tables, enum members, small ints) is nobody's own.
    """
    theirs = reachable(other, shared)
    sizes: Counter[str] = Counter()
    for key, obj in reachable(root, shared).items():
        if key not in theirs:
            sizes[type(obj).__name__] += sys.getsizeof(obj)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--keepalive", type=int, default=60)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--walk", action="store_true")
    args = parser.parse_args()

    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    from mqttd.config import Config, ListenerConfig
    from mqttd.protocol import MQTTServerProtocol
    from mqttd.service import makeBrokerService
    from mqttd.tap import tuneCollector

    local = ListenerConfig(
        name="local", endpoint="tcp:0:interface=127.0.0.1:backlog=1024", allow_anonymous=True
    )
    config = Config(listeners=(local,))
    service = makeBrokerService(config, reactor)
    service.startService()
    tuneCollector()
    r: Any = reactor

    def listening() -> int:
        for child in service:
            port = getattr(child, "port", None)
            if port is not None:
                return int(port.getHost().port)
        raise SystemExit("connmem: no listening port")

    state: dict[str, Any] = {}

    class Client(ProcessProtocol):
        def outReceived(self, data: bytes) -> None:
            if b"ready" not in data:
                return
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            gc.collect()
            after = tracemalloc.take_snapshot()
            report(state["before"], after, cpu)
            self.transport.closeStdin()  # type: ignore[union-attr]

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode(errors="replace"))

        def processEnded(self, reason: object) -> None:
            service.stopService()
            r.callLater(0.5, r.stop)

    def report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, cpu: Any) -> None:
        n = args.n
        protocols = [o for o in gc.get_objects() if isinstance(o, MQTTServerProtocol)]
        grown = after.compare_to(before, "lineno")
        total = sum(stat.size_diff for stat in grown)
        start = state["cpu"]
        used = cpu.ru_utime + cpu.ru_stime - start.ru_utime - start.ru_stime
        print(f"connections={n} open_protocols={len(protocols)}")
        print(f"heap_per_connection_bytes={total / n:.0f} (tracemalloc, after gc.collect())")
        print(f"broker_cpu_per_connection_us={used / n * 1e6:.0f}")
        print(f"\ntop {args.top} allocation sites, bytes per connection:")
        for stat in grown[: args.top]:
            frame = stat.traceback[0]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            print(f"  {stat.size_diff / n:8.1f}  {stat.count_diff / n:6.2f} blocks  {where}")
        if args.walk and protocols:
            protocol = protocols[len(protocols) // 2]
            sharedRoots = [
                protocol.broker,
                protocol.listener,
                protocol.clock,
                protocol.factory,
                protocol._stats,
                protocol.broker.config,
                # The listener's, holding every connection's timeouts and writes.
                protocol._timeouts,
                protocol._writes,
            ]
            transport: Any = protocol.transport
            sharedRoots += [transport.reactor, getattr(transport, "server", None)]
            shared = {id(o) for o in sharedRoots}
            sizes = ownedSize(protocol, protocols[0], shared)
            print(f"\ngetsizeof walk of one connection: {sum(sizes.values())} bytes")
            for name, size in sizes.most_common(15):
                print(f"  {size:6d}  {name}")

    port = listening()
    tracemalloc.start(1)
    gc.collect()
    state["before"] = tracemalloc.take_snapshot()
    state["cpu"] = resource.getrusage(resource.RUSAGE_SELF)
    r.spawnProcess(
        Client(),
        sys.executable,
        [sys.executable, "-c", CLIENT, str(port), str(args.n), str(args.keepalive)],
        env=None,
    )
    reactor.run()


if __name__ == "__main__":
    main()
