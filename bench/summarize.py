#!/usr/bin/env python3
"""
Median table, with the ratio mqttd/mosquitto, from bench/run's raw lines.

usage: summarize.py RAWFILE [RAWFILE ...]

Only accepted runs count.  For throughput a ratio above 1 favours mqttd; for
latencies, times and memory a ratio below 1 does.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator

S7_METRICS = [
    "deliveries_per_s",
    "p50_us",
    "p99_us",
    "broker_cpu_pct",
    "broker_cpu_us_per_delivery",
    "broker_sys_pct_of_cpu",
    "broker_rss_kb",
    "lost",
]
METRICS = {
    "S1": ["msgs_per_s", "lost"],
    "S2": ["msgs_per_s", "lost"],
    "S3": ["msgs_per_s", "p50_us", "p99_us", "lost"],
    "S3L": ["p50_us", "p99_us", "ack_p99_us", "lost"],
    "S4": ["connected", "connect_s", "broker_cpu_us_per_conn", "rss_kb_per_1k"],
    "S4b": ["connected", "connect_s", "broker_cpu_us_per_conn", "rss_kb_per_1k"],
    "S5": ["msgs_per_s", "p99_us", "lost"],
    "S6a": ["msgs_per_s", "lost"],
    "S6b": ["msgs_per_s", "lost"],
    "S7": S7_METRICS,
    "S7L": S7_METRICS,
    "S7S": ["held_rate"],
}
BROKERS = ("mqttd", "mosquitto")
BEFORE = "mqttd_before"


def parse(path: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    with open(path) as f:
        for line in f:
            tok = line.split()
            if len(tok) < 2 or line.startswith("#"):
                continue
            kv = dict(t.split("=", 1) for t in tok[2:] if "=" in t)
            if {"broker_cpu_pct", "connect_s", "connected"} <= kv.keys() and float(kv["connected"]):
                # What a connection costs the broker's CPU, which other load changes far less
                # than the time to connect.
                cpu = float(kv["broker_cpu_pct"]) / 100 * float(kv["connect_s"])
                kv["broker_cpu_us_per_conn"] = str(cpu / float(kv["connected"]) * 1e6)
            yield tok[0], tok[1], kv


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def main(paths: list[str]) -> None:
    runs: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    names: dict[str, str] = {}
    for path in paths:
        for sid, name, kv in parse(path):
            names.setdefault(sid, name)
            if kv.get("accepted", "1") == "1":
                runs[(sid, kv.get("broker", "?"))].append(kv)
    # bench/run -b GITREF: the mqttd of that commit as a first column.
    brokers = (BEFORE, *BROKERS) if any(b == BEFORE for _, b in runs) else BROKERS
    columns = ["mqttd before", *brokers[1:]] if brokers[0] == BEFORE else list(brokers)
    print(f"| scenario | metric | {' | '.join(columns)} | mqttd/mosquitto |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for sid in [s for s in METRICS if any((s, b) in runs for b in brokers)]:
        for metric in METRICS[sid]:
            medians: list[float | None] = []
            cells: list[str] = []
            for b in brokers:
                kvs = runs.get((sid, b), [])
                vals = [float(kv[metric]) for kv in kvs if metric in kv]
                if not vals:
                    cells.append("error" if any("error" in kv for kv in kvs) else "-")
                    medians.append(None)
                    continue
                m = statistics.median(vals)
                medians.append(m)
                cells.append(f"{fmt(m)} (n={len(vals)})")
            ours, theirs = medians[-2:]
            ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "-"
            print(f"| {sid} {names.get(sid, '')} | {metric} | {' | '.join(cells)} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
