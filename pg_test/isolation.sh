#!/usr/bin/env bash
# Runs the isolation specs (pg_isolation_regress) against a running server, with the Flex
# simulator started here. usage: isolation.sh "<libpq conninfo with host and port>"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
conninfo=$1
host=$(sed -E 's/.*host=([^ ]+).*/\1/' <<<"$conninfo")
port=$(sed -E 's/.*port=([^ ]+).*/\1/' <<<"$conninfo")
work=$(mktemp -d)
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build -q -p flex_sync_pg_test --bin flex_sim
sim_port=$((20000 + RANDOM % 40000))
"$root/target/debug/flex_sim" "127.0.0.1:$sim_port" sim-token >"$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 1 50); do grep -q listening "$work/sim.log" && break; sleep 0.1; done
mkdir -p "$work/specs" "$work/expected"
for spec in "$root"/pg_test/isolation/specs/*.spec.in; do
    name=$(basename "$spec" .spec.in)
    sed "s|@SIM_URL@|http://127.0.0.1:$sim_port/f5/api|g" "$spec" >"$work/specs/$name.spec"
    cp "$root/pg_test/isolation/expected/$name.out" "$work/expected/"
    tests+=("$name")
done
psql "$conninfo dbname=postgres" -qAt -c "DROP DATABASE IF EXISTS flex_sync_isolation" -c "CREATE DATABASE flex_sync_isolation"
regress=/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress
"$regress" --use-existing --host="$host" --port="$port" --user=postgres --dbname=flex_sync_isolation \
    --inputdir="$work" --outputdir="$work" "${tests[@]}" || { cat "$work/regression.diffs" 2>/dev/null; exit 1; }
