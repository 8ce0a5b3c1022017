#!/usr/bin/env bash
# The release package, tested as a DBA would use it: built by package.sh, installed with dpkg on
# the system PostgreSQL 15 (over whatever a build installed there), a throwaway server and the
# Flex simulator running the demo's syncs through it, then removed, leaving none of its files.
# A build installed before is gone afterwards: test.sh installs its own build next.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d)
cluster=/tmp/flex_sync_package_$$
trap 'bash pg_test/cluster.sh stop "$cluster" 2>/dev/null || true; rm -rf "$work"' EXIT
deb=$(bash pg_test/package.sh "$work" | tail -1)
name=$(dpkg-deb -f "$deb" Package)
echo "package: $(basename "$deb") ($(du -k "$deb" | cut -f1) kB)"
dpkg -i "$deb" >/dev/null
files=$(dpkg -L "$name" | grep -E 'flex_sync(\.so|\.control|--[0-9.]+(--[0-9.]+)?\.sql)$')
echo "$files"
[ "$(echo "$files" | wc -l)" -ge 4 ] || { echo "the package installed too few files" >&2; exit 1; }
conninfo=$(bash pg_test/cluster.sh start "$cluster")
cargo build -q -p flex_sync_pg_test --bin demo
FLEX_SYNC_PG="$conninfo" "$root/target/debug/demo" | tail -3
bash pg_test/cluster.sh stop "$cluster"
dpkg -r "$name" >/dev/null
for f in $files; do
    [ ! -e "$f" ] || { echo "$f is left after dpkg -r" >&2; exit 1; }
done
echo "package test passed: installed, synced through, removed"
