#!/usr/bin/env bash
# bench/cluster.sh [-r REPS]
#
# The cluster's cost and gain on one machine (docs/cluster.md): S1, S2 and S3 of the shared
# load generator against
#   mosquitto     mosquitto 2, pinned to CPU 0
#   lone          mqttd without [cluster], pinned to CPU 0
#   1node         one mqttd cluster node on Redis, pinned to CPU 0
#   2nodes        two nodes (CPU 0 and CPU 1), clients spread evenly: connection i of each kind
#                 goes to node A or B by parity, so half the traffic crosses nodes (S1, S3: 4 of
#                 the 8 publishers on B, the subscriber on A; S2: 50 of the 100 subscribers on B)
#   2nodes-local  two nodes, each with its own full S1/S2/S3 load (two generators at once):
#                 publishers and subscribers on the same node; msgs/s is the sum of both
#   workers2      [cluster] workers = 2: two processes on one port (SO_REUSEPORT), the kernel
#                 spreading the connections
# then the cross-node latency: S3L (8 QoS 1 publishers paced at 1,000 msgs/s in all) with the
# publishers on node A and the subscriber on node B, p50/p99 next to the lone broker's.
# Redis runs with appendfsync always (the cluster's guarantee for QoS 1/2; REDIS_FSYNC=everysec
# to see what the fsync costs), unpinned, as do
# the generators of the two-node runs (two cores: brokers, Redis and generators share them).
# The generator is the shared one built with --spread-port and --sub-port (a copy patched by
# sed next to the shared source).  Besides each run's rate and latency, the CPU time of every
# broker process and Redis over the measured window gives the cost in CPU microseconds per
# delivered message.  Prints one table; raw lines and logs go to bench/results/.
# About 8 minutes with the default one repetition.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=1
while getopts "r:" o; do
    case $o in r) REPS=$OPTARG ;; *) exit 2 ;; esac
done
VENV=${MQTTD_VENV:-$ROOT/.venv}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/results/build}
for tool in redis-server redis-cli mosquitto gcc taskset ss; do
    command -v $tool >/dev/null || { echo "bench/cluster.sh: needs $tool" >&2; exit 2; }
done
[ -x "$VENV/bin/twistd" ] || { echo "bench/cluster.sh: no $VENV/bin/twistd" >&2; exit 2; }

# The generator with two more options: --spread-port P (connections alternate between the
# broker's port and P, counted per kind) and --sub-port P (every subscriber connects to P).
mkdir -p "$BUILD_DIR"
SOURCE=$BUILD_DIR/mqtt_loadgen_cluster.c
sed -e 's|^static struct sockaddr_in broker_addr;|&\nstatic int spread_port, sub_port;\nstatic struct sockaddr_in spread_addr, sub_addr;|' \
    -e 's|connect(fd, (struct sockaddr \*)&broker_addr, sizeof broker_addr)|connect(fd, (struct sockaddr *)(sub_port \&\& c->role == R_SUB ? \&sub_addr : spread_port \&\& ((c->role == R_SUB ? c->idx : c->idx - (uint32_t)opt.subs) \& 1) ? \&spread_addr : \&broker_addr), sizeof broker_addr)|' \
    -e 's|{"src-base", 1, 0, 26},|& {"spread-port", 1, 0, 27}, {"sub-port", 1, 0, 28},|' \
    -e 's|        case 26: opt.src_base = optarg; break;|&\n        case 27: spread_port = atoi(optarg); break;\n        case 28: sub_port = atoi(optarg); break;|' \
    -e 's|^    struct in_addr sb;|    spread_addr = broker_addr; spread_addr.sin_port = htons((uint16_t)spread_port);\n    sub_addr = broker_addr; sub_addr.sin_port = htons((uint16_t)sub_port);\n&|' \
    "$SHARED/mqtt_loadgen.c" >"$SOURCE"
[ "$(grep -c 'spread_port\|sub_port\|spread-port' "$SOURCE")" -eq 7 ] || { echo "bench/cluster.sh: cannot patch the generator" >&2; exit 2; }
gcc -O2 -Wall -o "$BUILD_DIR/mqtt_loadgen_cluster" "$SOURCE" -lm || exit 2
export LOADGEN=$BUILD_DIR/mqtt_loadgen_cluster

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/bench/results/cluster-$STAMP.txt
WORK=$ROOT/bench/results/cluster-$STAMP-logs
mkdir -p "$WORK"
ulimit -n "$(ulimit -Hn)" 2>/dev/null
BASE=${BASE_PORT:-31883}
A=$BASE B=$((BASE + 1)) R=$((BASE + 2))
WARMUP_S=${WARMUP_S:-3} MEASURE_S=${MEASURE_S:-10}
export WARMUP_S MEASURE_S

