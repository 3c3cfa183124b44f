"""
The crash soak: C{tests/crashharness.py} for as many cycles as asked, on one store and
durability mode, printing the loss, duplicate and order counts per stream.

    .venv/bin/python bench/crash.py --store sqlite --durability sync --cycles 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crashharness import STREAMS, BrokerProcess, runCycles
from tests.test_twistd import twistdCommand


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "file"], default="sqlite")
    parser.add_argument("--durability", choices=["sync", "batched"], default="sync")
    parser.add_argument("--flush-ms", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-run", type=float, default=0.3, help="shortest run before a kill, s")
    parser.add_argument("--max-run", type=float, default=1.5, help="longest run before a kill, s")
    # What the subscriber has not taken when the drain ends is counted as lost: on a loaded
    # machine a backlog of tens of thousands of QoS 2 messages takes minutes.
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="longest final drain, s")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mqttd-crash-") as directory:
        broker = BrokerProcess(
            Path(directory),
            lambda d, config: twistdCommand(d, "--config", str(config)),
            args.store,
            args.durability,
            args.flush_ms,
        )

        def progress(cycle: int, _: object) -> None:
            if cycle % 10 == 0:
                print(f"{cycle}/{args.cycles} cycles", file=sys.stderr, flush=True)

        try:
            result = runCycles(
                broker,
                args.cycles,
                seed=args.seed,
                killAfter=(args.min_run, args.max_run),
                drainTimeout=args.drain_timeout,
                progress=progress,
            )
        finally:
            broker.kill()
    load = os.getloadavg()[0]
    print(
        f"{args.store} {args.durability} (flush_ms {args.flush_ms}): {result.cycles} cycles in"
        f" {time.monotonic() - started:.0f} s, load {load:.1f}: {result.summary()}"
    )
    for name, stream in result.streams.items():
        if stream.lost:
            print(f"  {name} lost: {stream.lost[:50]}")
        if STREAMS[name] == 2 and stream.duplicated:
            # (cycle, packet id, DUP) of each delivery; the drain is cycle --cycles.
            print(f"  {name} delivered twice: {dict(list(stream.duplicated.items())[:20])}")


if __name__ == "__main__":
    main()
