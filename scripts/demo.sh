#!/usr/bin/env bash
# Installs what is needed, builds weft and runs the multi-subnet demo (as root).
# Extra arguments go to `weft-lab demo` (see `weft-lab demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the demo creates network namespaces" >&2; exit 1; }
source scripts/setup.sh

echo "==> building weft (release)"
cargo build --workspace --release --locked
exec target/x86_64-unknown-linux-gnu/release/weft-lab demo "$@"