PIDS=()
port_open() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() {
    for _ in $(seq 1 300); do port_open "$1" && return 0; sleep 0.1; done
    echo "bench/cluster.sh: nothing listens on $1, see $WORK" >&2
    return 1
}
stop_all() {
    [ ${#PIDS[@]} -gt 0 ] || return 0
    kill "${PIDS[@]}" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "${PIDS[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${PIDS[@]}" 2>/dev/null
    wait "${PIDS[@]}" 2>/dev/null
    PIDS=()
}
trap 'stop_all; exit 130' INT TERM

redis() {  # a fresh Redis, append-only, by default with fsync on every write
    rm -rf "$WORK/redis" && mkdir -p "$WORK/redis"
    redis-server --port $R --bind 127.0.0.1 --save '' --appendonly yes \
        --appendfsync "${REDIS_FSYNC:-always}" \
        --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" &
    PIDS+=($!)
    wait_port $R
}
mqttd() {  # mqttd NAME PORT CPUS [CLUSTER_LINES]
    local ini=$WORK/$1.ini
    printf '[broker]\nmax_queued_messages = 1000000\n[log]\nlevel = warn\n' >"$ini"
    printf '[listener:bench]\nendpoint = tcp:%s:interface=127.0.0.1:backlog=1024\nallow_anonymous = true\n' "$2" >>"$ini"
    [ -n "${4-}" ] && printf '[cluster]\nredis = redis://127.0.0.1:%s\n%s\n' $R "$4" >>"$ini"
    PYTHONPATH=$ROOT taskset -c "$3" "$VENV/bin/twistd" -n --pidfile= --logfile="$WORK/$1.log" \
        mqttd --config "$ini" &
    PIDS+=($!)
    wait_port "$2"
}
joined() {  # joined N: wait until N nodes have joined the cluster
    for _ in $(seq 1 300); do
        [ "$(redis-cli -p $R hlen mqttd:nodes 2>/dev/null)" = "$1" ] && return 0
        sleep 0.1
    done
    echo "bench/cluster.sh: $1 nodes did not join, see $WORK" >&2
    return 1
}
mosquitto_() {
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nlog_dest stderr\nlog_type error\nconnection_messages false\n' $A >"$WORK/mosquitto.conf"
    taskset -c 0 mosquitto -c "$WORK/mosquitto.conf" 2>"$WORK/mosquitto.log" &
    PIDS+=($!)
    wait_port $A
}
cpu_ticks() {  # utime+stime of the given processes and their children threads, in clock ticks
    local total=0 pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo $total
}
processes() {  # every process of the run: those started and their children (workers)
    local pid
    for pid in "${PIDS[@]}"; do echo "$pid"; pgrep -P "$pid"; done
}
measure() {  # measure CONFIG SCENARIO [bench.sh environment...]: one line into $OUT
    local config=$1 scenario=$2 line procs before after hz
    shift 2
    procs=$(processes | tr '\n' ' ')
    (
        sleep "$(awk "BEGIN {print $WARMUP_S + 0.5}")"
        # shellcheck disable=SC2086
        before=$(cpu_ticks $procs)
        sleep "$MEASURE_S"
        # shellcheck disable=SC2086
        echo "$before $(cpu_ticks $procs)" >"$WORK/cpu"
    ) &
    local sampler=$!
    line=$(env "$@" "$SHARED/bench.sh" 127.0.0.1 $A "$scenario" 2>>"$WORK/stderr.log")
    wait $sampler
    read -r before after <"$WORK/cpu"
    hz=$(getconf CLK_TCK)
    echo "$config $line all_cpu_pct=$(( (after - before) * 100 / hz / MEASURE_S )) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\"" | tee -a "$OUT" >&2
}
two_local() {  # two generators at once, one per node: the sum of both lines
    local scenario=$1 procs before after hz l1 l2
    procs=$(processes | tr '\n' ' ')
    (
        sleep "$(awk "BEGIN {print $WARMUP_S + 0.5}")"
        # shellcheck disable=SC2086
        before=$(cpu_ticks $procs)
        sleep "$MEASURE_S"
        # shellcheck disable=SC2086
        echo "$before $(cpu_ticks $procs)" >"$WORK/cpu"
    ) &
    local sampler=$!
    GEN_CPU= "$SHARED/bench.sh" 127.0.0.1 $A "$scenario" >"$WORK/l1" 2>>"$WORK/stderr.log" &
    local g1=$!
    GEN_CPU= "$SHARED/bench.sh" 127.0.0.1 $B "$scenario" >"$WORK/l2" 2>>"$WORK/stderr.log"
    wait $g1 $sampler
    read -r before after <"$WORK/cpu"
    hz=$(getconf CLK_TCK)
    l1=$(cat "$WORK/l1") l2=$(cat "$WORK/l2")
    local r1 r2
    r1=$(grep -o 'msgs_per_s=[0-9]*' <<<"$l1" | cut -d= -f2) r2=$(grep -o 'msgs_per_s=[0-9]*' <<<"$l2" | cut -d= -f2)
    echo "2nodes-local $scenario msgs_per_s=$(( ${r1:-0} + ${r2:-0} )) node_a=[$l1] node_b=[$l2] all_cpu_pct=$(( (after - before) * 100 / hz / MEASURE_S )) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\"" | tee -a "$OUT" >&2
}

echo "# raw results: $OUT" >&2
for rep in $(seq 1 "$REPS"); do
    for scenario in S1 S2 S3; do
        mosquitto_ && measure mosquitto $scenario; stop_all
        mqttd lone $A 0 && measure lone $scenario; stop_all
        redis && mqttd a $A 0 "node = a" && measure 1node $scenario; stop_all
        redis && mqttd a $A 0 "node = a" && mqttd b $B 1 "node = b" && joined 2 &&
            measure 2nodes $scenario GEN_CPU= LOADGEN_ARGS="--spread-port $B"; stop_all
        redis && mqttd a $A 0 "node = a" && mqttd b $B 1 "node = b" && joined 2 && two_local $scenario; stop_all
        redis && mqttd w $A 0,1 "node = w
workers = 2" && joined 2 && measure workers2 $scenario GEN_CPU=; stop_all
    done
    mqttd lone $A 0 && measure lone S3L; stop_all
    redis && mqttd a $A 0 "node = a" && mqttd b $B 1 "node = b" && joined 2 &&
        measure cross-node S3L GEN_CPU= LOADGEN_ARGS="--sub-port $B"; stop_all
done
python3 "$ROOT/bench/cluster.py" "$OUT"
