#!/usr/bin/env bash
# Throwaway goiardi (a Chef-compatible server) for tests, with authentication
# on and everything in memory.
#
#   goiardi.sh start DIR    start goiardi on a free loopback port with its
#                           keys and log in DIR; returns once the admin key
#                           is accepted. Prints, and writes to DIR/endpoints:
#                             url=http://127.0.0.1:PORT
#                             admin_user=admin
#                             admin_key=DIR/admin.pem
#   goiardi.sh stop DIR     stop it; no-op if not running
#   goiardi.sh client DIR NAME
#                           create the (non-admin) API client NAME, write its
#                           private key to DIR/NAME.pem (mode 0600) and print
#                             key=DIR/NAME.pem
#   goiardi.sh node DIR NAME JSON
#                           create the node NAME from JSON, an object with any
#                           of the node's top-level fields (chef_environment,
#                           run_list, normal, automatic, ...); the rest get
#                           Chef's defaults. automatic.roles, unless given,
#                           lists the run list's roles, as after a Chef run.
#                           Prints node=NAME
#   goiardi.sh wait-searchable DIR QUERY N
#                           wait until GET /search/node?q=QUERY (QUERY as
#                           typed, unencoded) returns at least N rows; prints
#                             rows=COUNT
#   goiardi.sh request DIR METHOD PATH [BODY]
#                           send one request signed as the admin and print
#                           the body; fails on an HTTP error status
#
# The data lives in memory only: a restart forgets every client and node,
# and goiardi writes a new admin.pem (and chef-validator.pem, chef-webui.pem)
# at every start, so keys of clients created before are useless after it.
# goiardi indexes a write in the background after answering it, so a search
# made right after may miss it; hence wait-searchable.
# Signing is done by chef_request.rb beside this script, with Chef's own
# library (Debian's ruby-mixlib-authentication).
# Files in DIR: goiardi.pid, goiardi.log, endpoints, last_start_ms, admin.pem,
# chef-validator.pem, chef-webui.pem, NAME.pem per client.
set -euo pipefail

GOIARDI=${GOIARDI:-/usr/bin/goiardi}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUBY=${RUBY:-/usr/bin/ruby}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHEF_REQUEST=$HERE/chef_request.rb
LOG_LEVEL=${GOIARDI_TEST_LOG_LEVEL:-info}
READY_TIMEOUT=${GOIARDI_READY_TIMEOUT:-30}
SEARCH_TIMEOUT=${GOIARDI_SEARCH_TIMEOUT:-30}
# The port of the Debian package's own service, which is left alone.
SYSTEM_PORT=4545

die() {
    printf 'goiardi.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    die "usage: goiardi.sh start DIR | stop DIR | client DIR NAME | node DIR NAME JSON | wait-searchable DIR QUERY N | request DIR METHOD PATH [BODY]"
}

# Prints the PID from DIR/goiardi.pid if that process runs and is the
# goiardi started on DIR, so that a recycled PID is never signalled.
our_pid() {
    local dir=$1 pid cmdline
    pid=$(read_file "$dir/goiardi.pid")
    pid=${pid%%$'\n'*}
    pid_alive "$pid" || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
    if [[ " $cmdline " == *" --conf-root $dir "* ]]; then
        echo "$pid"
    fi
}

endpoint() {
    sed -n "s/^$2=//p" "$1/endpoints"
}

# Runs chef_request.rb as the admin of the instance in DIR.
admin_request() {
    local dir=$1
    shift
    [ -f "$dir/endpoints" ] || die "no goiardi started in $dir"
    "$RUBY" "$CHEF_REQUEST" "$(endpoint "$dir" url)" "$(endpoint "$dir" admin_user)" \
        "$(endpoint "$dir" admin_key)" "$@"
}

# Any HTTP answer will do, a 401 included: it shows the listener is up.
answers_http() {
    curl -s -o /dev/null --max-time 2 --noproxy '*' "http://127.0.0.1:$1/"
}

