#!/usr/bin/env bash
# The project's test command (README): lint, unit and integration tests with
# real clients, then the kernel TLS checks inside a VM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
# External TLS scanners (testssl.sh, sslyze) on the default config: about a
# minute. TLSPLICE_SKIP_SCAN=1 skips them.
if [ "${TLSPLICE_SKIP_SCAN:-0}" != 1 ]; then
  bash scripts/scan.sh
fi
# A 30-second soak (the full one is 10 minutes: scripts/soak.sh).
# TLSPLICE_SKIP_SOAK=1 skips it.
if [ "${TLSPLICE_SKIP_SOAK:-0}" != 1 ]; then
  bash scripts/soak.sh --duration 30
fi
if [ "${TLSPLICE_SKIP_VM:-0}" != 1 ]; then
  bash scripts/ktls-vm-test.sh
fi
