#!/usr/bin/env bash
# Soak: mixed load against one tlsplice for a long time, with reloads,
# sampling its RSS and open descriptors every second.
#
#   scripts/soak.sh [--duration 600] [--plot docs/soak.svg] [--out target/soak]
#
# Load (tlsplice-load, all at once, for the whole duration):
#   handshake  full mTLS handshakes, each with a 64-byte echo (byte-exact)
#   rr         64-byte request/response on kept-alive connections (byte-exact)
#   rr 256K    256 KiB echoed per operation: bulk data, byte-exact
#   bulk       continuous stream both ways (pressure; not compared)
# plus SIGHUP every 10 s (a reload rebuilding TLS state).
#
# Fails when: any operation of any load failed (an echo that differs is an
# error), a reload failed, tlsplice died, RSS after warm-up (the first fifth,
# at least 10 s) rose above 1.25 x its warm-up peak + 32 MiB, or descriptors
# did not come back to their idle count after the load.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=600
plot=""
out=target/soak
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --plot) plot="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--duration SECONDS] [--plot FILE.svg] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ "$duration" -ge 20 ] || { echo "soak: --duration must be at least 20 seconds" >&2; exit 2; }
mkdir -p "$out"
rm -f "$out"/*.json "$out"/samples.csv

bash scripts/install-test-deps.sh
cargo build -q --bins
bin=target/debug
gcc -O2 -o "$out/echo-backend" scripts/compare/echo-backend.c

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Wait (bounded) for a file to hold a line matching a pattern.
wait_for() {
  for _ in $(seq 1 200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "soak: $1 never showed '$2'" >&2
  cat "$1" >&2 || true
  return 1
}

# The dev PKI, made by `tlsplice quickstart` (which then stops).
pki="$out/pki"
if [ ! -f "$pki/client.key" ]; then
  source scripts/lib/dev-pki.sh
  dev_pki "$bin/tlsplice" "$pki" "$out/quickstart.out"
fi

"$out/echo-backend" "$out/backend.port" &
pids+=($!)
wait_for "$out/backend.port" "[0-9]"
backend="127.0.0.1:$(cat "$out/backend.port")"

"$bin/tlsplice" serve --listen 127.0.0.1:0 --cert "$pki/server.crt" --key "$pki/server.key" \
  --client-ca "$pki/ca.crt" --backend "$backend" --workers 2 2>"$out/tlsplice.log" &
server=$!
pids+=("$server")
wait_for "$out/tlsplice.log" "listening on"
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out/tlsplice.log" | head -1)
target="127.0.0.1:$port"
idle_fds=$(ls "/proc/$server/fd" | wc -l)
echo "soak: tlsplice pid $server on $target, backend $backend, ${duration}s"

# One sample a second: seconds since start, RSS KiB, open descriptors.
(
  start=$(date +%s.%N)
  echo "t,rss_kib,fds" >"$out/samples.csv"
  while kill -0 "$server" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status" 2>/dev/null || echo "")
    fds=$(ls "/proc/$server/fd" 2>/dev/null | wc -l)
    now=$(date +%s.%N)
    [ -n "$rss" ] && echo "$(echo "$now - $start" | bc),$rss,$fds" >>"$out/samples.csv"
    sleep 1
  done
) &
sampler=$!
pids+=("$sampler")

common=(--target "$target" --ca "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key"
  --server-name localhost --duration "${duration}s" --timeout 10s)
load_pids=()
"$bin/tlsplice-load" handshake "${common[@]}" --connections 2 --echo 64 \
  --json "$out/handshake.json" >"$out/handshake.txt" 2>&1 &
load_pids+=($!)
"$bin/tlsplice-load" rr "${common[@]}" --connections 4 --size 64 \
  --json "$out/rr.json" >"$out/rr.txt" 2>&1 &
load_pids+=($!)
"$bin/tlsplice-load" rr "${common[@]}" --connections 2 --size 262144 \
  --json "$out/rr-256k.json" >"$out/rr-256k.txt" 2>&1 &
load_pids+=($!)
"$bin/tlsplice-load" bulk "${common[@]}" --connections 2 --direction both \
  --json "$out/bulk.json" >"$out/bulk.txt" 2>&1 &
load_pids+=($!)
pids+=("${load_pids[@]}")

reloads=0
end=$(( $(date +%s) + duration ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 10
  kill -0 "$server" 2>/dev/null || break
  kill -HUP "$server"
  reloads=$((reloads + 1))
done
for p in "${load_pids[@]}"; do wait "$p" || true; done

failed=0
fail() { echo "soak: FAIL: $*"; failed=1; }
kill -0 "$server" 2>/dev/null || fail "tlsplice exited during the soak"

# Descriptors back to idle once the clients are gone (bounded wait).
fds_now=0
for _ in $(seq 1 100); do
  fds_now=$(ls "/proc/$server/fd" 2>/dev/null | wc -l)
  [ "$fds_now" -le "$idle_fds" ] && break
  sleep 0.1
done
[ "$fds_now" -le "$idle_fds" ] || fail "descriptors: $idle_fds idle before, $fds_now after the load"
kill "$sampler" 2>/dev/null || true

reloaded=$(grep -c "reloaded" "$out/tlsplice.log" || true)
reload_failed=$(grep -c "reload failed" "$out/tlsplice.log" || true)
panics=$(grep -c "panicked" "$out/tlsplice.log" || true)
[ "$reload_failed" = 0 ] || fail "$reload_failed reload(s) failed"
[ "$reloaded" -gt 0 ] || fail "no reload logged after $reloads SIGHUP(s)"
[ "$panics" = 0 ] || fail "$panics panic(s) in the log"

python3 - "$out" "$duration" "$plot" "$reloaded" <<'EOF' || failed=1
import csv, json, sys
out, duration, plot, reloaded = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
bad = []
def fail(msg):
    print(f"soak: FAIL: {msg}")
    bad.append(msg)

for name in ("handshake", "rr", "rr-256k", "bulk"):
    try:
        s = json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError) as e:
        fail(f"{name}: no summary ({e})")
        continue
    print(f"  {name:9} {s['ops']:>9} ok {s['errors']:>4} failed  "
          f"{s['ops_per_s']:9.1f} ops/s  up {s['bytes_up'] / 1e6:9.1f} MB  down {s['bytes_down'] / 1e6:9.1f} MB")
    if s["errors"]:
        fail(f"{name}: {s['errors']} failed operations: {s['errors_by_kind']} {s['first_errors']}")
    if not s["ops"]:
        fail(f"{name}: no operation succeeded")

rows = [(float(r["t"]), int(r["rss_kib"]), int(r["fds"])) for r in csv.DictReader(open(f"{out}/samples.csv"))]
if len(rows) < duration / 2:
    fail(f"only {len(rows)} samples in {duration:.0f}s")
warm = max(10.0, duration / 5)
warm_peak = max((r for t, r, _ in rows if t <= warm), default=0)
after = [(t, r) for t, r, _ in rows if warm < t <= duration]
peak_after = max((r for _, r in after), default=0)
bound = warm_peak * 1.25 + 32 * 1024
print(f"  RSS: warm-up peak {warm_peak / 1024:.1f} MiB, peak after {peak_after / 1024:.1f} MiB, "
      f"bound {bound / 1024:.1f} MiB; max fds {max(f for *_, f in rows)}; reloads {reloaded}")
if peak_after > bound:
    fail(f"RSS grew to {peak_after / 1024:.1f} MiB after warm-up (bound {bound / 1024:.1f} MiB)")

if plot:
    W, H, L, R, T, B = 760, 360, 64, 64, 40, 48
    tmax = max(t for t, *_ in rows) or 1
    rmax = max(max(r for _, r, _ in rows), bound) / 1024 * 1.1
    fmax = max(f for *_, f in rows) * 1.2 or 1
    x = lambda t: L + (W - L - R) * t / tmax
    yr = lambda mib: H - B - (H - T - B) * mib / rmax
    yf = lambda f: H - B - (H - T - B) * f / fmax
    rss_pts = " ".join(f"{x(t):.1f},{yr(r / 1024):.1f}" for t, r, _ in rows)
    fd_pts = " ".join(f"{x(t):.1f},{yf(f):.1f}" for t, _, f in rows)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">tlsplice soak: RSS and open descriptors, {duration:.0f} s of mixed load with {reloaded} reloads</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{W - R}" y1="{T}" x2="{W - R}" y2="{H - B}" stroke="black"/>']
    for i in range(6):
        t = tmax * i / 5
        svg.append(f'<text x="{x(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t:.0f}</text>')
        mib = rmax * i / 5
        svg.append(f'<text x="{L - 6}" y="{yr(mib) + 4:.1f}" text-anchor="end" fill="#1f5fbf">{mib:.0f}</text>')
        f = fmax * i / 5
        svg.append(f'<text x="{W - R + 6}" y="{yf(f) + 4:.1f}" fill="#bf5f1f">{f:.0f}</text>')
    svg += [f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">seconds</text>',
            f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" text-anchor="middle" fill="#1f5fbf">RSS (MiB)</text>',
            f'<text x="{W - 12}" y="{(T + H - B) / 2}" transform="rotate(90 {W - 12} {(T + H - B) / 2})" text-anchor="middle" fill="#bf5f1f">open fds</text>',
            f'<line x1="{x(warm):.1f}" y1="{T}" x2="{x(warm):.1f}" y2="{H - B}" stroke="gray" stroke-dasharray="4 3"/>',
            f'<text x="{x(warm) + 4:.1f}" y="{T + 12}" fill="gray">end of warm-up</text>',
            f'<line x1="{x(warm):.1f}" y1="{yr(bound / 1024):.1f}" x2="{W - R}" y2="{yr(bound / 1024):.1f}" stroke="#c00" stroke-dasharray="6 3"/>',
            f'<text x="{W - R - 4}" y="{yr(bound / 1024) - 4:.1f}" text-anchor="end" fill="#c00">RSS bound {bound / 1024:.0f} MiB</text>',
            f'<polyline fill="none" stroke="#bf5f1f" stroke-width="1" points="{fd_pts}"/>',
            f'<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{rss_pts}"/>',
            '</svg>']
    open(plot, "w").write("\n".join(svg) + "\n")
    print(f"  plot: {plot}")
sys.exit(1 if bad else 0)
EOF

if [ "$failed" = 0 ]; then
  echo "soak: PASS (${duration}s; details in $out/)"
else
  echo "soak: FAILED (details in $out/)"
  exit 1
fi
