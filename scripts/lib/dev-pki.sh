# Sourced by the measurement scripts (soak, bench-*, compare-peers).
#
# dev_pki BIN DIR LOG: writes the dev PKI of `tlsplice quickstart` (CA,
# server and client certificates and keys) into DIR. quickstart writes the
# PKI before it listens, so it is stopped once its log (LOG) says it
# listens; a quickstart that fails leaves its reason in LOG.
dev_pki() {
  local bin=$1 dir=$2 log=$3 qs
  "$bin" quickstart --dir "$dir" --port 0 >"$log" 2>&1 &
  qs=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    kill -0 "$qs" 2>/dev/null || break
    sleep 0.1
  done
  kill -INT "$qs" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$qs" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$qs" 2>/dev/null || true
  wait "$qs" 2>/dev/null || true
  [ -f "$dir/client.key" ] || { echo "dev_pki: tlsplice quickstart wrote no PKI (see $log)" >&2; return 1; }
}
