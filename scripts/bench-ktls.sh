#!/usr/bin/env bash
# Terminator CPU per GiB relayed: kernel TLS path vs userspace path.
#
# tlsplice (release, 1 worker) runs pinned to one core in front of an echo
# backend; tlsplice-load drives bulk traffic both ways from the other core.
# For each path, ROUNDS rounds of DURATION; reports the median of terminator
# CPU seconds (utime+stime of the tlsplice process) per GiB of plaintext
# relayed, and MB/s. The kTLS rows run only where the kernel offers the tls
# ULP (run as root so it can be loaded); elsewhere the script says so and
# measures the userspace path alone. Loopback only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-4}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

cargo build --release --quiet --bin tlsplice --bin tlsplice-load
bin=target/release/tlsplice
load=target/release/tlsplice-load
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

source scripts/lib/dev-pki.sh
dev_pki "$bin" "$work/pki" "$work/qs.log"

# Echo backend on the server's core (its CPU is not counted).
python3 - "$work/backend.port" <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(128)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
def echo(c):
    with c:
        while True:
            b = c.recv(262144)
            if not b: break
            c.sendall(b)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
PY
pids+=($!)
for _ in $(seq 50); do [ -s "$work/backend.port" ] && break; sleep 0.1; done
backend="127.0.0.1:$(cat "$work/backend.port")"

ktls_available=no
modprobe tls 2>/dev/null || true
if grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null; then ktls_available=yes; fi
modes=(off)
if [ "$ktls_available" = yes ]; then
  modes+=(require)
else
  echo "kernel TLS is not available here (no 'tls' in tcp_available_ulp): measuring the userspace path only"
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

declare -A results
for mode in "${modes[@]}"; do
  for round in $(seq "$ROUNDS"); do
    log="$work/serve-$mode-$round.log"
    taskset -c "$SERVER_CPU" "$bin" serve --listen 127.0.0.1:0 --workers 1 --ktls "$mode" \
      --cert "$work/pki/server.crt" --key "$work/pki/server.key" \
      --client-ca "$work/pki/ca.crt" --backend "$backend" 2>"$log" &
    srv=$!
    pids+=("$srv")
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | awk '{print $3}')
    before=$(cpu_ticks "$srv")
    "$load" bulk --target "$addr" --server-name localhost --ca "$work/pki/ca.crt" \
      --cert "$work/pki/client.crt" --key "$work/pki/client.key" --direction both \
      --connections "$CONNECTIONS" --duration "$DURATION" --cpus "$CLIENT_CPU" \
      --json "$work/load.json" >/dev/null
    after=$(cpu_ticks "$srv")
    kill -TERM "$srv"; wait "$srv" || true
    path_seen=$(grep -o 'path=[a-z]*' "$log" | sort | uniq -c | tr '\n' ' ')
    read -r bytes mbs < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["bytes_up"] + s["bytes_down"], round(s["mb_per_s"], 1))' "$work/load.json")
    cpu=$(python3 -c "print(($after - $before) / $tick)")
    per_gib=$(python3 -c "print(round($cpu / ($bytes / 2**30), 3) if $bytes else 'nan')")
    echo "$mode round $round: ${mbs} MB/s, terminator ${cpu}s CPU, ${per_gib} CPU-s/GiB ($path_seen)"
    results[$mode]+="$per_gib,$mbs "
  done
done

echo
echo "| path | median terminator CPU-s per GiB | median MB/s (both ways) |"
echo "|---|---|---|"
for mode in "${modes[@]}"; do
  python3 - "$mode" ${results[$mode]} <<'PY'
import statistics, sys
mode, rows = sys.argv[1], [r.split(",") for r in sys.argv[2:]]
name = {"off": "userspace (tls::traffic)", "require": "kernel TLS + splice"}[mode]
print(f"| {name} | {statistics.median(float(r[0]) for r in rows):.3f} | {statistics.median(float(r[1]) for r in rows):.1f} |")
PY
done
echo
echo "machine: $(nproc) cores, $(uname -r), kTLS available: $ktls_available; rounds: $ROUNDS x $DURATION"
