"""
S7's broker work per delivery, without sockets: the IM load of C{bench/im_loadgen.c} (users
with persistent MQTT 5 QoS 1 sessions, Zipf-sized virtual groups through the C{virtual_groups}
selector, 80 % group and 20 % direct messages, about 10 % of users away and back) driven
through the in-memory connections of C{tests/harness.py}, one read per packet as on the
network, timed in CPU seconds of this process.  For before/after comparisons of the
per-delivery path, run it on each tree, alternately (or with C{--against REV}, which exports
that revision with C{git archive} and alternates fresh interpreters of both):

    .venv/bin/python bench/im_loop.py --against main

It prints, per run, the CPU microseconds per delivery (each delivery acknowledged by its
recipient's PUBACK, the publisher's PUBACK included in the broker's work), and with
C{--against} the medians of both trees and their ratio.  C{--profile FILE} writes a cProfile
of one run instead.  The figure includes the simulated clients' own small work (one PUBACK
built per delivery), which is the same in both trees.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MQTT5 = 5


def zipfGroups(users: int, rng: random.Random) -> list[list[str]]:
    """The groups of im_loadgen.c: rank r has max(2, round(max * r^-0.705)) distinct members."""
    count = max(1, users // 4)
    largest = round(147 * users / 2000)
    groups = []
    for g in range(count):
        size = min(users, max(2, round(largest * (g + 1) ** -0.705)))
        groups.append([f"u{u}" for u in rng.sample(range(users), size)])
    return groups


def run(users: int, messages: int, seed: int, profile: str | None) -> tuple[int, float]:
    """Deliveries and CPU seconds for C{messages} messages among C{users} users."""
    from mqttd.codec import Properties
    from plugins.virtual_groups.model import makeGroup
    from plugins.virtual_groups.routing import VirtualGroups
    from plugins.virtual_groups.store import SQLiteGroupStore
    from tests.harness import World

    rng = random.Random(seed)
    groups = zipfGroups(users, rng)
    world = World(max_queued_messages=1000000, max_queued_bytes=0)
    # As bench/run's broker, which has no [store]: sessions journal to nothing.
    world.broker.journal = world.broker.registry.journal = None
    directory = tempfile.mkdtemp(prefix="im_loop-")
    store = SQLiteGroupStore(
        world.clock,
        os.path.join(directory, "groups.db"),
        [makeGroup(f"g{n}", dict.fromkeys(members, 2)) for n, members in enumerate(groups)],
    )
    plugin = VirtualGroups(store)
    world.broker.selectors = (plugin,)
    plugin.attach(world.broker)
    expiry = Properties(session_expiry_interval=86400)
    clients: dict[str, Any] = {}

    def connect(name: str) -> None:
        clients[name] = world.connect(name, clean=False, level=MQTT5, properties=expiry)

    for u in range(users):
        connect(f"u{u}")
    sessions = world.broker.sessions
    online = list(clients)
    away: list[str] = []
    payload = b"x" * 64
    acks = [b"\x40\x02" + i.to_bytes(2, "big") for i in range(65536)]

    def publish(topic: str, packetId: int) -> bytes:
        # As im_loadgen.c writes it: QoS 1, no properties, a 64-byte payload.
        body = len(topic).to_bytes(2, "big") + topic.encode() + packetId.to_bytes(2, "big")
        body += b"\x00" + payload
        return b"\x32" + bytes([len(body)]) + body

    def acknowledge(name: str) -> int:
        session = sessions[name]
        client = clients.get(name)
        if client is None or session.connection is None or not session.inflight:
            return 0
        count = 0
        # One read per PUBACK, as each comes in its own segment in S7.
        while session.inflight:
            for packetId in list(session.inflight):
                client.protocol.dataReceived(acks[packetId])
                count += 1
        client.transport.clear()
        return count

    delivered = 0
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.process_time()
    for n in range(messages):
        if rng.random() < 0.8:
            group = rng.randrange(len(groups))
            members = groups[group]
            sender = rng.choice(members)
            if sender not in clients:
                continue
            topic = f"$group/g{group}"
            recipients = members
        else:
            sender = rng.choice(online)
            to = f"u{rng.randrange(users)}"
            if to == sender:
                continue
            topic = "$p2p/" + to
            recipients = [to]
        client = clients[sender]
        client.protocol.dataReceived(publish(topic, n % 65535 + 1))
        client.transport.clear()
        for name in recipients:
            if name != sender:
                delivered += acknowledge(name)
        if n % 100 == 50:
            # About 10 % away: one leaves every 100 messages and comes back once 10 % of the
            # users have left after it (20,000 messages later for 2,000 users: S7's 10 s).
            leaving = rng.choice(online)
            online.remove(leaving)
            clients.pop(leaving).protocol.connectionLost()
            away.append(leaving)
            if len(away) > users // 10:
                back = away.pop(0)
                connect(back)
                online.append(back)
                delivered += acknowledge(back)
    elapsed = time.process_time() - started
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return delivered, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--against", metavar="REV", help="alternate with this git revision")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of one run")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.once or options.profile:
        if "PYTHONPATH" not in os.environ:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        delivered, cpu = run(options.users, options.messages, options.seed, options.profile)
        print(f"{delivered} {cpu:.6f}")
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here}
    if options.against:
        exported = tempfile.mkdtemp(prefix="im_loop-against-")
        archive = subprocess.run(
            ["git", "-C", here, "archive", options.against], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", exported], input=archive, check=True)
        trees[options.against] = exported
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(options.reps):
        for name, tree in trees.items():
            args = [sys.executable, os.path.join(here, "bench", "im_loop.py"), "--once"]
            args += ["--users", str(options.users), "--messages", str(options.messages)]
            args += ["--seed", str(options.seed)]
            out = subprocess.run(
                args,
                cwd=tree,
                env={**os.environ, "PYTHONPATH": tree},
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            delivered, cpu = int(out[0]), float(out[1])
            perDelivery = cpu / delivered * 1e6
            figures[name].append(perDelivery)
            print(f"rep={rep} tree={name} delivered={delivered} us_per_delivery={perDelivery:.2f}")
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        print(f"median tree={name} us_per_delivery={value:.2f}")
    if options.against:
        print(f"this/{options.against} = {medians['this'] / medians[options.against]:.3f}")


if __name__ == "__main__":
    main()
