#!/usr/bin/env bash
# The golden SQL tests (pg_regress): the SQL surface as a user sees it, errors with their
# SQLSTATEs and hints, the result shapes of every public function, the health views and the
# dedupe report, against a running server, with the Flex simulator started here (psql reads its
# URL from FLEX_SIM_URL). usage: regress.sh "<libpq conninfo with host and port>"
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
export FLEX_SIM_URL="http://127.0.0.1:$sim_port/f5/api"
cp -r "$root/pg_test/regress/sql" "$root/pg_test/regress/expected" "$work/"
tests=$(cd "$root/pg_test/regress/sql" && ls *.sql | sed 's/\.sql$//' | sort)
regress=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
# Each test makes its own database (pg_regress drops and creates it).
"$regress" --host="$host" --port="$port" --user=postgres --dbname=flex_sync_regress \
    --inputdir="$work" --outputdir="$work" $tests || { cat "$work/regression.diffs" 2>/dev/null; exit 1; }
