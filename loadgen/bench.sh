#!/usr/bin/env bash
# Client CPU per request, wrk vs bypass-load, against nginx's in-memory
# `return 200` on one CPU (taskset -c 0) with the client on the other (-c 1).
#
#   loadgen/bench.sh            # 5 alternating runs of 10 s each, medians
#   RUNS=3 DURATION=5 loadgen/bench.sh
#
# Needs nginx, wrk and GNU time (apt-get install nginx-light wrk time).
# Build first: cargo build --release -p bypass-load (BIN overrides the binary).
set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
here=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$here/../target}/release/bypass-load}
EXTRA=${EXTRA:-}

for tool in nginx wrk /usr/bin/time taskset "$BIN"; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found" >&2; exit 2; }
done

tmp=$(mktemp -d)
nginx_pid=
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# A port nobody listens on (other benchmarks may share the machine).
port=
for p in $(shuf -i 20000-60000 -n 50); do
    if ! ss -ltnH "sport = :$p" | grep -q .; then port=$p; break; fi
done
[ -n "$port" ] || { echo "bench.sh: no free port" >&2; exit 2; }

cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
error_log $tmp/error.log;
pid $tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    server {
        listen 127.0.0.1:$port;
        location = /null { return 200 "hello"; }
    }
}
CONF
taskset -c 0 nginx -c "$tmp/nginx.conf" -p "$tmp" &
nginx_pid=$!
url="http://127.0.0.1:$port/null"
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# cpu_us_per_request USER SYS REQUESTS
per_req() { awk -v u="$1" -v s="$2" -v n="$3" 'BEGIN { printf "%.2f", (u + s) * 1e6 / n }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: > "$tmp/wrk.txt"
: > "$tmp/bl.txt"
for i in $(seq "$RUNS"); do
    /usr/bin/time -f '%U %S' -o "$tmp/time" taskset -c 1 \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" > "$tmp/out"
    read -r u s < "$tmp/time"
    n=$(awk '/requests in/ { print $1 }' "$tmp/out")
    rps=$(awk '/Requests\/sec/ { print $2 }' "$tmp/out")
    echo "$(per_req "$u" "$s" "$n") $rps" >> "$tmp/wrk.txt"
    echo "run $i wrk:         $(per_req "$u" "$s" "$n") us/request  $rps req/s  (user $u s, sys $s s)"

    # shellcheck disable=SC2086
    /usr/bin/time -f '%U %S' -o "$tmp/time" taskset -c 1 \
        "$BIN" -t 1 -c "$CONNS" -d "${DURATION}s" -q --json "$tmp/out.json" $EXTRA "$url" > "$tmp/out"
    read -r u s < "$tmp/time"
    n=$(grep -o '"requests": [0-9]*' "$tmp/out.json" | awk '{ print $2 }')
    rps=$(grep -o '"rps": [0-9.e+]*' "$tmp/out.json" | awk '{ printf "%.2f", $2 }')
    echo "$(per_req "$u" "$s" "$n") $rps" >> "$tmp/bl.txt"
    echo "run $i bypass-load: $(per_req "$u" "$s" "$n") us/request  $rps req/s  (user $u s, sys $s s)"
done

wcpu=$(cut -d' ' -f1 "$tmp/wrk.txt" | median)
wrps=$(cut -d' ' -f2 "$tmp/wrk.txt" | median)
bcpu=$(cut -d' ' -f1 "$tmp/bl.txt" | median)
brps=$(cut -d' ' -f2 "$tmp/bl.txt" | median)
echo
echo "median of $RUNS runs, $CONNS connections, ${DURATION}s each:"
echo "  wrk          $wcpu us CPU/request   $wrps req/s"
echo "  bypass-load  $bcpu us CPU/request   $brps req/s"
awk -v b="$bcpu" -v w="$wcpu" -v br="$brps" -v wr="$wrps" \
    'BEGIN { printf "  ratio        %.2fx CPU/request      %.2fx req/s\n", b / w, br / wr }'
