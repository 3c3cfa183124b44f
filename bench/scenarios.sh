#!/usr/bin/env bash
# bench/scenarios.sh HOST PORT SCENARIO [SCENARIO ...]
#
# One result line per scenario against a running broker, in the format of
# ../shared/bench/bench.sh, which runs S1 S2 S3 S3L S4 S4b.  This script adds
# the project's own scenarios on the same load generator:
#   S5   1 QoS 1 publisher -> 10,000 QoS 1 subscribers on one topic
#   S6a  S1 with 1 KB payloads
#   S6b  S1 with 64 KB payloads
#   S7   IM: 2,000 persistent QoS 1 users in 500 Zipf-sized groups, 2,000
#        msgs/s (80 % to groups, 20 % direct), 10 % of users away for 10 s
#        at a time (bench/im_loadgen.c)
#   S7L  S7 with 10,000 users (2,500 groups, largest 735) at 4,000 msgs/s
#   S7S  S7's users, saturation: from 1,000 msgs/s up by 25 % per 8 s phase
#        until the p99 passes 50 ms; the line names the last rate that held
# S7* address groups by S7_ADDR: "topic" (default; subscriptions, any broker)
# or "vgroup" (mqttd's virtual groups, which the broker must have been given:
# `bench/scenarios.sh --groups S7` prints them as [plugin:virtual_groups] lines).
set -u
if [ "${1-}" = --groups ]; then GROUPS_ONLY=$2; set -- - - "$2"; fi
[ $# -ge 3 ] || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
HOST=$1 PORT=$2
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
BUILD_DIR=${BUILD_DIR:-$ROOT/bench/results/build}
LOADGEN=${LOADGEN:-$BUILD_DIR/mqtt_loadgen}
IM_LOADGEN=$BUILD_DIR/im_loadgen
if [ ! -x "$IM_LOADGEN" ] || [ "$ROOT/bench/im_loadgen.c" -nt "$IM_LOADGEN" ]; then
    mkdir -p "$BUILD_DIR" && gcc -O2 -Wall -o "$IM_LOADGEN" "$ROOT/bench/im_loadgen.c" -lm || exit 2
fi
export LOADGEN BUILD_DIR
s7_args() {  # the load of S7, S7L, S7S
    case $1 in
    S7L) echo --users 10000 --rate 4000 ;;
    S7S) echo --users 2000 --rate 1000 --saturate --warmup 3 --measure 5 ;;
    *)   echo --users 2000 --rate 2000 ;;
    esac
}
if [ -n "${GROUPS_ONLY-}" ]; then
    # shellcheck disable=SC2046
    exec "$IM_LOADGEN" --print-groups $(s7_args "$GROUPS_ONLY")
fi
if [ ! -x "$LOADGEN" ] || [ "$SHARED/mqtt_loadgen.c" -nt "$LOADGEN" ]; then
    mkdir -p "$BUILD_DIR" && gcc -O2 -Wall -o "$LOADGEN" "$SHARED/mqtt_loadgen.c" -lm || exit 2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null

BROKER_PID=${BROKER_PID:-$(ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)}
PIN=()
[ -n "${GEN_CPU-1}" ] && PIN=(taskset -c "${GEN_CPU-1}")
PHASES=(--warmup "${WARMUP_S:-3}" --measure "${MEASURE_S:-10}" --drain "${DRAIN_S:-2}")
T="bench/$$"

lg() {
    local label=$1; shift
    "${PIN[@]}" "$LOADGEN" -h "$HOST" -p "$PORT" ${BROKER_PID:+--broker-pid "$BROKER_PID"} \
        --label "$label" "$@"
}
fanin() {  # fanin LABEL SIZE
    lg "$1" --pubs 8 --subs 1 --qos 0 --size "$2" --topic "$T/" --filter "$T/#" \
        --max-outstanding 10000 "${PHASES[@]}"
}

status=0
for s in "$@"; do
    case $s in
    S5)  # 10,000 subscribers from 3 loopback source addresses, as S4 spreads them
         lg "S5 fanout_qos1_10k" --pubs 1 --subs "${S5_SUBS:-10000}" --qos 1 --size 64 \
             --same-topic --topic "$T/fanout" --filter "$T/fanout" --window 10 --refill 1 \
             --max-outstanding 100000 --src-addrs 3 --src-base "127.$(( 1 + $$ % 250 )).0.1" \
             --setup-timeout 60 "${PHASES[@]}" || status=1 ;;
    S6a) fanin "S6a fanin_qos0_1k" 1024 || status=1 ;;
    S6b) fanin "S6b fanin_qos0_64k" 65536 || status=1 ;;
    S7 | S7L | S7S)
         # one line per saturation phase on stderr, the verdict on stdout
         # shellcheck disable=SC2046
         "${PIN[@]}" "$IM_LOADGEN" -h "$HOST" -p "$PORT" ${BROKER_PID:+--broker-pid "$BROKER_PID"} \
             --label "$s im_${S7_ADDR:-topic}" --addr "${S7_ADDR:-topic}" $(s7_args "$s") \
             --src-addrs 3 --src-base "127.$(( 1 + $$ % 250 )).0.1" \
             | tee >(cat >&2) | tail -1
         [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    *)   BROKER_PID=$BROKER_PID "$SHARED/bench.sh" "$HOST" "$PORT" "$s" || status=1 ;;
    esac
done
exit $status
