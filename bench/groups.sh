#!/usr/bin/env bash
# bench/groups.sh [-r REPS]
#
# Virtual groups against ordinary fan-out: one publisher to 10,000 connected
# receivers at QoS 0 and at QoS 1, through an ordinary topic with 10,000
# subscribers (mqttd and mosquitto) and through a virtual group of 10,000
# members (mqttd).  Each run starts its broker fresh, pinned to CPU 0, with
# the shared C load generator on CPU 1.  For the group runs the generator's
# receivers subscribe to a topic nobody publishes to; the group's members are
# their client ids (lg<PID>-s<N>), written with `mqttd groups` into the file
# the broker reads as soon as the generator has started, and the broker picks
# them up while the receivers connect, before the warm-up ends.  Prints one
# line per run; msgs_per_s counts deliveries.
#
# Needs the project installed in .venv (or MQTTD_VENV), Debian's mosquitto,
# gcc, iproute2 and util-linux.  Logs go to bench/results/ (ignored by git).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=1
while getopts "r:" o; do
    case $o in r) REPS=$OPTARG ;; *) exit 2 ;; esac
done
MQTTD_VENV=${MQTTD_VENV:-$ROOT/.venv}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/results/build}
LOADGEN=$BUILD_DIR/mqtt_loadgen
export BROKER_CPU=${BROKER_CPU:-0} PEERS_DIR=$SHARED/peers
[ -x "$MQTTD_VENV/bin/twistd" ] || { echo "bench/groups.sh: no $MQTTD_VENV/bin/twistd" >&2; exit 2; }
if [ ! -x "$LOADGEN" ] || [ "$SHARED/mqtt_loadgen.c" -nt "$LOADGEN" ]; then
    mkdir -p "$BUILD_DIR" && gcc -O2 -Wall -o "$LOADGEN" "$SHARED/mqtt_loadgen.c" -lm || exit 2
fi
WORK=$ROOT/bench/results/groups-$(date +%Y%m%d-%H%M%S)
mkdir -p "$WORK"
ulimit -n "$(ulimit -Hn)" 2>/dev/null
# shellcheck source=/dev/null
. "$PEERS_DIR/brokers.sh"
PORT=${BASE_PORT:-21893}

broker_exec_mqttd() {
    local port=$1 dir=$2
    cat >"$dir/mqttd.ini" <<INI
[broker]
max_queued_messages = 1000000
[listener:bench]
endpoint = tcp:$port:interface=127.0.0.1:backlog=1024
allow_anonymous = true
[selectors]
chain = virtual_groups
[plugin:virtual_groups]
path = groups.db
poll_interval = 0.2
INI
    exec taskset -c "$BROKER_CPU" "$MQTTD_VENV/bin/twistd" -n --pidfile= \
        --logfile="$dir/mqttd.log" mqttd --config "$dir/mqttd.ini"
}

BPID=""
start_broker() {  # start_broker NAME DIR
    mkdir -p "$2"
    ( "broker_exec_$1" "$PORT" "$2" ) >"$2/$1.out" 2>&1 &
    BPID=$!
    for _ in $(seq 1 150); do
        ss -Hltn "sport = :$PORT" | grep -q . && return 0
        sleep 0.1
    done
    echo "bench/groups.sh: $1 did not start, see $2" >&2
    return 1
}
stop_broker() {
    kill "$BPID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BPID" 2>/dev/null
    wait "$BPID" 2>/dev/null
}
trap 'stop_broker; exit 130' INT TERM

run() {  # run BROKER PATH(topic|group) QOS REP
    local broker=$1 path=$2 qos=$3 dir=$WORK/$1-$2-qos$3-$4 topic=bench/fanout
    start_broker "$broker" "$dir" || return
    sleep 0.5
    [ "$path" = group ] && topic='$group/bench/fanout'
    taskset -c "${GEN_CPU:-1}" "$LOADGEN" -h 127.0.0.1 -p "$PORT" --broker-pid "$BPID" \
        --label "$path-qos$qos broker=$broker rep=$4" --pubs 1 --subs 10000 --qos "$qos" \
        --size 64 --same-topic --topic "$topic" \
        --filter "$([ "$path" = group ] && echo bench/unused || echo bench/fanout)" \
        --window 10 --refill 1 --max-outstanding 100000 --src-addrs 3 \
        --src-base "127.$(( 1 + $$ % 250 )).0.1" --setup-timeout 60 \
        --warmup "${WARMUP_S:-3}" --measure "${MEASURE_S:-10}" --drain "${DRAIN_S:-2}" \
        >"$dir/line" 2>"$dir/loadgen.err" &
    local lg=$!
    if [ "$path" = group ]; then
        # The generator's pid names its clients; receivers are lg<PID>-s0 ... -s9999.
        "$MQTTD_VENV/bin/python" -m mqttd groups --file "$dir/groups.db" create bench \
            $(seq -f "lg$lg-s%.0f" 0 9999) || echo "bench/groups.sh: mqttd groups failed" >&2
    fi
    wait "$lg"
    stop_broker
    cat "$dir/line"
}

for rep in $(seq 1 "$REPS"); do
    for qos in 0 1; do
        run mqttd topic "$qos" "$rep"
        run mqttd group "$qos" "$rep"
        run mosquitto topic "$qos" "$rep"
    done
done
