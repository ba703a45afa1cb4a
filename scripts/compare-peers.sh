#!/usr/bin/env bash
# Side-by-side comparison of tlsplice with nginx (stream), HAProxy and stunnel4
# as mutual-TLS terminators in TCP mode.
#
#   bash scripts/compare-peers.sh
#
# Every terminator runs with one worker/thread pinned to SERVER_CPU (taskset),
# in front of the same epoll echo backend (scripts/compare/echo-backend.c) on
# CLIENT_CPU, with the same ECDSA P-256 PKI (from `tlsplice quickstart`), client
# certificate required, TLS 1.3 only. tlsplice-load runs on CLIENT_CPU and
# offers only TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519, so every peer
# negotiates the same thing.
#
# Before a peer is timed it is probed with `openssl s_client`: with the client
# certificate a line must come back through the echo backend, without one it
# must not. A peer that fails the probe (or cannot be installed or started) is
# reported as such and not timed.
#
# ROUNDS rounds; in each round every peer in turn is started fresh, holds
# IDLE_CONNS idle mTLS connections (RSS), is restarted, and runs the four load
# tests of DURATION each. Rounds interleave the peers so that drifting
# background load hits them alike; the table shows medians over the rounds and
# tlsplice's ratio to each peer. Terminator CPU is utime+stime (from /proc) of
# all its processes over the test; RSS is the sum of VmRSS of its processes.
#
# Loopback only; every run is bounded. Defaults finish in about 10 minutes
# when the release build is up to date. The result goes to stdout and OUT.
#
# Environment: ROUNDS (3), DURATION (5s), PEERS ("tlsplice nginx haproxy
# stunnel"), SERVER_CPU (0), CLIENT_CPU (1), HS_CONNECTIONS (8), RR_RATE
# (2000), RR_CONNECTIONS (16), BULK_CONNECTIONS (1), IDLE_CONNS (1000),
# QUIET_BUDGET (120: seconds in all to wait for a quiet machine before
# tests), INSTALL (1: apt-get install missing peers when root), OUT
# (docs/comparison.md; empty: stdout only), KEEP_WORK (1 keeps the temp dir),
# CHECK_LOADGEN (1: also time nginx with openssl s_time, see below).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started_at=$(date +%s)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
PEERS=${PEERS:-"tlsplice nginx haproxy stunnel"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
HS_CONNECTIONS=${HS_CONNECTIONS:-8}
RR_RATE=${RR_RATE:-2000}
RR_CONNECTIONS=${RR_CONNECTIONS:-16}
BULK_CONNECTIONS=${BULK_CONNECTIONS:-1}
IDLE_CONNS=${IDLE_CONNS:-1000}
INSTALL=${INSTALL:-1}
OUT=${OUT-docs/comparison.md}
KEEP_WORK=${KEEP_WORK:-0}
CHECK_LOADGEN=${CHECK_LOADGEN:-1}

say() { echo "[compare $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- peers
declare -A peer_note   # why a peer was not timed ("" when it was)
for p in $PEERS; do peer_note[$p]=""; done

if [ "$INSTALL" = 1 ]; then
  need=()
  command -v nginx >/dev/null || need+=(nginx)
  if ! nginx -V 2>&1 | grep -q -- '--with-stream\b' || nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
  fi
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing ${need[*]}"
      # Keep the packages' init scripts from starting system-wide daemons.
      made_policy=0
      if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
      fi
      if timeout 300 apt-get update -qq >/dev/null 2>&1 || true; then
        if ! DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
          for pkg in "${need[@]}"; do
            DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$pkg" >/dev/null 2>&1 ||
              say "could not install $pkg"
          done
        fi
      fi
      [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    else
      say "missing ${need[*]} and not root (or no apt-get): those peers are skipped"
    fi
  fi
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel || true)
NGINX_STREAM_SO=""
if command -v nginx >/dev/null && nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
  NGINX_STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so
fi
for p in $PEERS; do
  case $p in
    nginx)
      command -v nginx >/dev/null || peer_note[$p]="not installed"
      if [ -z "${peer_note[$p]}" ] && [ -n "$NGINX_STREAM_SO" ] && [ ! -e "$NGINX_STREAM_SO" ]; then
        peer_note[$p]="stream module missing (libnginx-mod-stream)"
      fi ;;
    haproxy) command -v haproxy >/dev/null || peer_note[$p]="not installed" ;;
    stunnel) [ -n "$STUNNEL" ] || peer_note[$p]="not installed" ;;
    tlsplice) ;;
    *) peer_note[$p]="unknown peer" ;;
  esac
