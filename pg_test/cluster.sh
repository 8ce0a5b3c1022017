#!/usr/bin/env bash
# A throwaway PostgreSQL server for the out-of-process tests and the demo: the one whose
# pg_config FLEX_SYNC_PG_CONFIG names (default PostgreSQL 15's).
#   cluster.sh start DIR   initdb + start on a free loopback port; prints the libpq conninfo
#   cluster.sh stop DIR    stop it and remove DIR
# PostgreSQL refuses to run as root, so as root the server runs as the postgres user.
set -euo pipefail
bin=$("${FLEX_SYNC_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)
cmd=${1:?start or stop}
dir=${2:?directory}
as_server_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    echo "no free port found" >&2; return 1
}
case "$cmd" in
start)
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    port=$(free_port)
    as_server_user "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
max_connections = 200
fsync = off
synchronous_commit = off
CONF
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    echo "host=127.0.0.1 port=$port user=postgres"
    ;;
stop)
    if [ -d "$dir/data" ]; then as_server_user "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"
    ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
