"""
The broker core's cost per message, without sockets: S1- and S3-shaped loads (8 publishers, one
subscriber on C{bench/#}, 64-byte payloads, QoS 0 and QoS 1 with the subscriber's PUBACKs)
driven through the in-memory clients of C{tests/harness.py}, timed in CPU seconds of this process,
so load from other processes changes the figure little.  For before/after comparisons of a change
to the core (issue 16's split): run it on each tree, alternately, e.g.

    PYTHONPATH=/path/to/old/tree .venv/bin/python bench/core_loop.py
    PYTHONPATH=. .venv/bin/python bench/core_loop.py

It prints, per QoS, the best of C{--reps} runs in microseconds of CPU per delivered message.
The publishers' packets are encoded before the clock starts; the subscriber's PUBACKs are
encoded within it, the same small work in both trees.
"""

from __future__ import annotations

import argparse
import time

from mqttd.codec import encode
from mqttd.codec.packets import Puback, Publish
from tests.harness import World

BATCH = 50


def run(qos: int, messages: int, publishers: int) -> tuple[int, float]:
    """Deliveries and CPU seconds for C{messages} published at C{qos}."""
    world = World()
    subscriber = world.subscriber("sub", ("bench/#", qos))
    clients = [world.connect(f"p{i}") for i in range(publishers)]
    packetId = 0
    delivered = 0
    # Encoded before the clock starts, so that only the broker's work is timed.
    batches = []
    for _ in range(messages // (BATCH * publishers)):
        for n in range(len(clients)):
            packets = []
            for _ in range(BATCH):
                packetId = packetId % 65535 + 1
                packets.append(
                    encode(
                        Publish(f"bench/{n}", b"x" * 64, qos, packet_id=packetId if qos else None),
                        4,
                    )
                )
            batches.append(b"".join(packets))
    started = time.process_time()
    batch = iter(batches)
    for _ in range(messages // (BATCH * publishers)):
        for client in clients:
            client.sendBytes(next(batch))
            client.transport.clear()
        # QoS 1 deliveries beyond the in-flight window follow the subscriber's PUBACKs.
        while True:
            world.clock.advance(0)
            received = subscriber.read()
            delivered += len(received)
            if not received or not qos:
                break
            subscriber.sendBytes(
                b"".join(
                    encode(Puback(p.packet_id), 4)
                    for p in received
                    if isinstance(p, Publish) and p.packet_id
                )
            )
    return delivered, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=40000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()
    for qos in (0, 1):
        runs = [run(qos, options.messages, options.publishers) for _ in range(options.reps)]
        delivered, best = min(runs, key=lambda r: r[1])
        perMessage = best / delivered * 1e6
        print(f"qos={qos} delivered={delivered} best_cpu_s={best:.3f} us_per_msg={perMessage:.2f}")


if __name__ == "__main__":
    main()
