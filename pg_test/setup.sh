#!/usr/bin/env bash
# Installs what building and testing flex_sync needs on Debian 12, skipping what is there:
# PostgreSQL 15 with its server headers and pg_cron, clang for bindgen, cargo-pgrx 0.18.1.
set -euo pipefail
packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15 postgresql-15-cron
          libclang-dev clang pkg-config libssl-dev sudo ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }
if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 4 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi
if ! grep -qs '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15=/usr/lib/postgresql/15/bin/pg_config
fi
