#!/usr/bin/env bash
# Throwaway HAProxy load balancer in front of a sandbox fleet (fleet.sh).
#
#   haproxy.sh start DIR FLEET_DIR [NAME]
#                           write DIR/haproxy.cfg and start HAProxy with a
#                           backend `app` holding one server per VM of the
#                           fleet (named like the VM, e.g. vm-01, checked with
#                           GET /health); returns once the frontend accepts
#                           connections, the Runtime API answers on TCP and on
#                           the unix socket, and every server has passed its
#                           health check. Prints, and writes to DIR/endpoints:
#                             frontend=127.0.0.1:PORT
#                             runtime=127.0.0.1:PORT
#                             socket=DIR/admin.sock
#                           NAME is a label only (`node` in `show info`).
#   haproxy.sh reload DIR   reload it as production does: save the servers'
#                           runtime state (drain, maint, weights), start a new
#                           process that takes the listening sockets over and
#                           loads that state, and let the old one finish its
#                           connections
#   haproxy.sh stop DIR     stop it; no-op if not running
#
# Both Runtime API sockets are at admin level. There is deliberately no
# `retry-on` and no `option redispatch`: a request caught by a careless
# restart of a VM's app must reach the client as an error.
# Several instances may run at once, each in its own DIR, also in front of
# the same fleet. Files in DIR: haproxy.cfg, haproxy.pid, haproxy.log
# (startup messages only), admin.sock, endpoints, fleet.
# Keep DIR short: the unix socket path must fit in 107 bytes.
set -euo pipefail

HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
APP_PORT=8080
READY_TIMEOUT=${HAPROXY_READY_TIMEOUT:-15}

die() {
    printf 'haproxy.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    die "usage: haproxy.sh start DIR FLEET_DIR [NAME] | haproxy.sh reload DIR | haproxy.sh stop DIR"
}

port_accepts() {
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the PID from DIR/haproxy.pid if that process runs and is the
# HAProxy started on DIR's config, so that a recycled PID is never signalled.
our_pid() {
    local dir=$1 pid cmdline
    pid=$(read_file "$dir/haproxy.pid")
    pid=${pid%%$'\n'*}
    pid_alive "$pid" || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
    if [[ " $cmdline " == *" -f $dir/haproxy.cfg "* ]]; then
        echo "$pid"
    fi
}

# Sends one command to the Runtime API at 127.0.0.1:PORT or at a unix
# socket path, and prints the answer. In this non-interactive mode HAProxy
# closes the connection after answering.
runtime() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import socket, sys
where, command = sys.argv[1], sys.argv[2]
if where.startswith("/"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(where)
else:
    host, port = where.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
s.sendall(command.encode() + b"\n")
chunks = []
while True:
    data = s.recv(65536)
    if not data:
        break
    chunks.append(data)
sys.stdout.write(b"".join(chunks).decode())
EOF
}

# Prints the servers of backend app that are not UP yet or have not passed
# a check yet. HAProxy puts a checked server UP from the start, before its
# first check, so the check status counts too.
servers_not_ready() {
    runtime "127.0.0.1:$1" "show stat" | awk -F, '
        NR == 1 {
            sub(/^# /, "")
            for (i = 1; i <= NF; i++) col[$i] = i
            next
        }
        $1 == "app" && $2 != "FRONTEND" && $2 != "BACKEND" {
            seen = 1
            # "* " marks a check in progress, not a different result.
            check = $col["check_status"]
            sub(/^\* /, "", check)
            if ($col["status"] != "UP" || check != "L7OK") print $2
        }
        END { if (!seen) print "(none listed)" }'
}

# admin.sock is mode 666 so that a test may reach it as another user, such
# as over SSH as a fleet's deploy user; that needs every directory above it
# to be searchable by others, which a private temporary directory is not.
grant_traversal() {
    local d=$1
    while :; do
        [ -n "$(find "$d" -maxdepth 0 -perm -o=x)" ] || chmod o+x "$d"
        [ "$d" != / ] || break
        d=$(dirname "$d")
    done
}

# HAProxy fails to start when it cannot raise its file limit to what
# maxconn needs (two descriptors a connection, plus some), and a container
# may cap the hard limit; so maxconn stays within it.
max_connections() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge 8400 ]; then
        echo 4096
    else
        echo $(((hard - 200) / 2))
    fi
}

