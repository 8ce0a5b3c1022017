#!/usr/bin/env bash
# Benchmarks, separate from the tests: builds the extension in release mode, starts a throwaway
# server, runs every section (or the one named: calls, wall, cost, queue, dedupe, click, storm) and writes the
# figures with the machine's description to bench/results.md. Then reinstall the debug build
# (`cargo pgrx install`) before running the tests again, or just run pg_test/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash pg_test/setup.sh
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cargo build -q --release -p flex_sync_pg_test --bin bench
cluster=/tmp/flex_sync_bench_$$
conninfo=$(bash pg_test/cluster.sh start "$cluster")
trap 'bash pg_test/cluster.sh stop "$cluster"' EXIT
out="$root/bench/results${1:+-$1}.md"
FLEX_SYNC_PG="$conninfo" FLEX_SYNC_BENCH_OUT="$out" "$root/target/release/bench" "$@"
echo "written to $out"
