#!/usr/bin/env bash
# bench/stores.sh [-r REPS]
#
# What persistence costs: S3 (8 QoS 1 publishers -> 1 QoS 1 subscriber, 64 B, window 10 per
# publisher) with persistent sessions (clean session 0, so every delivery is the store's
# business), on mqttd with each store (memory, SQLite, file and Redis, sync and batched) and on
# mosquitto with persistence on; then the idle RSS of mqttd with the default configuration and of
# mosquitto.  Each run goes through bench/run (fresh broker pinned to CPU 0, generator to CPU 1,
# store files removed before each start).  The shared load generator always connects with clean
# session 1, so a copy with that flag cleared is built next to it.  Prints one table.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=2
while getopts "r:" o; do
    case $o in r) REPS=$OPTARG ;; *) exit 2 ;; esac
done
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/results/build}
mkdir -p "$BUILD_DIR"
SOURCE=$BUILD_DIR/mqtt_loadgen_persistent.c
sed 's|p\[n++\] = 0x02;       /\* clean session \*/|p[n++] = 0x00;       /* persistent session */|' \
    "$SHARED/mqtt_loadgen.c" >"$SOURCE"
grep -q "persistent session" "$SOURCE" || { echo "bench/stores.sh: cannot clear the clean session flag" >&2; exit 2; }
gcc -O2 -Wall -o "$BUILD_DIR/mqtt_loadgen_persistent" "$SOURCE" -lm || exit 2
export LOADGEN=$BUILD_DIR/mqtt_loadgen_persistent BUILD_DIR

store() {  # store PLUGIN DURABILITY: the ini lines of that store, in the run's directory
    printf '[store]\nplugin = %s\n[plugin:%s]\npath = {dir}/store-%s\ndurability = %s\n' "$1" "$1" "$1" "$2"
}
OUT=$ROOT/bench/results/stores-$(date +%Y%m%d-%H%M%S).txt
mkdir -p "$(dirname "$OUT")"
run() {  # run NAME BROKER EXTRA_INI
    local raw
    raw=$(MQTTD_EXTRA_INI=$3 BENCH_BROKERS=$2 "$ROOT/bench/run" -r "$REPS" -s S3 2>&1 >/dev/null |
        sed -n 's/^# raw results: //p')
    grep "accepted=1" "$raw" | sed "s/^/$1 /" >>"$OUT"
}
run memory mqttd ""
run sqlite-sync mqttd "$(store sqlite sync)"
run sqlite-batched mqttd "$(store sqlite batched)"
run file-sync mqttd "$(store file sync)"
run file-batched mqttd "$(store file batched)"
# The Redis store (sync and batched) on a redis-server of its own with appendfsync always, the
# guarantee of the sync row; Redis runs on whichever CPU is free, so its CPU is not the broker's.
# Emptied before each repetition, as the file stores are.
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    REDIS_DIR=$(mktemp -d)
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --save '' \
        --appendonly yes --appendfsync always --daemonize yes --pidfile "$REDIS_DIR/redis.pid" \
        --logfile "$REDIS_DIR/redis.log"
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
    for durability in sync batched; do
        for _ in $(seq "$REPS"); do
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            REPS=1 run "redis-$durability" mqttd "$(printf '[store]\nplugin = redis\n[plugin:redis]\nurl = redis://127.0.0.1:%s/0\ndurability = %s\n' "$REDIS_PORT" "$durability")"
        done
    done
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
    rm -rf "$REDIS_DIR"
fi
run mosquitto-persistent mosquitto_persistent ""

idle() {  # idle COMMAND...: RSS in kB of a broker left idle for 3 s
    "$@" >/dev/null 2>&1 &
    local pid=$!
    sleep 3
    awk '/VmRSS/ {print $2}' "/proc/$pid/status"
    kill "$pid"
    wait "$pid" 2>/dev/null
}
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[listener:local]\nendpoint = tcp:%s:interface=127.0.0.1\nallow_anonymous = true\n' "$PORT" >"$WORK/mqttd.ini"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" >"$WORK/mosquitto.conf"
MQTTD_RSS=$(cd "$WORK" && PYTHONPATH=$ROOT idle "${MQTTD_VENV:-$ROOT/.venv}/bin/twistd" -n --pidfile= \
    --logfile="$WORK/mqttd.log" mqttd --config "$WORK/mqttd.ini")
MOSQUITTO_RSS=$(idle mosquitto -c "$WORK/mosquitto.conf")
rm -rf "$WORK"
echo "idle mqttd_rss_kb=$MQTTD_RSS mosquitto_rss_kb=$MOSQUITTO_RSS" >>"$OUT"
python3 "$ROOT/bench/stores.py" "$OUT"
