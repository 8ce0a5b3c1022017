#!/usr/bin/env bash
# Benchmarks, separate from the tests: builds the extension in release mode, starts a throwaway
# server, runs every section (or the one named: calls, wall, cost, queue, dedupe, click, storm, naive, merge, ingest) and writes the
# figures with the machine's description to bench/results.md. Then reinstall the debug build
# (`cargo pgrx install`) before running the tests again, or just run pg_test/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash pg_test/setup.sh
# PL/Python, for the naive implementation the "naive" section compares with.
dpkg-query -W -f='${Status}' postgresql-plpython3-15 2>/dev/null | grep -q "install ok installed" \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-plpython3-15 >/dev/null
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cargo build -q --release -p flex_sync_pg_test --bin bench
cluster=/tmp/flex_sync_bench_$$
conninfo=$(bash pg_test/cluster.sh start "$cluster")
trap 'bash pg_test/cluster.sh stop "$cluster"' EXIT
out="$root/bench/results${1:+-$1}.md"
FLEX_SYNC_PG="$conninfo" FLEX_SYNC_BENCH_OUT="$out" "$root/target/release/bench" "$@"
echo "written to $out"
