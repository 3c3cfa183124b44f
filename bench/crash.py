"""
The crash soak: C{tests/crashharness.py} for as many cycles as asked, on one store and
durability mode, printing the loss, duplicate and order counts per stream.

    .venv/bin/python bench/crash.py --store sqlite --durability sync --cycles 200

A run that loses or duplicates a message keeps its directory (printed at the end) with, for
each cycle involved and its neighbours, the broker's twistd log, the QoS 2 clients' packet trace
and the store as that cycle's kill left it; a clean run removes it.  Until the run ends every
cycle's copy is kept (losses are only known after the final drain): 300 cycles took 3.3 GB of
temporary disk with SQLite, and 170 cycles 4.9 GB with the file store's log.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crashharness import STREAMS, BrokerProcess, Result, runCycles
from tests.test_twistd import twistdCommand

# The files a cycle leaves: twistd-CYCLE-RUN.log, trace-CYCLE.log, store-CYCLE/.
CYCLE_FILE = re.compile(r"^(?:twistd|trace|store)-(\d{4})")


def keepEvidence(directory: Path, result: Result) -> bool:
    """
    Remove what the cycles uninvolved in a loss or duplicate left in C{directory}, or all of
    it when there is none.

    @return: whether anything is kept.
    """
    implicated = result.implicated()
    if not implicated:
        shutil.rmtree(directory)
        return False
    wanted = {c + d for c in implicated for d in (-1, 0, 1)}
    for path in directory.iterdir():
        match = CYCLE_FILE.match(path.name)
        if match is not None and int(match.group(1)) not in wanted:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return True


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
    parser.add_argument("--keep-in", default=None, help="where a run's evidence is kept (/tmp)")
    args = parser.parse_args()
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="mqttd-crash-", dir=args.keep_in))
    broker = BrokerProcess(
        directory,
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
            keep=True,
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
    if keepEvidence(directory, result):
        print(f"  logs, traces and stores of cycles {sorted(result.implicated())} in {directory}")


if __name__ == "__main__":
    main()
