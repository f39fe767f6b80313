# shellcheck shell=bash
# Helpers shared by the test-ground scripts (sourced, not run). A script that sources
# this defines `die` itself, so errors name the script.

PYTHON=/usr/bin/python3

port_is_free() {
    # A real bind also catches listeners on 0.0.0.0. SO_REUSEADDR, as the
    # servers themselves use, lets connections of a previous run that linger
    # in TIME_WAIT pass, so a restarted server can keep its port.
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
PY
}

# pick_port [AVOID]: a free loopback port, other than AVOID.
# shellcheck disable=SC2120 # AVOID is optional
pick_port() {
    # Stay below the kernel's ephemeral range so outgoing connections made
    # later by the tests cannot already sit on the chosen port.
    local p _
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if [ "$p" != "${1:-}" ] && port_is_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# A zombie counts as gone: whoever adopted it may take a while to reap it.
pid_alive() {
    local state
    [ -n "$1" ] || return 1
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

# Waits up to N tenths of a second for a process to disappear.
wait_gone() {
    local pid=$1 n=$2 _
    for _ in $(seq 1 "$n"); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

read_file() {
    if [ -f "$1" ]; then cat "$1"; fi
}
