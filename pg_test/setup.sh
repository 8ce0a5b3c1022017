#!/usr/bin/env bash
# Installs what building and testing flex_sync needs, skipping what is there: PostgreSQL with
# its server headers and pg_cron (15 on Debian 12; the major FLEX_SYNC_PG_CONFIG names, e.g. 17
# inside the Debian 13 root of pg17.sh), clang for bindgen, cargo-pgrx 0.18.1.
set -euo pipefail
pg_config=${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
major=$(sed -E 's#.*/postgresql/([0-9]+)/.*#\1#' <<<"$pg_config")
packages=(postgresql-$major postgresql-server-dev-$major postgresql-client-$major postgresql-$major-cron
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
if ! grep -qs "^pg$major" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init "--pg$major=$pg_config"
fi
