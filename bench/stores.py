"""
The table of bench/stores.sh: S3 with persistent sessions per store, medians over the
repetitions, each store's throughput as a ratio to mqttd's memory store and to mosquitto with
persistence on, and the idle RSS line.

    python3 bench/stores.py bench/results/stores-*.txt
"""

from __future__ import annotations

import statistics
import sys

ORDER = [
    "memory",
    "sqlite-sync",
    "sqlite-batched",
    "file-sync",
    "file-batched",
    "redis-sync",
    "redis-batched",
    "mosquitto-persistent",
]


def main(path: str) -> None:
    runs: dict[str, list[dict[str, str]]] = {}
    idle: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            fields = dict(w.split("=", 1) for w in words if "=" in w)
            if words[0] == "idle":
                idle = fields
            else:
                runs.setdefault(words[0], []).append(fields)

    def median(name: str, key: str) -> float:
        values = [float(r[key]) for r in runs.get(name, []) if key in r]
        return statistics.median(values) if values else float("nan")

    memory = median("memory", "msgs_per_s")
    mosquitto = median("mosquitto-persistent", "msgs_per_s")
    print(
        "| broker, store | msgs/s | p50 / p99 latency | broker RSS | vs memory store"
        " | vs mosquitto persistent | other CPU % |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ORDER:
        if name not in runs:
            continue
        rate = median(name, "msgs_per_s")
        p50 = median(name, "p50_us") / 1000
        p99 = median(name, "p99_us") / 1000
        rss = median(name, "broker_rss_kb") / 1024
        memoryText = f"{rss:.0f} MB" if rss > 0 else "n/a"
        other = median(name, "other_cpu_pct")
        print(
            f"| {name} | {rate:,.0f} | {p50:.1f} / {p99:.1f} ms | {memoryText}"
            f" | {rate / memory:.2f} | {rate / mosquitto:.2f} | {other:.0f} |"
        )
    if idle:
        print(
            f"\nIdle RSS, default configuration: mqttd {int(idle['mqttd_rss_kb']) / 1024:.1f} MB,"
            f" mosquitto {int(idle['mosquitto_rss_kb']) / 1024:.1f} MB"
        )


if __name__ == "__main__":
    main(sys.argv[1])
