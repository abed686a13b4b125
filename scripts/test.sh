#!/usr/bin/env bash
# Installs what is needed and runs every check and test (as root: the tests create network
# namespaces). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the tests create network namespaces" >&2; exit 1; }
source scripts/setup.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build"
cargo build --workspace --locked
echo "==> cargo test"
cargo test --workspace --locked
echo "==> the vendored chitchat's own tests (weft's patches included; vendor/README.md)"
cargo test --manifest-path vendor/chitchat/Cargo.toml --target-dir target/chitchat --locked --features testsuite --lib

# Every test cleans up after itself, also on failure: prove it.
left=$(ip netns list | awk '{print $1}' | grep '^wl-' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind: $left" >&2
  exit 1
fi
echo "==> fuzzing (scripts/fuzz.sh)"
bash scripts/fuzz.sh
echo "==> all checks and tests passed"
