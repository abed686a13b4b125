#!/usr/bin/env bash
# Installs what weft's demo and tests need on Debian 12 (run as root). Idempotent.
set -euo pipefail

packages=(
  iproute2 nftables iptables iperf3 iputils-ping ethtool tcpdump procps
  containernetworking-plugins podman runc busybox-static
  # containerd 1.6, driven through CRI by integration/tests/containerd.rs (one instance per lab
  # node, never the system service, which installing it starts where systemd runs); protoc builds
  # the CRI client's bindings (crate k8s-cri).
  containerd protobuf-compiler
  gcc g++ pkg-config ca-certificates curl
  yamllint systemd
  # For promtool (the deploy test checks deploy/prometheus/). Where systemd runs, installing it
  # also starts prometheus (:9090) and prometheus-node-exporter (:9100); no test uses them.
  prometheus
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

# The deployment checks (integration/tests/deploy.rs) validate deploy/kubernetes/ against the
# Kubernetes API schemas with kubernetes-validate (PyPI; its schemas are bundled, no cluster needed).
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  if ! command -v pip3 >/dev/null 2>&1; then
    echo "==> installing: python3-pip"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "==> installing kubernetes-validate (pip)"
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  # Debian's own python refuses system-wide installs (PEP 668) unless told otherwise.
  pip3 install --quiet kubernetes-validate 2>/dev/null \
    || pip3 install --quiet --break-system-packages kubernetes-validate
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
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
