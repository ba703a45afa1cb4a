#!/usr/bin/env bash
# Installs the tools the tests drive (real TLS clients nobody here wrote).
# Idempotent; runs apt-get only for what is missing.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# Upstream TLS tests put stunnel (server mode) in front of their backends.
command -v stunnel4 >/dev/null || need+=(stunnel4)
# tests/proxy_consumer.rs: a real PROXY protocol consumer (in /usr/sbin).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# tests/identity_header.rs: the HTTP/1.1 backend is Python's http.server.
command -v python3 >/dev/null || need+=(python3)
# scripts/scan.sh: an external TLS scanner.
command -v testssl >/dev/null || need+=(testssl.sh)
# scripts/soak.sh: builds the C echo backend, computes sample times.
command -v gcc >/dev/null || need+=(gcc)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The metrics test parses /metrics with the reference Prometheus parser.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client
# The Kubernetes manifests are checked against the API schemas offline.
command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate
# scripts/scan.sh: sslyze in its own venv under target/ (not on PATH).
venv="$(dirname "$0")/../target/scan-venv"
if ! "$venv/bin/sslyze" --help >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check sslyze
fi
