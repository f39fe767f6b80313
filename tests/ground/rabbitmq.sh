#!/usr/bin/env bash
# Throwaway RabbitMQ node for tests, living beside the machine's own node.
#
#   rabbitmq.sh start DIR [PORT]  start a node whose data, logs, config, plugin
#                                 list, cookie and pid file are all in DIR, with
#                                 AMQP on 127.0.0.1:PORT (default: the port used
#                                 last time in DIR, else a free one); prints
#                                 amqp://guest:guest@127.0.0.1:PORT/%2f
#   rabbitmq.sh stop DIR          stop that node and wait for its processes to
#                                 go; no-op if not running
#
# RABBIT_EXTRA_CONF: more rabbitmq.conf lines (`consumer_timeout = 5000`, say).
#
# The node has its own name, cookie, distribution port and its own epmd on a
# private port, so neither the machine's node nor its epmd is involved.
# Files in DIR: port, nodename, dist_port, epmd_port, rabbit.pid, epmd.pid,
# wrapper.pid, last_start_ms, rabbitmq.conf, rabbitmq-env.conf,
# advanced.config, enabled_plugins, .erlang.cookie, mnesia/, log/.
set -euo pipefail

RABBIT_BIN=${RABBIT_BIN:-/usr/lib/rabbitmq/bin}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
START_TIMEOUT=${RABBIT_START_TIMEOUT:-120}

die() {
    printf 'rabbitmq.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    die "usage: rabbitmq.sh start DIR [PORT] | rabbitmq.sh stop DIR"
}

