#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine and runs the demo: a throwaway PostgreSQL 15
# with flex_sync installed, the Flex simulator, a job with sound and lights crews, two syncs at
# the same moment, a contact deleted by hand in Flex, one more sync. Exits non-zero unless the
# database and the simulator agree at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash pg_test/setup.sh
# The release build, as a DBA would install it.
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cluster=/tmp/flex_sync_demo_$$
conninfo=$(bash pg_test/cluster.sh start "$cluster")
trap 'bash pg_test/cluster.sh stop "$cluster"' EXIT
cargo build -q -p flex_sync_pg_test --bin demo
FLEX_SYNC_PG="$conninfo" "$root/target/debug/demo"
