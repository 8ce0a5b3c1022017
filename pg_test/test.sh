#!/usr/bin/env bash
# The whole test suite, in tiers: pure unit tests and the deterministic simulation, #[pg_test]
# inside one backend, the release package installed and used, then the out-of-process suite, the
# isolation specs and the golden SQL tests against a throwaway PostgreSQL server and the Flex
# simulator; all of it for PostgreSQL 15 here, then for PostgreSQL 17 inside a Debian 13 root
# (pg17.sh runs this script there with FLEX_SYNC_PG_CONFIG naming 17's pg_config).
# Ends with one line "N passed, N failed"; exits non-zero when anything failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash pg_test/setup.sh || exit 1

pg_config=${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
export FLEX_SYNC_PG_CONFIG=$pg_config
logs=$root/target/test-logs-pg$major
mkdir -p "$logs"
: >"$logs/all.log"
status=0
step() {
    local name=$1; shift
    echo "==> $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log" | tee -a "$logs/all.log" | grep -E "^(test |test result|error|thread|  left|  right|failures:|=+$| All | [0-9]+ of |release |package)"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "==> $name failed (exit $rc); full output in $logs/$name.log"; status=1; }
    return "$rc"
}

# Inside the PostgreSQL 17 root only what depends on the server runs again.
if [ -z "${FLEX_SYNC_INNER:-}" ]; then
    step unit cargo test -p flex_sync_core -p flex_sync_pg_test --lib
    step simulation cargo test -p flex_sync_core --test simulation
fi
# #[pg_test] refuses to run as root; its cluster runs as postgres in a directory postgres owns.
pgrx_data=/tmp/flex_sync_pgrx_test
[ "$(id -u)" = 0 ] && { rm -rf "$pgrx_data"; mkdir -p "$pgrx_data"; chown postgres:postgres "$pgrx_data"; }
step pg_test cargo pgrx test "pg$major" --runas postgres --pgdata "$pgrx_data"
# The release package: installed with dpkg, a sync through it, removed again.
step package bash pg_test/package_test.sh
# `cargo pgrx test` and the package test leave no usable build installed; install the real one.
step install cargo pgrx install --no-default-features --features "pg$major" --pg-config "$pg_config" || { echo "install failed"; exit 1; }
# Released install scripts, rebuilt from their commits: the current one unedited, older ones
# installed for the upgrade test.
step released bash pg_test/released.sh "$pg_config"

cluster=/tmp/flex_sync_cluster_$$
conninfo=$(bash pg_test/cluster.sh start "$cluster") || { echo "cannot start the test server"; cat "$cluster"/*.log; exit 1; }
trap 'bash pg_test/cluster.sh stop "$cluster"' EXIT
FLEX_SYNC_PG="$conninfo" FLEX_SYNC_PG_LOG="$cluster/server.log" FLEX_SYNC_PG_CONFIG="$pg_config" step out_of_process cargo test --no-fail-fast -p flex_sync_pg_test --tests -- --test-threads 4
# Isolation specs and the golden SQL tests: pg_regress prints "All N tests passed." or "M of N
# tests failed."
step isolation bash pg_test/isolation.sh "$conninfo"
step regress bash pg_test/regress.sh "$conninfo"
regress_passed=$(grep -hoE "All [0-9]+ tests passed" "$logs/isolation.log" "$logs/regress.log" | grep -oE "[0-9]+" | awk '{s+=$1} END {print s+0}')
regress_failed=$(grep -hoE "[0-9]+ of [0-9]+ tests failed" "$logs/isolation.log" "$logs/regress.log" | grep -oE "^[0-9]+" | awk '{s+=$1} END {print s+0}')

passed=$(grep -hoE "test result: [a-zA-Z]+\. [0-9]+ passed" "$logs/all.log" | grep -oE "[0-9]+ passed" | awk '{s+=$1} END {print s+0}')
failed=$(grep -hoE "[0-9]+ failed;" "$logs/all.log" | awk '{s+=$1} END {print s+0}')
package_passed=$(grep -c "^package test passed" "$logs/package.log")
passed=$((passed + regress_passed + package_passed))
failed=$((failed + regress_failed + 1 - package_passed))
if [ -z "${FLEX_SYNC_INNER:-}" ]; then
    # The same suite on PostgreSQL 17: its own "N passed, N failed" is added to these.
    echo "==> pg17: bash pg_test/pg17.sh test"
    bash pg_test/pg17.sh test >"$logs/pg17.log" 2>&1 || status=1
    grep -E "^(==>|test result|  left|  right| All | [0-9]+ of |[0-9]+ passed, )" "$logs/pg17.log"
    inner=$(grep -oE "^[0-9]+ passed, [0-9]+ failed$" "$logs/pg17.log" | tail -1)
    passed=$((passed + ${inner%% passed*}))
    inner_failed=${inner##*, }
    failed=$((failed + ${inner_failed%% failed}))
    [ -n "$inner" ] || failed=$((failed + 1))
fi
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$status"