port_accepts() {
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sets RMQ_ENV to the environment of the node in DIR, for `env -i`. It is
# built from scratch so that nothing from the machine's own node (its
# rabbitmq-env.conf, the cookie in HOME, ERL_* variables) leaks in.
rmq_env() {
    local dir=$1
    RMQ_ENV=(
        PATH=/usr/sbin:/usr/bin:/sbin:/bin
        LANG=C.UTF-8 LC_ALL=C.UTF-8
        HOME="$dir"
        ERL_EPMD_ADDRESS=127.0.0.1
        ERL_EPMD_PORT="$(cat "$dir/epmd_port")"
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
        RABBITMQ_NODENAME="$(cat "$dir/nodename")"
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log"
        RABBITMQ_PID_FILE="$dir/rabbit.pid"
        RABBITMQ_DIST_PORT="$(cat "$dir/dist_port")"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

rabbitmqctl() {
    local dir=$1
    shift
    rmq_env "$dir"
    env -i "${RMQ_ENV[@]}" timeout 60 "$RABBIT_BIN/rabbitmqctl" -q \
        -n "$(cat "$dir/nodename")" "$@"
}

# Prints the PID recorded in DIR/FILE if that process runs and was started
# for this node (all are given its name in their environment), so that a PID
# recycled since by an unrelated process is never signalled.
our_pid() {
    local dir=$1 pid
    pid=$(read_file "$dir/$2")
    pid_alive "$pid" || return 0
    if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" |
        grep -qxF "RABBITMQ_NODENAME=$(cat "$dir/nodename")"; then
        echo "$pid"
    fi
}

node_pid() {
    our_pid "$1" rabbit.pid
}

is_running() {
    local dir=$1
    [ -f "$dir/nodename" ] && [ -f "$dir/epmd_port" ] || return 1
    [ -n "$(node_pid "$dir")" ] || return 1
    port_accepts "$(cat "$dir/port")"
}

url() {
    printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$1"
}

write_config() {
    local dir=$1 port=$2
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users.guest = true
log.console = false
log.file.level = info
${RABBIT_EXTRA_CONF:-}
EOF
    # Kept empty on purpose: without it the machine-wide one would be read.
    : >"$dir/rabbitmq-env.conf"
    printf '[].\n' >"$dir/enabled_plugins"
    printf '[].\n' >"$dir/advanced.config"
}

stop_epmd() {
    local dir=$1 pid
    pid=$(our_pid "$dir" epmd.pid)
    if pid_alive "$pid"; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/epmd.pid"
}

# Prints PID and all its descendants. The node's helpers (erl_child_setup,
# which starts its own session, inet_gethost, the disk monitor shell) are
# only reachable this way.
process_tree() {
    local child
    pid_alive "$1" || return 0
    echo "$1"
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        process_tree "$child"
    done
}

cmd_start() {
    local dir=$1 port=$2 start_ns pid
    mkdir -p "$dir"
    dir=$(realpath "$dir")

    if is_running "$dir"; then
        if [ -n "$port" ] && [ "$port" != "$(cat "$dir/port")" ]; then
            die "node in $dir already runs on port $(cat "$dir/port")"
        fi
        url "$(cat "$dir/port")"
        return 0
    fi
    # Leftovers of a node that died without a stop.
    cmd_stop "$dir"

    if [ -z "$port" ]; then
        port=$(read_file "$dir/port")
    fi
    if [ -z "$port" ]; then
        port=$(pick_port)
    elif ! port_is_free "$port"; then
        die "port $port is in use"
    fi
    echo "$port" >"$dir/port"

    # The node name must stay the same across restarts: the data directory
    # is keyed by it.
    if [ ! -s "$dir/nodename" ]; then
        local id
        id=$(tr -d '-' </proc/sys/kernel/random/uuid)
        echo "vt-${id:0:12}@localhost" >"$dir/nodename"
    fi
    if [ ! -s "$dir/.erlang.cookie" ]; then
        (umask 077 && tr -d '-' </proc/sys/kernel/random/uuid >"$dir/.erlang.cookie")
    fi
    chmod 0400 "$dir/.erlang.cookie"
    pick_port >"$dir/epmd_port"
    pick_port >"$dir/dist_port"
    write_config "$dir" "$port"
    mkdir -p "$dir/log" "$dir/mnesia"
    rm -f "$dir/rabbit.pid"

    start_ns=$(date +%s%N)

    # Our own epmd, started in the foreground under our control, so that stop
    # can end it; the node would otherwise spawn a daemonised one that
    # outlives it.
    rmq_env "$dir"
    env -i "${RMQ_ENV[@]}" setsid epmd -port "$(cat "$dir/epmd_port")" -address 127.0.0.1 \
        </dev/null >"$dir/log/epmd.log" 2>&1 &
    echo "$!" >"$dir/epmd.pid"
    for _ in $(seq 1 50); do
        port_accepts "$(cat "$dir/epmd_port")" && break
        sleep 0.1
    done

    # setsid detaches the node from the caller's terminal and signals. A
    # plain command (no function, no subshell), so that $! is the server's
    # wrapper script itself, env and setsid exec'ing into it: stop finds
    # every process of the node below it.
    env -i "${RMQ_ENV[@]}" setsid "$RABBIT_BIN/rabbitmq-server" \
        </dev/null >"$dir/log/startup.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/wrapper.pid"

    local deadline=$((SECONDS + START_TIMEOUT))
    while ! port_accepts "$port"; do
        if ! pid_alive "$pid"; then
            tail -n 30 "$dir/log/startup.log" >&2 || true
            stop_epmd "$dir"
            die "node exited during startup (see $dir/log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$dir/log/startup.log" >&2 || true
            cmd_stop "$dir"
            die "node did not open port $port within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    # Listeners open near the end of boot; await_startup covers the rest.
    if ! rabbitmqctl "$dir" await_startup --timeout 50 >&2; then
        cmd_stop "$dir"
        die "node did not finish booting"
    fi
    printf '%s\n' "$((($(date +%s%N) - start_ns) / 1000000))" >"$dir/last_start_ms"
    url "$port"
}

cmd_stop() {
    local dir=$1 pid pids p
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    [ -f "$dir/nodename" ] && [ -f "$dir/epmd_port" ] || return 0

    pid=$(node_pid "$dir")
    # Taken before stopping: once the parents are gone the tree is lost.
    pids=$(
        process_tree "$(our_pid "$dir" wrapper.pid)"
        process_tree "$pid"
    )
    if pid_alive "$pid"; then
        # The node shuts down gracefully on TERM, as with `rabbitmqctl stop`,
        # without the second or two the CLI takes to boot.
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 300 || true
    fi
    for p in $pids; do
        if ! wait_gone "$p" 50; then
            kill -KILL "$p" 2>/dev/null || true
            wait_gone "$p" 50 || die "process $p of the node survives"
        fi
    done
    stop_epmd "$dir"
    rm -f "$dir/rabbit.pid" "$dir/wrapper.pid"
}

case ${1:-} in
    start)
        if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi
        if [ -n "${3:-}" ] && ! [[ $3 =~ ^[0-9]+$ ]]; then
            die "PORT must be a number"
        fi
        cmd_start "$2" "${3:-}"
        ;;
    stop)
        [ $# -eq 2 ] || usage
        cmd_stop "$2"
        ;;
    *) usage ;;
esac
