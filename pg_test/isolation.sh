#!/usr/bin/env bash
# Runs the isolation specs (pg_isolation_regress) against a running server, with the Flex
# simulator started here. usage: isolation.sh "<libpq conninfo with host and port>"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/pg_test/simulator.sh" "$1"
mkdir -p "$work/specs" "$work/expected"
for spec in "$root"/pg_test/isolation/specs/*.spec.in; do
    name=$(basename "$spec" .spec.in)
    sed "s|@SIM_URL@|$sim_url|g" "$spec" >"$work/specs/$name.spec"
    cp "$root/pg_test/isolation/expected/$name.out" "$work/expected/"
    tests+=("$name")
done
psql "$conninfo dbname=postgres" -qAt -c "DROP DATABASE IF EXISTS flex_sync_isolation" -c "CREATE DATABASE flex_sync_isolation"
regress=$("${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress
"$regress" --use-existing --host="$host" --port="$port" --user=postgres --dbname=flex_sync_isolation \
    --inputdir="$work" --outputdir="$work" "${tests[@]}" || { cat "$work/regression.diffs" 2>/dev/null; exit 1; }
