#!/usr/bin/env bash
# bench/monitoring.sh [-r REPS] [-s "S1 S2"] [-b GITREF]
#
# What monitoring costs on the hot path: mqttd alone (bench/run with
# BENCH_BROKERS=mqttd), each scenario run with
#   off   sys_interval = 0 and no HTTP listener
#   on    sys_interval = 1 (ten times the default rate) and an HTTP listener
#         whose /metrics is scraped every second during the run
#   base  (with -b GITREF) the code of GITREF, e.g. the commit before the
#         counters of mqttd/stats.py existed, run from an export of that tree
# interleaved per repetition, so drifts of the machine hit all alike.  Prints
# the median deliveries/s per configuration, and deliveries per second of the
# broker's own CPU time (what a message costs, which other processes taking
# CPU away from the broker change far less), with the ratios to "off".  Every
# run counts, however busy the machine: the second figure is the one to read
# on a shared machine.  Default: 5 repetitions of S1 S2 (about 10 minutes
# with -b).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=5 SCEN="S1 S2" BASE=""
while getopts "r:s:b:" o; do
    case $o in r) REPS=$OPTARG ;; s) SCEN=$OPTARG ;; b) BASE=$OPTARG ;; *) exit 2 ;; esac
done
RESULTS=$ROOT/bench/results
OUT=$RESULTS/monitoring-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
HTTP_PORT=${HTTP_PORT:-21893}
CONFIGS="off on"
if [ -n "$BASE" ]; then
    mkdir -p "$OUT/base"
    git -C "$ROOT" archive "$BASE" | tar -x -C "$OUT/base" || exit 2
    CONFIGS="base off on"
fi

# Scrapes /metrics every second for as long as it runs; only the "on" broker answers.
scrape() {
    while sleep 1; do
        curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/metrics" || true
    done
}

echo "# load before: $(uptime)" | tee "$OUT/load.txt" >&2
for rep in $(seq 1 "$REPS"); do
    for config in $CONFIGS; do
        # The working tree's mqttd, whatever the venv has installed (its twistd drop-in too).
        keys="sys_interval = 0" extra="" pythonpath=$ROOT
        case $config in
        on)
            keys="sys_interval = 1"
            extra=$(printf '[listener:http]\nendpoint = tcp:%s:interface=127.0.0.1\nprotocol = http' "$HTTP_PORT")
            ;;
        base) keys="" pythonpath=$OUT/base ;;
        esac
        scrape & scraper=$!
        BENCH_MAX_OTHER_CPU=1000 BENCH_BROKERS=mqttd MQTTD_BROKER_KEYS=$keys MQTTD_EXTRA_INI=$extra \
            MQTTD_PYTHONPATH=$pythonpath "$ROOT/bench/run" -r 1 -s "$SCEN" 2>&1 >/dev/null |
            grep -E '^S[0-9]' | sed "s/\$/ config=$config rep=$rep/" | tee -a "$OUT/raw.txt" >&2
        kill "$scraper" 2>/dev/null
        wait "$scraper" 2>/dev/null
    done
done
echo "# load after: $(uptime)" | tee -a "$OUT/load.txt" >&2

python3 - "$OUT/raw.txt" "$CONFIGS" <<'PY'
import statistics
import sys
from collections import defaultdict

path, configs = sys.argv[1], sys.argv[2].split()
runs = defaultdict(list)
for line in open(path):
    tok = line.split()
    kv = dict(t.split("=", 1) for t in tok[2:] if "=" in t)
    if "msgs_per_s" in kv and float(kv.get("broker_cpu_pct", 0)) > 0:
        rate = float(kv["msgs_per_s"])
        runs[(tok[0], kv["config"], "deliveries/s")].append(rate)
        runs[(tok[0], kv["config"], "per broker CPU s")].append(rate * 100 / float(kv["broker_cpu_pct"]))
others = [c for c in configs if c != "off"]
print("| scenario | figure | " + " | ".join(configs) + " | " + " | ".join(f"{c}/off" for c in others) + " |")
print("|---" * (2 + len(configs) + len(others)) + "|")
for scenario in sorted({s for s, _, _ in runs}):
    for figure in ("deliveries/s", "per broker CPU s"):
        values = {c: runs[(scenario, c, figure)] for c in configs if runs[(scenario, c, figure)]}
        medians = {c: statistics.median(v) for c, v in values.items()}
        cells = [f"{medians[c]:,.0f} (n={len(values[c])})" if c in medians else "-" for c in configs]
        ratios = [
            f"{medians[c] / medians['off']:.3f}" if c in medians and "off" in medians else "-"
            for c in others
        ]
        print(f"| {scenario} | {figure} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
