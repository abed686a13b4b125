#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ briefly from the committed seeds (FUZZ_SECONDS each, default
# 20), installing cargo-fuzz when missing. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/; reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
# What the fuzzer learns goes to fuzz/target/, so the committed corpus stays seeds only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# libFuzzer is C++, built by libfuzzer-sys (scripts/setup.sh installs g++).
command -v g++ >/dev/null 2>&1 || { echo "g++ is needed (Debian: apt-get install g++)" >&2; exit 1; }
# cargo-fuzz passes rustc a few unstable flags (coverage instrumentation). CI machines have one
# stable toolchain and cannot fetch nightly, so the stable compiler is allowed them.
export RUSTC_BOOTSTRAP=1

cd fuzz
# No sanitizer: the code under test has no unsafe (the workspace denies it), so ASan would only
# slow the build and the runs; panics and assertion failures are what these targets look for.
for target in $(cargo fuzz list); do
  echo "==> fuzzing $target for ${seconds}s"
  work="target/corpus/$target"
  mkdir -p "$work"
  cargo fuzz run --sanitizer none "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "==> fuzzing found nothing"