write_config() {
    local dir=$1 fleet=$2 name=$3 frontend_port=$4 runtime_port=$5 vm addr
    {
        cat <<EOF
# HAProxy $name in front of the sandbox fleet in $fleet.
# Written by haproxy.sh on every start.
global
    node $name
    maxconn $(max_connections)
    # With SO_REUSEPORT, HAProxy's default, a second instance picking the
    # same port at the same moment would share it silently; without it, its
    # bind fails and it retries on other ports.
    noreuseport
    stats socket ipv4@127.0.0.1:$runtime_port level admin
    stats socket $dir/admin.sock mode 666 level admin expose-fd listeners
    stats timeout 30s
    # Kept across a reload (haproxy.sh reload writes it just before).
    server-state-file $dir/server-state

defaults
    mode http
    load-server-state-from-file global
    # On a reload the old process closes an idle keep-alive connection only after
    # answering one more request on it, so no client sends into a closing socket.
    option idle-close-on-response
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # Without it a check must finish within its 200ms interval, which a
    # loaded app on a small machine may miss, flapping a healthy server.
    timeout check 2s

frontend main
    bind 127.0.0.1:$frontend_port
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /health
EOF
        while IFS=$'\t' read -r vm addr; do
            [ -n "$vm" ] || continue
            printf '    server %s %s:%s check inter 200ms fall 2 rise 2 weight 100\n' \
                "$vm" "$addr" "$APP_PORT"
        done <"$fleet/hosts.tsv"
    } >"$dir/haproxy.cfg"
}

endpoints() {
    local dir=$1 frontend_port=$2 runtime_port=$3
    printf 'frontend=127.0.0.1:%s\nruntime=127.0.0.1:%s\nsocket=%s\n' \
        "$frontend_port" "$runtime_port" "$dir/admin.sock"
}

endpoint_port() {
    sed -n "s/^$2=127\.0\.0\.1://p" "$1/endpoints"
}

# Waits until the instance in DIR serves: frontend, both Runtime API
# sockets, and every server checked and UP.
wait_ready() {
    local dir=$1 frontend_port=$2 runtime_port=$3 deadline pending
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        pending=""
        if [ -z "$(our_pid "$dir")" ]; then
            pending="process"
        elif ! port_accepts "$frontend_port"; then
            pending="frontend"
        elif ! runtime "127.0.0.1:$runtime_port" "show info" 2>/dev/null | grep -q '^Name: HAProxy'; then
            pending="runtime API on TCP"
        elif ! runtime "$dir/admin.sock" "show info" 2>/dev/null | grep -q '^Name: HAProxy'; then
            pending="runtime API on $dir/admin.sock"
        else
            pending=$(servers_not_ready "$runtime_port" 2>/dev/null || echo "?")
            [ -n "$pending" ] || return 0
            pending="servers: $(echo "$pending" | tr '\n' ' ')"
        fi
        [ "$pending" != process ] || return 1
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "haproxy.sh: not ready after ${READY_TIMEOUT}s, waiting for $pending" >&2
            return 1
        fi
        sleep 0.1
    done
}