cmd_start() {
    local dir=$1 port="" attempt pid deadline start_ns
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    [[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must not contain spaces or special characters: $dir"

    if [ -n "$(our_pid "$dir")" ] && [ -f "$dir/endpoints" ]; then
        cat "$dir/endpoints"
        return 0
    fi
    # Leftovers of an instance that died without a stop.
    cmd_stop "$dir"

    start_ns=$(date +%s%N)
    # A port chosen free may be taken before goiardi binds it; goiardi then
    # exits, and the start is retried on another port.
    for attempt in 1 2 3 4 5; do
        port=$(pick_port "$SYSTEM_PORT")
        # Removed so that the wait below cannot be fooled by a stale key.
        rm -f "$dir/admin.pem" "$dir/goiardi.pid"
        # A clean environment: goiardi reads any GOIARDI_* variable as an
        # option, and a config file or data file slipped in that way would
        # change what the tests see. setsid detaches it from the caller's
        # terminal and signals; env and setsid exec into it, so $! is
        # goiardi itself.
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$dir" LANG=C.UTF-8 \
            setsid "$GOIARDI" --ipaddress 127.0.0.1 --port "$port" \
            --hostname 127.0.0.1 --use-auth --conf-root "$dir" --disable-webui \
            --log-level "$LOG_LEVEL" </dev/null >>"$dir/goiardi.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/goiardi.pid"

        deadline=$((SECONDS + READY_TIMEOUT))
        while pid_alive "$pid" && ! answers_http "$port"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                tail -n 20 "$dir/goiardi.log" >&2 || true
                cmd_stop "$dir"
                die "goiardi did not answer on port $port within ${READY_TIMEOUT}s"
            fi
            sleep 0.1
        done
        pid_alive "$pid" && break
        if [ "$attempt" = 5 ] || port_is_free "$port"; then
            tail -n 20 "$dir/goiardi.log" >&2 || true
            die "goiardi exited during startup (see $dir/goiardi.log)"
        fi
    done

    printf 'url=http://127.0.0.1:%s\nadmin_user=admin\nadmin_key=%s\n' \
        "$port" "$dir/admin.pem" >"$dir/endpoints"
    # goiardi writes admin.pem before it listens, but a signed request is the
    # only proof that the key on disk is the one it uses.
    if ! admin_request "$dir" GET /users/admin >/dev/null; then
        tail -n 20 "$dir/goiardi.log" >&2 || true
        cmd_stop "$dir"
        die "goiardi does not accept its own admin key"
    fi
    printf '%s\n' "$((($(date +%s%N) - start_ns) / 1000000))" >"$dir/last_start_ms"
    cat "$dir/endpoints"
}

cmd_stop() {
    local dir=$1 pid
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    pid=$(our_pid "$dir")
    if [ -n "$pid" ]; then
        # goiardi has nothing to save here, so TERM is enough to end it.
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 50; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 50 || die "goiardi (pid $pid) survives KILL"
        fi
    fi
    rm -f "$dir/goiardi.pid" "$dir/endpoints"
}

check_name() {
    # Chef's rule for client and node names; it also keeps NAME.pem in DIR.
    [[ $1 =~ ^[A-Za-z0-9_.:-]+$ ]] || die "invalid name: $1"
}

cmd_client() {
    local dir=$1 name=$2 answer key
    dir=$(realpath "$dir")
    check_name "$name"
    key="$dir/$name.pem"
    answer=$(admin_request "$dir" POST /clients \
        "{\"name\": \"$name\", \"admin\": false}") || die "could not create client $name: $answer"
    rm -f "$key"
    (umask 077 && printf '%s' "$answer" | "$PYTHON" -c '
import json, sys
sys.stdout.write(json.load(sys.stdin)["private_key"])
' >"$key") || die "no private key in the answer: $answer"
    chmod 0600 "$key"
    printf 'key=%s\n' "$key"
}

cmd_node() {
    local dir=$1 name=$2 json=$3 body answer
    dir=$(realpath "$dir")
    check_name "$name"
    # Fields left out get what `knife node create` would give them; the
    # given ones replace them whole.
    body=$("$PYTHON" - "$name" "$json" <<'EOF'
import json, sys
name, given = sys.argv[1], json.loads(sys.argv[2])
if not isinstance(given, dict):
    sys.exit("JSON must be an object")
if given.get("name", name) != name:
    sys.exit("JSON names another node: %s" % given["name"])
node = {
    "name": name,
    "json_class": "Chef::Node",
    "chef_type": "node",
    "chef_environment": "_default",
    "run_list": [],
    "normal": {},
    "default": {},
    "override": {},
    "automatic": {},
}
node.update(given)
# `roles:` searches look at automatic.roles, which chef-client fills from the
# expanded run list; without a client run, the run list's own roles stand in.
automatic = node["automatic"]
if isinstance(automatic, dict) and "roles" not in automatic:
    automatic["roles"] = [
        item[len("role["):-1] for item in node["run_list"]
        if item.startswith("role[") and item.endswith("]")
    ]
print(json.dumps(node))
EOF
    ) || die "bad node JSON"
    answer=$(admin_request "$dir" POST /nodes "$body") || die "could not create node $name: $answer"
    printf 'node=%s\n' "$name"
}

cmd_wait_searchable() {
    local dir=$1 query=$2 want=$3 path answer count deadline
    [[ $want =~ ^[0-9]+$ ]] || die "N must be a number"
    dir=$(realpath "$dir")
    # rows is set past N: goiardi's default page may be smaller, and its
    # `total` only counts the rows of the page returned.
    path=$("$PYTHON" -c '
import sys, urllib.parse
print("/search/node?" + urllib.parse.urlencode(
    {"q": sys.argv[1], "rows": max(int(sys.argv[2]), 1000)}))
' "$query" "$want")
    deadline=$((SECONDS + SEARCH_TIMEOUT))
    while :; do
        answer=$(admin_request "$dir" GET "$path") || die "search failed: $answer"
        count=$(printf '%s' "$answer" | "$PYTHON" -c '
import json, sys
print(len(json.load(sys.stdin)["rows"]))
')
        if [ "$count" -ge "$want" ]; then
            printf 'rows=%s\n' "$count"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "search for '$query' has $count rows, not $want, after ${SEARCH_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

case ${1:-} in
    start)
        [ $# -eq 2 ] || usage
        cmd_start "$2"
        ;;
    stop)
        [ $# -eq 2 ] || usage
        cmd_stop "$2"
        ;;
    client)
        [ $# -eq 3 ] || usage
        cmd_client "$2" "$3"
        ;;
    node)
        [ $# -eq 4 ] || usage
        cmd_node "$2" "$3" "$4"
        ;;
    wait-searchable)
        [ $# -eq 4 ] || usage
        cmd_wait_searchable "$2" "$3" "$4"
        ;;
    request)
        if [ $# -lt 4 ] || [ $# -gt 5 ]; then usage; fi
        dir=$(realpath "$2")
        shift 2
        admin_request "$dir" "$@"
        ;;
    *) usage ;;
esac
