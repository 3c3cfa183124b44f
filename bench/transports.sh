#!/usr/bin/env bash
# bench/transports.sh [-r REPS] [-b GITREF] [-R RATE]
#
# S1 (QoS 0 fan-in) over TCP, TLS and WebSocket for mqttd and mosquitto, with bench/transports.py
# as the client (the shared C generator speaks TCP only); WebSocket twice: "ws" with 50 MQTT
# packets to a frame, "ws1" with a frame each, as MQTT.js and paho send them.  -b GITREF adds the
# mqttd of that commit (exported from git) as a third broker, "mqttd_before", run first in each
# repetition, and a "before" column.  -R RATE offers RATE msgs/s (open loop) instead of as many
# as the broker takes, to compare brokers' CPU at one rate below saturation.  Each repetition
# starts each broker fresh, pinned to CPU 0, with one listener per transport; the driver runs on
# CPU 1.  Prints the median of each cell.  Needs the project in .venv (the README's install),
# Debian's mosquitto and openssl; certificates are made on the spot in bench/results/ (ignored by
# git).  The driver is one Python process, which a broker can outrun: "per CPU-second" (messages
# per second of the broker's own CPU time) is the figure that compares brokers, the rate only
# where the driver kept up.  Even per CPU-second, mosquitto's figure depended on how the driver
# read: it sends each delivery on its own (a send() and, over WebSocket, a frame each), and on
# loopback a send() to a reader asleep in epoll pays for waking it, one to a busy reader does not.
# With the subscriber waiting in epoll, mosquitto's WebSocket figure ranged from 196k to 440k msgs
# per CPU-second from run to run (its kernel time per delivery 4.3 us with the reader mostly
# asleep, 1.8 us with it kept busy by other work on CPU 1); so the subscriber polls its socket every
# 0.5 ms (--poll-reader: nobody to wake, as for a subscriber on another machine), which held
# mosquitto at 306k-321k in three runs.  Over TLS the subscriber still waits in epoll.  Read the
# figures on a quiet machine.  MQTTD_PYTHONPATH runs another tree's mqttd (default: this one).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=3
BEFORE=""
RATE=0
while getopts "r:b:R:" o; do
    case $o in r) REPS=$OPTARG ;; b) BEFORE=$OPTARG ;; R) RATE=$OPTARG ;; *) exit 2 ;; esac
done
VENV=${MQTTD_VENV:-$ROOT/.venv}
[ -x "$VENV/bin/twistd" ] || { echo "bench/transports.sh: no $VENV/bin/twistd; run the README's install first" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "bench/transports.sh: needs mosquitto (apt-get install mosquitto)" >&2; exit 2; }
WORK=$ROOT/bench/results/transports-$(date +%Y%m%d-%H%M%S)
mkdir -p "$WORK"
if [ -n "$BEFORE" ]; then
    mkdir -p "$WORK/before"
    git -C "$ROOT" archive "$BEFORE" | tar -x -C "$WORK/before" || { echo "bench/transports.sh: cannot export $BEFORE" >&2; exit 2; }
fi
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -CA ca.pem -CAkey ca.key \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" -keyout server.key -out server.pem 2>/dev/null
# mosquitto started as root reads its files after switching to the mosquitto user.
chmod a+r server.key

cat >mqttd.ini <<INI
[broker]
max_queued_messages = 1000000
[listener:tcp]
endpoint = tcp:22883:interface=127.0.0.1:backlog=1024
allow_anonymous = true
[listener:tls]
endpoint = tcp:22884:interface=127.0.0.1:backlog=1024
certificate = server.pem
private_key = server.key
allow_anonymous = true
[listener:ws]
endpoint = tcp:22885:interface=127.0.0.1:backlog=1024
protocol = websocket
allow_anonymous = true
INI
cat >mosquitto.conf <<CONF
per_listener_settings false
allow_anonymous true
max_queued_messages 1000000
listener 23883 127.0.0.1
listener 23884 127.0.0.1
certfile $WORK/server.pem
keyfile $WORK/server.key
listener 23885 127.0.0.1
protocol websockets
CONF

PID=""
wait_port() {
    for _ in $(seq 1 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done
    echo "bench/transports.sh: nothing listening on $1; see $WORK" >&2
    return 1
}
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; PID=""; }
trap stop EXIT
drive() {  # drive BROKER BASEPORT
    taskset -c 1 "$VENV/bin/python" "$ROOT/bench/transports.py" --warmup 2 --measure 6 --rate "$RATE" --poll-reader --broker-pid "$PID" \
        "tcp:127.0.0.1:$2" "tls:127.0.0.1:$(($2 + 1)):$WORK/ca.pem" "ws:127.0.0.1:$(($2 + 2))/mqtt" \
        "ws1:127.0.0.1:$(($2 + 2))/mqtt" |
        sed "s/^/$1 rep=$rep /" | tee -a raw.txt
}
# twistd, a console script, would import the installed mqttd: run this tree's by default.
TREE=${MQTTD_PYTHONPATH:-$ROOT}
for rep in $(seq 1 "$REPS"); do
    if [ -n "$BEFORE" ]; then
        PYTHONPATH=$WORK/before taskset -c 0 "$VENV/bin/twistd" -n --pidfile= --logfile=mqttd_before.log \
            mqttd --config mqttd.ini &
        PID=$!
        wait_port 22885; drive mqttd_before 22883; stop
    fi
    PYTHONPATH=$TREE taskset -c 0 "$VENV/bin/twistd" -n --pidfile= --logfile=mqttd.log mqttd --config mqttd.ini &
    PID=$!
    wait_port 22885; drive mqttd 22883; stop
    taskset -c 0 mosquitto -c mosquitto.conf >mosquitto.log 2>&1 &
    PID=$!
    wait_port 23885; drive mosquitto 23883; stop
done
python3 - raw.txt <<'PY'
import collections, statistics, sys
cells = collections.defaultdict(list)
for line in open(sys.argv[1]):
    broker, _, _, target, rate, cpu = line.split()
    value = lambda field: float(field.split("=")[1])
    cells[(broker, target.split(":")[0])].append((value(rate), value(cpu)))
brokers = [b for b in ("mqttd_before", "mqttd", "mosquitto") if any(k[0] == b for k in cells)]
print("S1 QoS 0 fan-in: median msgs/s (broker CPU %), then msgs per second of broker CPU;"
      " ratio = mqttd/mosquitto")
print(f"{'':5}" + "".join(f"{b:>22}" for b in brokers) + f"{'ratio':>7}"
      + "".join(f"{b + ' per CPU-s':>26}" for b in brokers) + f"{'ratio':>7}")
for kind in ("tcp", "tls", "ws", "ws1"):
    rates = [statistics.median_low(sorted(cells[(b, kind)])) for b in brokers]
    perCpu = [statistics.median(r * 100 / c for r, c in cells[(b, kind)] if c > 0) for b in brokers]
    m, q = brokers.index("mqttd"), brokers.index("mosquitto")
    print(f"{kind:5}" + "".join(f"{r:>15.0f} ({c:>3.0f}) " for r, c in rates)
          + f"{rates[m][0] / rates[q][0]:>7.2f}" + "".join(f"{p:>26.0f}" for p in perCpu)
          + f"{perCpu[m] / perCpu[q]:>7.2f}")
PY
echo "raw: $WORK/raw.txt" >&2
