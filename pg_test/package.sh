#!/usr/bin/env bash
# The release command: flex_sync built with --release and packaged per PostgreSQL major as a
# Debian package (cargo pgrx package, then dpkg-deb), for a DBA who installs it without Rust.
#   package.sh [OUT_DIR]   writes OUT_DIR/postgresql-<major>-flex-sync_<version>_<arch>.deb
#                          (default target/packages) and prints each package's path
# The package holds the library, the control file, the install script and every upgrade script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash pg_test/setup.sh >&2
out=${1:-$root/target/packages}
mkdir -p "$out"
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
# One major per run: FLEX_SYNC_PG_CONFIG's (default 15's; pg17.sh package runs this for 17).
for pg_config in "${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"; do
    major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    name=postgresql-$major-flex-sync
    stage=$(mktemp -d)
    cargo pgrx package --no-default-features --features "pg$major" --pg-config "$pg_config" --out-dir "$stage/root" \
        >"$stage/build.log" 2>&1 \
        || { cat "$stage/build.log" >&2; exit 1; }
    mkdir -p "$stage/root/DEBIAN"
    cat >"$stage/root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: flex_sync developers <flex-sync@invalid>
Depends: postgresql-$major, libc6 (>= $(ldd --version | head -1 | grep -oE '[0-9]+\.[0-9]+$')), libgcc-s1
Recommends: postgresql-$major-cron
Section: database
Priority: optional
Description: Flex Rental Solutions crew sync inside PostgreSQL $major
 flex_sync keeps a job's crew in Flex in step with the technicians assigned to it, from SQL,
 Supabase RPC or pg_cron. After installing: CREATE EXTENSION flex_sync; in each database,
 or ALTER EXTENSION flex_sync UPDATE; where an earlier version is installed.
CONTROL
    dpkg-deb --root-owner-group --build "$stage/root" "$out/${name}_${version}_$arch.deb" >/dev/null
    rm -rf "$stage"
    echo "$out/${name}_${version}_$arch.deb"
done
