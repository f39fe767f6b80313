#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for tests, living beside the machine's own one.
#
#   postgres.sh start DIR   start (initialising on first use) a cluster whose
#                           data, socket, log and port file are all in DIR;
#                           prints postgres://postgres@127.0.0.1:PORT/postgres
#   postgres.sh stop DIR    stop it (fast shutdown); no-op if not running
#
# Files in DIR: data/ (PGDATA), port, postgres.log, .s.PGSQL.PORT (socket).
# Keep DIR short: the unix socket path must fit in 107 bytes.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=postgres
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

die() {
    printf 'postgres.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    die "usage: postgres.sh start DIR | postgres.sh stop DIR"
}

as_pg() {
    runuser -u "$PG_USER" -- "$@"
}

grant_traversal() {
    # The server runs as postgres, which must be able to walk down to DIR even
    # when a caller created it under a private (0700) temporary directory.
    local d=$1
    while [ "$d" != / ]; do
        d=$(dirname "$d")
        if ! as_pg test -x "$d"; then
            chmod o+x "$d"
        fi
    done
}

is_running() {
    [ -f "$1/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" status -D "$1/data" >/dev/null 2>&1
}

url() {
    printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$1"
}

cmd_start() {
    local dir=$1 port attempt
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    [ "${#dir}" -le 80 ] || die "DIR path too long for a unix socket: $dir"

    if is_running "$dir"; then
        url "$(cat "$dir/port")"
        return 0
    fi

    grant_traversal "$dir"
    chown "$PG_USER:" "$dir"
    chmod 0700 "$dir"

    if [ ! -f "$dir/data/PG_VERSION" ]; then
        rm -rf "$dir/data"
        # fsync and friends are off: the data is disposable and speed matters.
        as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
            -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        cat >>"$dir/data/postgresql.conf" <<EOF

# throwaway test cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    fi

    # Reuse the previous port when possible so a restarted cluster keeps its
    # URL; retry with a new one if another process grabs it in the meantime.
    port=""
    if [ -f "$dir/port" ] && port_is_free "$(cat "$dir/port")"; then
        port=$(cat "$dir/port")
    fi
    for attempt in 1 2 3 4 5; do
        [ -n "$port" ] || port=$(pick_port)
        if as_pg "$PG_BIN/pg_ctl" start -s -w -t 60 -D "$dir/data" \
            -l "$dir/postgres.log" -o "-p $port" >&2; then
            break
        fi
        if [ "$attempt" = 5 ] || port_is_free "$port"; then
            tail -n 20 "$dir/postgres.log" >&2 || true
            die "server failed to start"
        fi
        port=""
    done

    echo "$port" >"$dir/port"
    # pg_ctl -w probes the socket; the TCP listener is what clients use.
    for _ in $(seq 1 100); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
            url "$port"
            return 0
        fi
        sleep 0.1
    done
    die "server started but does not accept TCP connections on port $port"
}

cmd_stop() {
    local dir=$1
    [ -d "$dir/data" ] || return 0
    dir=$(realpath "$dir")
    is_running "$dir" || return 0
    as_pg "$PG_BIN/pg_ctl" stop -s -w -t 60 -m fast -D "$dir/data" >&2
}

[ $# -eq 2 ] || usage
case $1 in
    start) cmd_start "$2" ;;
    stop) cmd_stop "$2" ;;
    *) usage ;;
esac