done

say "building tlsplice and tlsplice-load (release)"
cargo build --release --bins --quiet
bin=$repo/target/release/tlsplice
load=$repo/target/release/tlsplice-load

work=$(mktemp -d /tmp/compare-peers.XXXXXX)
bg_pids=()     # everything we started in the background
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$KEEP_WORK" = 1 ]; then say "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- PKI
pki=$work/pki
source scripts/lib/dev-pki.sh
dev_pki "$bin" "$pki" "$work/quickstart.log"
for f in ca.crt server.crt server.key client.crt client.key; do
  [ -s "$pki/$f" ] || { say "quickstart did not create $pki/$f"; cat "$work/quickstart.log" >&2; exit 1; }
done
cat "$pki/server.crt" "$pki/server.key" >"$pki/server.pem"   # HAProxy wants both in one file
SNI=localhost

# ---------------------------------------------------------------- backend
gcc -O2 -o "$work/echo-backend" "$repo/scripts/compare/echo-backend.c"
taskset -c "$CLIENT_CPU" "$work/echo-backend" "$work/backend.port" &
bg_pids+=($!)
for _ in $(seq 50); do [ -s "$work/backend.port" ] && break; sleep 0.1; done
BACKEND_PID=${bg_pids[-1]}
BACKEND_PORT=$(cat "$work/backend.port")
say "echo backend on 127.0.0.1:$BACKEND_PORT (cpu $CLIENT_CPU)"

