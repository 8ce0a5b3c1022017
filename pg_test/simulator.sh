# Sourced by the pg_regress runners: parses the conninfo given ($host, $port), makes a work
# directory ($work) and starts the Flex simulator there on a free port ($sim_url); both go when
# the runner exits.
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
sim_url="http://127.0.0.1:$sim_port/f5/api"