cmd_start() {
    local dir=$1 fleet=$2 name=$3 frontend_port runtime_port attempt started
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "NAME may only hold letters, digits, '.', '_' and '-'"
    [ -s "$fleet/hosts.tsv" ] || die "no fleet in $fleet (no hosts.tsv)"
    fleet=$(realpath "$fleet")
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    # The config takes paths unquoted.
    [[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must not contain spaces or special characters: $dir"
    [ "${#dir}" -le 90 ] || die "DIR path too long for a unix socket: $dir"
    grant_traversal "$dir"

    if [ -n "$(our_pid "$dir")" ] && [ -f "$dir/endpoints" ]; then
        [ "$(read_file "$dir/fleet")" = "$fleet" ] ||
            die "HAProxy in $dir already runs in front of $(read_file "$dir/fleet")"
        frontend_port=$(endpoint_port "$dir" frontend)
        runtime_port=$(endpoint_port "$dir" runtime)
        wait_ready "$dir" "$frontend_port" "$runtime_port" || die "HAProxy in $dir is not healthy"
        cat "$dir/endpoints"
        return 0
    fi
    # Leftovers of an instance that died without a stop.
    cmd_stop "$dir"

    # Another process may take a chosen port before HAProxy binds it: then
    # the start fails, and is retried on new ports.
    started=""
    for attempt in 1 2 3 4 5; do
        frontend_port=$(pick_port)
        runtime_port=$(pick_port "$frontend_port")
        write_config "$dir" "$fleet" "$name" "$frontend_port" "$runtime_port"
        rm -f "$dir/haproxy.pid"
        # In daemon mode the command returns once HAProxy has bound its
        # sockets and forked into its own session; its exit code tells
        # whether that went well.
        if "$HAPROXY" -D -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg" \
            </dev/null >"$dir/haproxy.log" 2>&1; then
            started=yes
            break
        fi
        cmd_stop "$dir"
        if [ "$attempt" = 5 ] || { port_is_free "$frontend_port" && port_is_free "$runtime_port"; }; then
            break
        fi
    done
    if [ -z "$started" ]; then
        cat "$dir/haproxy.log" >&2 || true
        die "HAProxy failed to start"
    fi

    echo "$fleet" >"$dir/fleet"
    endpoints "$dir" "$frontend_port" "$runtime_port" >"$dir/endpoints"
    if ! wait_ready "$dir" "$frontend_port" "$runtime_port"; then
        cat "$dir/haproxy.log" >&2 || true
        runtime "127.0.0.1:$runtime_port" "show servers state app" >&2 2>/dev/null || true
        cmd_stop "$dir"
        die "HAProxy in $dir did not get ready"
    fi
    cat "$dir/endpoints"
}

cmd_reload() {
    local dir=$1 old new _
    dir=$(realpath "$dir")
    old=$(our_pid "$dir")
    [ -n "$old" ] || die "no HAProxy runs in $dir"
    runtime "$dir/admin.sock" "show servers state" >"$dir/server-state"
    "$HAPROXY" -D -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg" -x "$dir/admin.sock" -sf "$old" \
        </dev/null >>"$dir/haproxy.log" 2>&1 || die "the new HAProxy process failed to start"
    for _ in $(seq 1 100); do
        new=$(our_pid "$dir")
        if [ -n "$new" ] && [ "$new" != "$old" ] &&
            runtime "127.0.0.1:$(endpoint_port "$dir" runtime)" "show info" 2>/dev/null | grep -q "^Pid: $new\$"; then
            return 0
        fi
        sleep 0.1
    done
    die "the reloaded HAProxy does not answer"
}

cmd_stop() {
    local dir=$1 pid _
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    pid=$(our_pid "$dir")
    if [ -n "$pid" ]; then
        # TERM is HAProxy's immediate stop; connections in flight are cut.
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                pid_alive "$pid" || break
                sleep 0.1
            done
            ! pid_alive "$pid" || die "HAProxy (pid $pid) survives KILL"
        fi
    fi
    rm -f "$dir/haproxy.pid" "$dir/admin.sock" "$dir/endpoints"
}

case ${1:-} in
    start)
        if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
        cmd_start "$2" "$3" "${4:-haproxy}"
        ;;
    reload)
        [ $# -eq 2 ] || usage
        cmd_reload "$2"
        ;;
    stop)
        [ $# -eq 2 ] || usage
        cmd_stop "$2"
        ;;
    *) usage ;;
esac
