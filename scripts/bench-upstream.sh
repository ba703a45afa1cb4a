#!/usr/bin/env bash
# TLS to backends (`backend_tls`): what re-encryption costs the terminator.
#
#   bash scripts/bench-upstream.sh
#
# tlsplice (release, 1 worker) runs pinned to SERVER_CPU in front of the same
# echo backend, reached either directly (plaintext) or through stunnel4 in
# server mode (TLS 1.3, client certificate required) on CLIENT_CPU, where
# tlsplice-load also runs. Rows, each the median of ROUNDS rounds of
# DURATION:
# - bulk both ways on one connection: terminator CPU-seconds per GiB with a
#   plaintext backend, with a TLS backend in userspace on both legs, and
#   (where the kernel offers the tls ULP) with both legs in the kernel;
# - full client handshakes (8 connections, 16 B echo each): handshakes/s and
#   terminator CPU per 1000, with a plaintext backend and with a TLS backend
#   with and without upstream session reuse (`--backend-tls-no-session-reuse`).
# Terminator CPU is utime+stime of the tlsplice process from /proc; stunnel's
# own CPU is not counted (it is on the other core). Loopback only; every run
# is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

command -v stunnel4 >/dev/null || bash scripts/install-test-deps.sh >/dev/null
cargo build --release --quiet --bin tlsplice --bin tlsplice-load
bin=$PWD/target/release/tlsplice
load=$PWD/target/release/tlsplice-load
work=$(mktemp -d /tmp/bench-upstream.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

source scripts/lib/dev-pki.sh
dev_pki "$bin" "$work/pki" "$work/qs.log"
pki=$work/pki

gcc -O2 -o "$work/echo-backend" scripts/compare/echo-backend.c
taskset -c "$CLIENT_CPU" "$work/echo-backend" "$work/backend.port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/backend.port" ] && break; sleep 0.1; done
plain="127.0.0.1:$(cat "$work/backend.port")"

stunnel_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[up]
accept = 127.0.0.1:$stunnel_port
connect = $plain
cert = $pki/server.crt
key = $pki/server.key
CAfile = $pki/ca.crt
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
EOF
taskset -c "$CLIENT_CPU" stunnel4 "$work/stunnel.conf" 2>"$work/stunnel.log" &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$stunnel_port") 2>/dev/null && break; sleep 0.1; done
tls="127.0.0.1:$stunnel_port"
upstream=(--backend-tls-ca "$pki/ca.crt" --backend-tls-cert "$pki/client.crt"
  --backend-tls-key "$pki/client.key" --backend-tls-name localhost)

ktls_available=no
modprobe tls 2>/dev/null || true
grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null && ktls_available=yes

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
common=(--server-name localhost --ca "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key"
  --tls13-only --cpus "$CLIENT_CPU" --duration "$DURATION" --json "$work/load.json")

# One measurement: name, load mode args..., -- tlsplice args...
# Prints "name value mbs_or_rate resumed_share".
measure() {
  local name=$1 kind=$2; shift 2
  local load_args=() serve_args=()
  while [ "$1" != -- ]; do load_args+=("$1"); shift; done
  shift
  serve_args=("$@")
  local log=$work/serve.log
  taskset -c "$SERVER_CPU" "$bin" serve --listen 127.0.0.1:0 --workers 1 \
    --cert "$pki/server.crt" --key "$pki/server.key" --client-ca "$pki/ca.crt" \
    "${serve_args[@]}" 2>"$log" &
  local srv=$!
  pids+=("$srv")
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  local addr before after
  addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | awk '{print $3}')
  before=$(cpu_ticks "$srv")
  rm -f "$work/load.json"
  timeout 120 "$load" "${load_args[@]}" --target "$addr" "${common[@]}" >"$work/load.txt" 2>&1 || {
    echo "$name: load generator failed:" >&2
    tail -n 5 "$work/load.txt" >&2
  }
  after=$(cpu_ticks "$srv")
  kill -TERM "$srv"; wait "$srv" 2>/dev/null || true
  local resumed full paths
  resumed=$(grep -c 'upstream=resumed' "$log" || true)
  full=$(grep -c 'upstream=full' "$log" || true)
  paths=$({ grep -o ' path=[a-z]*' "$log" || true; } | sort | uniq -c | awk '{sub("path=", "", $2); printf "%s%s:%s", sep, $2, $1; sep=","}')
  python3 - "$work/load.json" "$((after - before))" "$tick" "$kind" "$name" "$resumed" "$full" "$paths" <<'PY'
