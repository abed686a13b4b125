#!/usr/bin/env bash
# Installs what weft's demo and tests need on Debian 12 (run as root). Idempotent.
set -euo pipefail

packages=(
  iproute2 nftables iptables iperf3 iputils-ping ethtool tcpdump procps
  containernetworking-plugins podman runc busybox-static
  gcc pkg-config ca-certificates curl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# weft needs Rust 1.86 or later (edition 2024); Debian 12's own cargo is too old.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "==> installing Rust with rustup"
    curl -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
rustc_minor=$(rustc --version | awk '{print $2}' | cut -d. -f2)
if [ "$rustc_minor" -lt 86 ]; then
  echo "weft needs rustc 1.86 or later, found $(rustc --version)" >&2
  exit 1
fi
