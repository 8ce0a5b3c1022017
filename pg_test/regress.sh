#!/usr/bin/env bash
# The golden SQL tests (pg_regress): the SQL surface as a user sees it, errors with their
# SQLSTATEs and hints, the result shapes of every public function, the health views and the
# dedupe report, against a running server, with the Flex simulator started here (psql reads its
# URL from FLEX_SIM_URL). usage: regress.sh "<libpq conninfo with host and port>"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/pg_test/simulator.sh" "$1"
export FLEX_SIM_URL="$sim_url"
cp -r "$root/pg_test/regress/sql" "$root/pg_test/regress/expected" "$work/"
tests=$(cd "$root/pg_test/regress/sql" && ls *.sql | sed 's/\.sql$//' | sort)
regress=$("${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --pkglibdir)/pgxs/src/test/regress/pg_regress
# Each test makes its own database (pg_regress drops and creates it).
"$regress" --host="$host" --port="$port" --user=postgres --dbname=flex_sync_regress \
    --inputdir="$work" --outputdir="$work" $tests || { cat "$work/regression.diffs" 2>/dev/null; exit 1; }