# ---------------------------------------------------------------- helpers
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# The process and all its descendants.
tree_pids() {
  local p
  for p in "$@"; do
    [ -d "/proc/$p" ] || continue
    echo "$p"
    tree_pids $(pgrep -P "$p" || true)
  done
}
# utime+stime (clock ticks) summed over the tree.
cpu_ticks() {
  local total=0 p t
  for p in $(tree_pids "$1"); do
    t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
# VmRSS (KiB) summed over the tree.
rss_kib() {
  local total=0 p r
  for p in $(tree_pids "$1"); do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    total=$((total + ${r:-0}))
  done
  echo "$total"
}
# "comm:cpus_allowed" for every thread of the tree (to check the pinning).
affinity() {
  local p t
  for p in $(tree_pids "$1"); do
    for t in /proc/"$p"/task/*; do
      printf '%s:%s\n' "$(cat "$t/comm" 2>/dev/null)" "$(awk '/^Cpus_allowed_list/ {print $2}' "$t/status" 2>/dev/null)"
    done
  done | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}'
}
TICK=$(getconf CLK_TCK)
# The machine may be shared: before each test wait (up to 10 s, QUIET_BUDGET
# seconds over the whole run) until both cpus were less than 15% busy over
# half a second, so a test does not start in the middle of someone's build.
QUIET_BUDGET=${QUIET_BUDGET:-120}
quiet_waited=0
wait_quiet() {
  local start=$SECONDS a0 a1 z0 z1
  while [ $((SECONDS - start)) -lt 10 ] && [ "$quiet_waited" -lt "$QUIET_BUDGET" ]; do
    a0=$(cpu_jiffies "$SERVER_CPU"); z0=$(cpu_jiffies "$CLIENT_CPU")
    sleep 0.5
    a1=$(cpu_jiffies "$SERVER_CPU"); z1=$(cpu_jiffies "$CLIENT_CPU")
    if awk -v a="$a0 $a1" -v z="$z0 $z1" 'BEGIN {
         split(a, x); split(z, y)
         bx = (x[6] > x[3]) ? (x[4] - x[1]) / (x[6] - x[3]) : 0
         by = (y[6] > y[3]) ? (y[4] - y[1]) / (y[6] - y[3]) : 0
         exit !(bx < 0.15 && by < 0.15) }'; then
      break
    fi
  done
  quiet_waited=$((quiet_waited + SECONDS - start))
}
# "busy steal total" jiffies of one cpu from /proc/stat: busy = user, nice,
# system, irq, softirq; steal = taken by the hypervisor; total includes idle
# and iowait (guest time is already inside user).
cpu_jiffies() {
  awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6 - $9, $9, t}' /proc/stat
}
wait_listen() {  # port pid -> 0 once something listens on port (while pid lives)
  local i
  for i in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

# Start a peer on a fresh port; sets PEER_PID and PEER_PORT. Returns non-zero
# (with the reason on stderr) when it does not come up.
start_peer() {
  local peer=$1 dir=$work/$1
  mkdir -p "$dir"
  PEER_PORT=$(free_port)
  case $peer in
    tlsplice)
      taskset -c "$SERVER_CPU" "$bin" serve --workers 1 --listen "127.0.0.1:$PEER_PORT" \
        --cert "$pki/server.crt" --key "$pki/server.key" --client-ca "$pki/ca.crt" \
        --backend "127.0.0.1:$BACKEND_PORT" >>"$dir/log" 2>&1 &
      ;;
    nginx)
      local mask="1" i
      for ((i = 0; i < SERVER_CPU; i++)); do mask+="0"; done
      {
        [ -n "$NGINX_STREAM_SO" ] && echo "load_module $NGINX_STREAM_SO;"
        cat <<EOF
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile 16384;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
stream {
    upstream backend { server 127.0.0.1:$BACKEND_PORT; }
    server {
        listen 127.0.0.1:$PEER_PORT ssl;
        ssl_certificate $pki/server.crt;
        ssl_certificate_key $pki/server.key;
        ssl_client_certificate $pki/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        proxy_pass backend;
    }
}
EOF
      } >"$dir/nginx.conf"
      taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >>"$dir/log" 2>&1 &
      ;;
    haproxy)
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    cpu-map 1/1 $SERVER_CPU
    maxconn 8192
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend tls
    bind 127.0.0.1:$PEER_PORT ssl crt $pki/server.pem ca-file $pki/ca.crt verify required ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256
    default_backend echo
backend echo
    server echo 127.0.0.1:$BACKEND_PORT
EOF
      taskset -c "$SERVER_CPU" haproxy -db -f "$dir/haproxy.cfg" >>"$dir/log" 2>&1 &
      ;;
    stunnel)
      # stunnel has no worker setting: it is one process with a thread per
      # connection, all confined to SERVER_CPU by taskset.
      cat >"$dir/stunnel.conf" <<EOF
foreground = yes
pid =
output = $dir/stunnel.log
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[tls]
accept = 127.0.0.1:$PEER_PORT
connect = 127.0.0.1:$BACKEND_PORT
cert = $pki/server.crt
key = $pki/server.key
CAfile = $pki/ca.crt
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
EOF
      taskset -c "$SERVER_CPU" "$STUNNEL" "$dir/stunnel.conf" >>"$dir/log" 2>&1 &
      ;;
  esac
  PEER_PID=$!
  bg_pids+=("$PEER_PID")
  if ! wait_listen "$PEER_PORT" "$PEER_PID"; then
    say "$peer did not start listening; its log:"
    tail -n 20 "$dir/log" "$dir"/*.log 2>/dev/null >&2 || true
    stop_peer
    return 1
  fi
  sleep 0.3   # let worker processes settle (nginx forks its worker)
}
stop_peer() {  # [peer round what]: an abnormal exit is recorded under them
  local pids rc=0 killed=0
  pids=$(tree_pids "$PEER_PID")
  kill -TERM "$PEER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PEER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PEER_PID" 2>/dev/null && killed=1
  # Anything still there (a worker that ignored the master) goes by pid.
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$PEER_PID" 2>/dev/null || rc=$?
  if [ $# -ge 3 ]; then
    if [ "$killed" = 1 ]; then
      record "$1" "$2" "$3.exit" "still running 5 s after SIGTERM, killed"
    elif [ "$rc" -gt 128 ] && [ "$rc" != 143 ]; then
      record "$1" "$2" "$3.exit" "died of signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null)) on SIGTERM"
    fi
  fi
}

# openssl s_client: a line goes through with the client certificate and comes
# back; without it nothing may come back.
probe() {  # peer port -> 0 when it really terminates mTLS
  local peer=$1 port=$2 token out_with out_without
  token="probe-$RANDOM$RANDOM"
  local common=(-connect "127.0.0.1:$port" -servername "$SNI" -CAfile "$pki/ca.crt"
    -verify_return_error -verify_hostname "$SNI" -tls1_3)
  out_with=$( (echo "$token"; sleep 1) | timeout 5 openssl s_client "${common[@]}" \
    -cert "$pki/client.crt" -key "$pki/client.key" 2>&1 || true)
  out_without=$( (echo "$token"; sleep 1) | timeout 5 openssl s_client "${common[@]}" 2>&1 || true)
  printf '%s\n--- with client certificate ---\n%s\n--- without ---\n%s\n' "$peer" "$out_with" "$out_without" \
    >"$work/$peer/probe.log"
  if ! grep -q "Verification: OK" <<<"$out_with" ||
    ! grep -q "TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256" <<<"$out_with"; then
    PROBE_WHY="no verified TLS 1.3 AES-128-GCM handshake with the client certificate (not terminating TLS?)"
    return 1
  fi
  if [ "$(grep -c -- "$token" <<<"$out_with")" -lt 1 ]; then
    PROBE_WHY="no echo with the client certificate"
    return 1
  fi
  if grep -q -- "$token" <<<"$out_without"; then
    PROBE_WHY="echoed WITHOUT a client certificate"
    return 1
  fi
  PROBE_WHY=""
}

results=$work/results.tsv   # peer round metric value
: >"$results"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }

LOAD_COMMON=(--server-name "$SNI" --ca "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key"
  --tls13-only --cipher aes128 --kx x25519 --cpus "$CLIENT_CPU" --duration "$DURATION")

# One load test: peer round name load-args...; records the metrics.
run_load() {
  local peer=$1 round=$2 name=$3
  shift 3
  local json=$work/$peer/$name-$round.json before after s0 s1 c0 c1 b0 b1
  wait_quiet
  s0=$(cpu_jiffies "$SERVER_CPU"); c0=$(cpu_jiffies "$CLIENT_CPU")
  b0=$(cpu_ticks "$BACKEND_PID")
  before=$(cpu_ticks "$PEER_PID")
  timeout 120 "$load" "$@" --target "127.0.0.1:$PEER_PORT" "${LOAD_COMMON[@]}" --json "$json" \
    >"$work/$peer/$name-$round.txt" 2>&1 || true
  after=$(cpu_ticks "$PEER_PID")
  s1=$(cpu_jiffies "$SERVER_CPU"); c1=$(cpu_jiffies "$CLIENT_CPU")
  b1=$(cpu_ticks "$BACKEND_PID")
  if [ ! -s "$json" ]; then
    say "$peer $name round $round: no result"
    tail -n 5 "$work/$peer/$name-$round.txt" >&2
    record "$peer" "$round" "$name.failed" 1
    return
  fi
  python3 - "$json" "$peer" "$round" "$name" "$(( after - before ))" "$TICK" "$s0 $s1" "$c0 $c1" "$(( b1 - b0 ))" >>"$results" <<'PY'
import json, sys
def busy(spec, steal=False):
    b0, s0, t0, b1, s1, t1 = map(int, spec.split())
    if t1 <= t0:
        return "nan"
    return ((s1 - s0) if steal else (b1 - b0)) / (t1 - t0)
j = json.load(open(sys.argv[1]))
peer, rnd, name, ticks, tick = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
cpu = ticks / tick
ok = j["ops"]
def out(k, v):
    print(f"{peer}\t{rnd}\t{name}.{k}\t{v}")
out("ops_per_s", j["ops_per_s"])
out("ops_ok", ok)
out("ops_failed", j["errors"])
out("unsent", j.get("unsent", 0))
out("server_cpu_s", cpu)
out("elapsed_s", j["elapsed_s"])
out("server_util", cpu / j["elapsed_s"] if j["elapsed_s"] else "nan")
out("client_util", j["client_cpu"]["utilization"])
out("client_us_per_op", j["client_cpu"]["us_per_op"])
out("server_cpu_busy", busy(sys.argv[7]))
out("client_cpu_busy", busy(sys.argv[8]))
out("backend_util", int(sys.argv[9]) / tick / j["elapsed_s"] if j["elapsed_s"] else "nan")
out("server_cpu_steal", busy(sys.argv[7], True))
out("client_cpu_steal", busy(sys.argv[8], True))
out("mb_up", j["mb_per_s_up"]); out("mb_down", j["mb_per_s_down"])
hs = j.get("handshakes") or {}
if name.startswith("hs"):
    out("cpu_s_per_1000", 1000 * cpu / ok if ok else "nan")
    out("resumed_share", hs.get("resumed_share", 0))
if name == "bulk":
    nbytes = j["bytes_up"] + j["bytes_down"]
    out("cpu_s_per_gib", cpu / (nbytes / 2**30) if nbytes else "nan")
lat = j.get("latency_us")
if lat and name == "rr":
    out("p50_ms", lat["p50"] / 1000); out("p99_ms", lat["p99"] / 1000)
    out("cpu_us_per_op", 1e6 * cpu / ok if ok else "nan")
tls = j.get("tls") or {}
if tls:
    out("negotiated", "/".join(str(tls.get(k)) for k in ("version", "cipher_suite", "key_exchange")))
errs = j.get("errors_by_kind") or {}
if errs:
    first = {k: " ".join(v.split())[:100] for k, v in (j.get("first_errors") or {}).items()}
    out("errors", "; ".join(f"{k}={v} ({first.get(k, '')})" for k, v in sorted(errs.items())))
PY
}

# RSS with IDLE_CONNS idle mTLS connections (fresh terminator).
run_idle() {
  local peer=$1 round=$2 base after ready=$work/$peer/idle-$round.ready holder status
  sleep 0.5
  base=$(rss_kib "$PEER_PID")
  rm -f "$ready"
  taskset -c "$CLIENT_CPU" python3 "$repo/scripts/compare/hold-idle.py" 127.0.0.1 "$PEER_PORT" "$IDLE_CONNS" \
    "$pki/ca.crt" "$pki/client.crt" "$pki/client.key" "$SNI" "$ready" 2>"$work/$peer/idle-$round.err" &
  holder=$!
  bg_pids+=("$holder")
  for _ in $(seq 600); do [ -s "$ready" ] && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
  status=$(cat "$ready" 2>/dev/null || echo "FAIL no report")
  sleep 1
  after=$(rss_kib "$PEER_PID")
  record "$peer" "$round" idle.threads "$(for p in $(tree_pids "$PEER_PID"); do ls "/proc/$p/task" 2>/dev/null; done | wc -l)"
  kill -TERM "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  record "$peer" "$round" idle.base_kib "$base"
  record "$peer" "$round" idle.rss_kib "$after"
  if [[ $status == OK* ]]; then
    record "$peer" "$round" idle.kib_per_conn "$(python3 -c "print(($after - $base) / $IDLE_CONNS)")"
  else
    record "$peer" "$round" idle.failed "${status// /_}"
    say "$peer idle round $round: $status"
  fi
}

declare -A affinity_seen
# ---------------------------------------------------------------- probe
for peer in $PEERS; do
  [ -z "${peer_note[$peer]}" ] || { say "$peer: ${peer_note[$peer]}"; continue; }
  if ! start_peer "$peer"; then peer_note[$peer]="did not start (see its log)"; continue; fi
  if probe "$peer" "$PEER_PORT"; then
    say "$peer probe ok: echo with the client certificate, refused without"
  else
    peer_note[$peer]="failed the probe: $PROBE_WHY"
    say "$peer ${peer_note[$peer]}"
    sed 's/^/    /' "$work/$peer/probe.log" | tail -n 40 >&2
  fi
  affinity_seen[$peer]=$(affinity "$PEER_PID")
  stop_peer
done

# ---------------------------------------------------------------- rounds
for round in $(seq "$ROUNDS"); do
  for peer in $PEERS; do
    [ -z "${peer_note[$peer]}" ] || continue
    say "round $round/$ROUNDS: $peer"
    if start_peer "$peer"; then
      run_idle "$peer" "$round"
      stop_peer "$peer" "$round" idle
    else
      record "$peer" "$round" idle.failed start
    fi
    if ! start_peer "$peer"; then record "$peer" "$round" start.failed 1; continue; fi
    run_load "$peer" "$round" hs_full handshake --echo 16 --connections "$HS_CONNECTIONS"
    run_load "$peer" "$round" hs_resume handshake --echo 16 --connections "$HS_CONNECTIONS" --resume
    run_load "$peer" "$round" bulk bulk --direction both --connections "$BULK_CONNECTIONS"
    run_load "$peer" "$round" rr rr --rate "$RR_RATE" --connections "$RR_CONNECTIONS"
    [ "$round" = 1 ] && affinity_seen[$peer]="${affinity_seen[$peer]} | under load: $(affinity "$PEER_PID")"
    stop_peer "$peer" "$round" load
  done
done

# ---------------------------------------------------------------- loadgen check
# tlsplice-load is checked against a client nobody here wrote: one connection
# at a time, full TLS 1.3 mTLS handshakes against nginx, by `openssl s_time
# -new` and by `tlsplice-load handshake --connections 1` (no echo, as s_time
# does none), both on the client cpu, in every round.
if [ "$CHECK_LOADGEN" = 1 ] && [[ " $PEERS " == *" nginx "* ]] && [ -z "${peer_note[nginx]}" ]; then
  secs=${DURATION%s}
  [[ $secs =~ ^[0-9]+$ ]] || secs=5
  for round in $(seq "$ROUNDS"); do
    say "load generator check $round/$ROUNDS: openssl s_time vs tlsplice-load against nginx"
    start_peer nginx || { record nginx "$round" s_time.failed start; continue; }
    wait_quiet
    t0=$(date +%s.%N)
    taskset -c "$CLIENT_CPU" timeout $((secs + 30)) openssl s_time -connect "127.0.0.1:$PEER_PORT" \
      -new -time "$secs" -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 -CAfile "$pki/ca.crt" \
      -cert "$pki/client.crt" -key "$pki/client.key" >"$work/nginx/s_time-$round.txt" 2>&1 || true
    t1=$(date +%s.%N)
    n=$(sed -n 's/^\([0-9][0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$work/nginx/s_time-$round.txt" | tail -n 1)
    if [ -n "$n" ]; then
      record nginx "$round" s_time.ops_per_s "$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN {print n / (b - a)}')"
    else
      record nginx "$round" s_time.failed 1
      tail -n 5 "$work/nginx/s_time-$round.txt" >&2
    fi
    run_load nginx "$round" check_load handshake --connections 1
    stop_peer
  done
fi

# ---------------------------------------------------------------- report
notes=$work/notes.tsv
: >"$notes"
for peer in $PEERS; do printf '%s\t%s\t%s\n' "$peer" "${peer_note[$peer]}" "${affinity_seen[$peer]:-}" >>"$notes"; done

pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "n/a"; }
tlsplice_ver=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$repo" diff --quiet HEAD -- src loadtest Cargo.toml Cargo.lock 2>/dev/null || tlsplice_ver+="+dirty"
elapsed=$(( $(date +%s) - started_at ))
export CMP_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" CMP_NPROC="$(nproc)" CMP_KERNEL="$(uname -r)"
export CMP_CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
export CMP_LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
export CMP_VERSIONS="tlsplice $tlsplice_ver ($("$bin" --version 2>/dev/null | awk '{print $2}')), \
nginx $(pkgver nginx) + libnginx-mod-stream $(pkgver libnginx-mod-stream), \
haproxy $(pkgver haproxy), stunnel4 $(pkgver stunnel4), OpenSSL (libssl3) $(pkgver libssl3)"
export CMP_ROUNDS=$ROUNDS CMP_DURATION=$DURATION CMP_SERVER_CPU=$SERVER_CPU CMP_CLIENT_CPU=$CLIENT_CPU
export CMP_HS_CONNECTIONS=$HS_CONNECTIONS CMP_RR_RATE=$RR_RATE CMP_RR_CONNECTIONS=$RR_CONNECTIONS
export CMP_BULK_CONNECTIONS=$BULK_CONNECTIONS CMP_IDLE_CONNS=$IDLE_CONNS CMP_ELAPSED=$elapsed
export CMP_PEERS=$PEERS CMP_QUIET_WAITED=$quiet_waited
report=$work/report.md
python3 "$repo/scripts/compare/report.py" "$results" "$notes" >"$report"
cat "$report"
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  cp "$report" "$OUT"
  say "written to $OUT"
fi
say "done in ${elapsed}s"
