"""
The table of bench/cluster.sh: one row per configuration, S1 / S2 / S3 deliveries per second
(median of the repetitions) with the CPU microseconds every broker process and Redis spent per
delivered message, and the ratios the issue's goals speak of; then the S3L latencies.

Usage: python3 bench/cluster.py RESULTS_FILE
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict

CONFIGS = ("mosquitto", "lone", "1node", "2nodes", "2nodes-local", "workers2")
SCENARIOS = ("S1", "S2", "S3")


def fields(line: str) -> dict[str, str]:
    # Only the top-level key=value pairs: 2nodes-local nests each generator's line in [...].
    flat = re.sub(r"\[[^\]]*\]", "", line)
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', flat))


def main(path: str) -> None:
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    costs: dict[tuple[str, str], list[float]] = defaultdict(list)
    latency: dict[str, list[tuple[float, float]]] = defaultdict(list)
    loads: list[str] = []
    for line in open(path):
        words = line.split()
        if len(words) < 3:
            continue
        config, scenario = words[0], words[1]
        values = fields(line)
        loads.append(values.get("load", "").strip('"'))
        if "msgs_per_s" not in values:
            print(f"failed run: {line.strip()}", file=sys.stderr)
            continue
        rate = float(values["msgs_per_s"])
        if scenario == "S3L":
            latency[config].append((float(values["p50_us"]), float(values["p99_us"])))
            continue
        rates[config, scenario].append(rate)
        cpu = float(values.get("all_cpu_pct", "0"))
        if rate:
            costs[config, scenario].append(cpu / 100 * 1e6 / rate)

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    print("deliveries/s (CPU us per delivery: all broker processes and Redis)")
    print("| config | " + " | ".join(SCENARIOS) + " |")
    print("|---|" + "---|" * len(SCENARIOS))
    for config in CONFIGS:
        cells = []
        for scenario in SCENARIOS:
            rate = median(rates[config, scenario])
            cost = median(costs[config, scenario])
            cells.append("-" if rate is None else f"{rate:,.0f} ({cost or 0:.1f} us)")
        print(f"| {config} | " + " | ".join(cells) + " |")
    print()
    print("ratios of deliveries/s")
    for label, top, bottom in (
        ("2nodes-local / lone (two processes, clients on their own node)", "2nodes-local", "lone"),
        ("workers2 / lone", "workers2", "lone"),
        ("2nodes / 1node (half the traffic crosses nodes)", "2nodes", "1node"),
        ("1node / lone (the cluster's own cost)", "1node", "lone"),
        ("lone / mosquitto", "lone", "mosquitto"),
    ):
        cells = []
        for scenario in SCENARIOS:
            a, b = median(rates[top, scenario]), median(rates[bottom, scenario])
            cells.append(f"{scenario} {a / b:.2f}" if a and b else f"{scenario} -")
        print(f"- {label}: " + ", ".join(cells))
    print()
    print("S3L (8 QoS 1 publishers, 1,000 msgs/s in all) publish-to-delivery latency")
    for config, values in latency.items():
        p50 = statistics.median(v[0] for v in values)
        p99 = statistics.median(v[1] for v in values)
        print(f"- {config}: p50 {p50 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms")
    if loads:
        print(f"\nload averages during the runs: first {loads[0]}, last {loads[-1]}")


if __name__ == "__main__":
    main(sys.argv[1])