import json, os, sys
if not os.path.exists(sys.argv[1]):
    print(sys.argv[5], "nan nan - -")
    sys.exit()
j = json.load(open(sys.argv[1]))
ticks, tick, kind, name = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
resumed, full, paths = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
cpu = ticks / tick
share = f"{resumed / (resumed + full):.0%}" if resumed + full else "-"
if kind == "bulk":
    gib = (j["bytes_up"] + j["bytes_down"]) / 2**30
    print(name, f"{cpu / gib:.3f}" if gib else "nan", f"{j['mb_per_s']:.0f}", share, paths)
else:
    ops = j["ops"]
    print(name, f"{cpu * 1000 / ops:.3f}" if ops else "nan", f"{j['ops_per_s']:.0f}", share, paths)
PY
}

results=$work/results
: >"$results"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  measure bulk_plain bulk bulk --direction both --connections 1 -- --backend "$plain" --ktls off >>"$results"
  measure bulk_tls_userspace bulk bulk --direction both --connections 1 -- --backend "$tls" --ktls off "${upstream[@]}" >>"$results"
  if [ "$ktls_available" = yes ]; then
    measure bulk_tls_ktls bulk bulk --direction both --connections 1 -- --backend "$tls" --ktls require "${upstream[@]}" >>"$results"
  fi
  measure hs_plain hs handshake --connections 8 --echo 16 -- --backend "$plain" >>"$results"
  measure hs_tls_reuse hs handshake --connections 8 --echo 16 -- --backend "$tls" "${upstream[@]}" >>"$results"
  measure hs_tls_no_reuse hs handshake --connections 8 --echo 16 -- --backend "$tls" "${upstream[@]}" --backend-tls-no-session-reuse >>"$results"
done

python3 - "$results" "$ktls_available" "$ROUNDS" "$DURATION" <<'PY'
import statistics, sys, os
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
label = {
    "bulk_plain": ("bulk, plaintext backend", "CPU-s/GiB", "MB/s"),
    "bulk_tls_userspace": ("bulk, TLS backend, both legs in userspace", "CPU-s/GiB", "MB/s"),
    "bulk_tls_ktls": ("bulk, TLS backend, both legs in the kernel", "CPU-s/GiB", "MB/s"),
    "hs_plain": ("full client handshakes, plaintext backend", "CPU-s/1000", "hs/s"),
    "hs_tls_reuse": ("full client handshakes, TLS backend, upstream resumption", "CPU-s/1000", "hs/s"),
    "hs_tls_no_reuse": ("full client handshakes, TLS backend, no upstream resumption", "CPU-s/1000", "hs/s"),
}
print("| test | terminator CPU | rate | upstream resumed | connections by path (last round) |")
print("|---|--:|--:|--:|---|")
for key, (text, unit, rate) in label.items():
    if key not in by:
        continue
    rs = by[key]
    cpu = statistics.median(float(r[1]) for r in rs)
    val = statistics.median(float(r[2]) for r in rs)
    print(f"| {text} | {cpu:.3f} {unit} | {val:,.0f} {rate} | {rs[-1][3]} | {rs[-1][4] if len(rs[-1]) > 4 else ''} |")
print()
print(f"machine: {os.cpu_count()} cores, {os.uname().release}, kTLS available: {sys.argv[2]}; medians of {sys.argv[3]} rounds x {sys.argv[4]}")
PY
