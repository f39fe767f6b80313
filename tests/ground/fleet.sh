#!/usr/bin/env bash
# Sandbox fleet of fake VMs for deployment tests.
#
#   fleet.sh up DIR N               start VMs vm-01..vm-NN on 127.0.B.1..N, where
#                                   B is a free subnet byte (20..250); returns
#                                   once every sshd and app answers. Past 99
#                                   VMs, names have four digits (vm-0001) and
#                                   each 250 VMs take one more subnet byte
#   fleet.sh down DIR               tear every VM down and free the subnet
#   fleet.sh sshd-stop DIR NAME     stop one VM's sshd (its app keeps running)
#   fleet.sh sshd-start DIR NAME    start it again
#   fleet.sh exec DIR NAME CMD...   run CMD as root inside that VM
#
# A VM is a set of mount, PID, UTS and IPC namespaces around a small init that
# runs an sshd on 127.0.B.i:22 and the sandbox app (app.py) on 127.0.B.i:8080.
# The network namespace is shared with the host: all of 127.0.0.0/8 already
# routes to lo, so every VM gets its own address without any setup.
#
# Inside a VM, DIR/vms/NAME/app is mounted on /opt/sandbox-app, owned by the
# user `deploy`, who may log in with DIR/id_ed25519 and has two commands:
#   /opt/sandbox-app/bin/install VERSION   install a release, repoint current
#   /opt/sandbox-app/bin/restart           restart the app on the current release
#
# Files in DIR: subnet (B, one per line), hosts.tsv (name<TAB>address), id_ed25519(.pub),
# authorized_keys, known_hosts (address ssh-ed25519 key, one per VM), and
# vms/NAME/ with pid (unshare), init.pid (the VM's PID 1 as seen from the
# host), sshd_config, sshd.log, console.log and app/.
set -euo pipefail

LOCK_ROOT=/tmp/vesemir-fleet-locks
MOUNT_POINT=/opt/sandbox-app
DEPLOY_USER=deploy
APP_PORT=8080
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
READY_TIMEOUT=${FLEET_READY_TIMEOUT:-30}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP_SRC=$HERE/app.py

die() {
    printf 'fleet.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: fleet.sh up DIR N
       fleet.sh down DIR
       fleet.sh sshd-stop DIR NAME
       fleet.sh sshd-start DIR NAME
       fleet.sh exec DIR NAME CMD...
EOF
    exit 2
}

port_accepts() {
    (: <"/dev/tcp/$1/$2") 2>/dev/null
}

# True while PID is alive and is the unshare that started a VM of this
# fleet, so that a recycled PID is never mistaken for a VM.
is_vm_pid() {
    local pid=$1 dir=$2 cmdline
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmdline == unshare\ * && $cmdline == *" $dir/vms/"* ]]
}

any_vm_alive() {
    local dir=$1 f
    for f in "$dir"/vms/*/pid; do
        [ -f "$f" ] || continue
        is_vm_pid "$(cat "$f")" "$dir" && return 0
    done
    return 1
}

vm_dir() {
    local dir=$1 name=$2
    [[ $name =~ ^vm-[0-9]+$ ]] || die "bad VM name: $name"
    [ -d "$dir/vms/$name" ] || die "no VM $name in $dir"
    echo "$dir/vms/$name"
}

# Host-side PID of the VM's init, checked to still be a VM of this fleet.
vm_init_pid() {
    local vmdir=$1 dir=$2 upid
    upid=$(read_file "$vmdir/pid")
    is_vm_pid "$upid" "$dir" || die "VM $(basename "$vmdir") is not running"
    cat "$vmdir/init.pid"
}

in_vm() {
    local ipid=$1
    shift
    nsenter -t "$ipid" -m -u -i -p -- "$@"
}

# ---------------------------------------------------------------- subnet lock

# Only called with the claim lock held, so a lock without an owner is one
# whose claimer died before writing it.
lock_is_stale() {
    local lock=$1 owner b
    b=$(basename "$lock")
    [ -f "$lock/owner" ] || return 0
    pid_alive "$(read_file "$lock/up.pid")" && return 1
    owner=$(cat "$lock/owner")
    [ -d "$owner" ] || return 0
    grep -qx "$b" "$owner/subnet" 2>/dev/null || return 0
    ! any_vm_alive "$owner"
}

subnet_has_listeners() {
    ss -Htln | awk '{print $4}' | grep -q "^127\.0\.$1\."
}

# Prints the claimed subnet byte B. LOCK_ROOT/B exists while B is in use;
# mkdir makes taking a free B atomic, and the claim lock keeps a stale B
# from being reclaimed by two fleets at once.
claim_subnet() {
    local dir=$1
    mkdir -p "$LOCK_ROOT"
    (
        flock 9
        for b in $(seq 20 250); do
            lock=$LOCK_ROOT/$b
            if ! mkdir "$lock" 2>/dev/null; then
                lock_is_stale "$lock" || continue
                rm -rf "$lock"
                mkdir "$lock"
            fi
            echo "$$" >"$lock/up.pid"
            echo "$dir" >"$lock/owner"
            if subnet_has_listeners "$b"; then
                # Someone outside this scheme uses these addresses.
                rm -rf "$lock"
                continue
            fi
            echo "$b"
            exit 0
        done
        die "no free subnet in 127.0.20-250.x"
    ) 9>"$LOCK_ROOT/.claim.lock"
}

release_subnet() {
    local dir=$1 b lock
    [ -f "$dir/subnet" ] || return 0
    mkdir -p "$LOCK_ROOT"
    for b in $(cat "$dir/subnet"); do
        lock=$LOCK_ROOT/$b
        (
            flock 9
            if [ "$(read_file "$lock/owner")" = "$dir" ]; then
                rm -rf "$lock"
            fi
        ) 9>"$LOCK_ROOT/.claim.lock"
    done
    rm -f "$dir/subnet"
}

# VM I of a fleet of N: its name, and its address on the claimed subnets.
vm_name() {
    if [ "$2" -le 99 ]; then printf 'vm-%02d' "$1"; else printf 'vm-%04d' "$1"; fi
}
vm_address() {
    local i=$1
    shift
    local subnets=("$@")
    printf '127.0.%s.%s' "${subnets[$(((i - 1) / 250))]}" "$(((i - 1) % 250 + 1))"
}

# ---------------------------------------------------------------- host setup

ensure_deploy_user() {
    mkdir -p "$LOCK_ROOT"
    (
        # Two fleets coming up at once must not both run useradd.
        flock 9
        if ! id -u "$DEPLOY_USER" >/dev/null 2>&1; then
            # Home is the app dir, so that sessions start there and sshd has
            # no missing home directory to complain about.
            useradd --system --no-create-home --home-dir "$MOUNT_POINT" \
                --shell /bin/sh "$DEPLOY_USER"
        fi
        # With UsePAM no, sshd refuses an account locked with "!" even with a
        # valid key; "*" only disables password logins.
        if [ "$(getent shadow "$DEPLOY_USER" | cut -d: -f2)" != '*' ]; then
            usermod -p '*' "$DEPLOY_USER"
        fi
    ) 9>"$LOCK_ROOT/.user.lock"
}

grant_traversal() {
    # sshd reads AuthorizedKeysFile as the user logging in, so deploy must be
    # able to walk down to DIR even when it sits in a private temporary
    # directory.
    local d=$1
    while :; do
        if ! runuser -u "$DEPLOY_USER" -- test -x "$d"; then
            chmod o+x "$d"
        fi
        [ "$d" != / ] || break
        d=$(dirname "$d")
    done
}

check_ports_unshadowed() {
    # A wildcard listener on these ports would keep the VMs from binding them.
    local port
    for port in 22 "$APP_PORT"; do
        if ss -Htln | awk '{print $4}' | grep -qE "^(0\.0\.0\.0|\*|\[::\]):$port\$"; then
            die "something listens on *:$port; the VMs need 127.0.B.i:$port"
        fi
    done
}

# ---------------------------------------------------------------- VM files

write_sshd_config() {
    local dir=$1 vmdir=$2 addr=$3
    cat >"$vmdir/sshd_config" <<EOF
ListenAddress $addr:22
HostKey $vmdir/ssh_host_ed25519_key
PidFile $vmdir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $DEPLOY_USER
MaxStartups 100:30:200
MaxSessions 100
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel INFO
EOF
}

write_init() {
    local vmdir=$1 name=$2
    {
        printf '#!/bin/bash\n'
        printf '# PID 1 of fake VM %s.\n' "$name"
        printf 'name=%q\nvmdir=%q\nmount_point=%q\ndeploy_user=%q\n' \
            "$name" "$vmdir" "$MOUNT_POINT" "$DEPLOY_USER"
        cat <<'EOF'
set -u
# As PID 1 every signal without a handler is ignored; exiting tears the
# whole namespace down, which is how the host stops the VM.
trap 'exit 0' TERM INT

echo "$name" >/proc/sys/kernel/hostname
mount --bind "$vmdir/app" "$mount_point"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /usr/sbin/sshd -D -f "$vmdir/sshd_config" -E "$vmdir/sshd.log" &
# In the background, so that a TERM arriving meanwhile is acted on at once.
env -i PATH=/usr/bin:/bin HOME="$mount_point" LANG=C.UTF-8 \
    setpriv --reuid="$deploy_user" --regid="$deploy_user" --init-groups \
    "$mount_point/bin/restart" &
wait $! || echo "$name: app failed to start"
echo "$name: up"

# Orphans (the detached app, daemonised sshds) are adopted by PID 1; bash
# reaps every child it gets while it waits here.
while :; do
    sleep 3600 &
    wait $! || true
done
EOF
    } >"$vmdir/init"
    chmod 0755 "$vmdir/init"
}

write_install() {
    cat >"$1" <<'EOF'
#!/bin/bash
# Installs release VERSION of the sandbox app and makes it current; the
# running app picks it up on the next restart.
set -euo pipefail
root=/opt/sandbox-app
version=${1:-}
if [ -z "$version" ] || [ $# -ne 1 ]; then
    echo "usage: install VERSION" >&2
    exit 2
fi
if [[ $version == */* || $version == .* || $version =~ [[:space:][:cntrl:]] ]]; then
    echo "install: invalid version: $version" >&2
    exit 2
fi
echo "installing sandbox-app $version"
mkdir -p "$root/releases/$version"
printf '%s\n' "$version" >"$root/releases/$version/VERSION.tmp"
mv -f "$root/releases/$version/VERSION.tmp" "$root/releases/$version/VERSION"
# A rename is atomic, so current always points at a complete release.
ln -sfn "releases/$version" "$root/.current.$$"
mv -T "$root/.current.$$" "$root/current"
echo "install: current -> releases/$version" >&2
echo "sandbox-app $version installed"
EOF
}

write_restart() {
    local path=$1 addr=$2
    {
        printf '#!/bin/bash\n'
        printf '# Restarts the sandbox app on the current release.\n'
        printf 'host=%q\nport=%q\npython=%q\n' "$addr" "$APP_PORT" "$PYTHON"
        cat <<'EOF'
set -euo pipefail
root=/opt/sandbox-app
pid_file=$root/app.pid

is_app() {
    [ -n "$1" ] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF "$root/bin/app.py"
}

old=$(cat "$pid_file" 2>/dev/null || true)
if is_app "$old"; then
    kill "$old" 2>/dev/null || true
    for _ in $(seq 1 50); do
        is_app "$old" || break
        sleep 0.1
    done
    if is_app "$old"; then
        kill -KILL "$old" 2>/dev/null || true
        sleep 0.2
    fi
    echo "stopped app (pid $old)"
fi
rm -f "$pid_file"

# Detached, with its own session and no tie to our stdio, so that the ssh
# command running this returns at once.
setsid "$python" "$root/bin/app.py" --root "$root" --host "$host" --port "$port" \
    </dev/null >>"$root/app.log" 2>&1 &
new=$!

for _ in $(seq 1 100); do
    if [ "$(cat "$pid_file" 2>/dev/null || true)" = "$new" ] &&
        (: <"/dev/tcp/$host/$port") 2>/dev/null; then
        version=$(cat "$root/current/VERSION" 2>/dev/null || echo none)
        echo "started app (pid $new), release $version, on $host:$port"
        exit 0
    fi
    if ! kill -0 "$new" 2>/dev/null; then
        echo "restart: app exited at start; see $root/app.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "restart: app not listening on $host:$port after 10s" >&2
exit 1
EOF
    } >"$path"
}

prepare_vm() {
    local dir=$1 name=$2 addr=$3 vmdir
    vmdir=$dir/vms/$name
    mkdir -p "$vmdir/app/bin"
    ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$vmdir/ssh_host_ed25519_key"
    write_sshd_config "$dir" "$vmdir" "$addr"
    write_init "$vmdir" "$name"
    cp "$APP_SRC" "$vmdir/app/bin/app.py"
    write_install "$vmdir/app/bin/install"
    write_restart "$vmdir/app/bin/restart" "$addr"
    chmod 0755 "$vmdir/app/bin/install" "$vmdir/app/bin/restart"
    chmod 0644 "$vmdir/app/bin/app.py"
    # deploy owns its app dir but not the tools in it.
    chown "$DEPLOY_USER:" "$vmdir/app"
    chmod 0755 "$vmdir/app"
    printf '%s\t%s\n' "$name" "$addr" >>"$dir/hosts.tsv"
    printf '%s %s\n' "$addr" "$(cut -d' ' -f1,2 "$vmdir/ssh_host_ed25519_key.pub")" \
        >>"$dir/known_hosts"
}

start_vm() {
    local dir=$1 name=$2 vmdir upid
    vmdir=$dir/vms/$name
    # setsid keeps the VM out of the caller's process group and terminal;
    # with no job control it execs in place, so $! is unshare itself.
    setsid unshare --mount --pid --uts --ipc --fork --kill-child=TERM --mount-proc \
        /bin/bash "$vmdir/init" </dev/null >"$vmdir/console.log" 2>&1 &
    upid=$!
    # Its end is watched through the pid file, not reported as a job.
    disown "$upid"
    echo "$upid" >"$vmdir/pid"
}

record_init_pid() {
    local vmdir=$1 upid child _
    upid=$(cat "$vmdir/pid")
    for _ in $(seq 1 100); do
        child=$(cat "/proc/$upid/task/$upid/children" 2>/dev/null || true)
        child=${child%% *}
        if [ -n "$child" ]; then
            echo "$child" >"$vmdir/init.pid"
            stat -L -c %i "/proc/$child/ns/pid" >"$vmdir/pidns"
            return 0
        fi
        pid_alive "$upid" || break
        sleep 0.05
    done
    return 1
}

vm_ready() {
    local addr=$1
    port_accepts "$addr" 22 &&
        curl -fsS -m 2 -o /dev/null "http://$addr:$APP_PORT/health" 2>/dev/null
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local dir=$1 n=$2 b i name addr deadline pending
    if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 2000 ]; then
        die "N must be 1..2000"
    fi
    [ -f "$APP_SRC" ] || die "missing $APP_SRC"
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    # sshd_config takes paths unquoted and expands % tokens.
    [[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must not contain spaces or special characters: $dir"
    if any_vm_alive "$dir"; then
        die "a fleet is already up in $dir"
    fi
    cmd_down "$dir"
    check_ports_unshadowed

    ensure_deploy_user
    mkdir -p /run/sshd "$MOUNT_POINT"
    chmod 0755 /run/sshd

    # From here on a failure, or being interrupted, must not leave VMs or a
    # lock behind; bash skips the EXIT trap on a signal it does not trap.
    trap 'cmd_down "$dir"' EXIT
    trap 'exit 1' TERM INT HUP

    local subnets=()
    : >"$dir/subnet"
    for _ in $(seq 1 $(((n + 249) / 250))); do
        b=$(claim_subnet "$dir")
        echo "$b" >>"$dir/subnet"
        subnets+=("$b")
    done

    rm -rf "$dir/vms" "$dir/hosts.tsv" "$dir/known_hosts" \
        "$dir/id_ed25519" "$dir/id_ed25519.pub" "$dir/authorized_keys"
    ssh-keygen -q -t ed25519 -N '' -C "vesemir-fleet" -f "$dir/id_ed25519"
    chmod 0600 "$dir/id_ed25519"
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    chmod 0644 "$dir/authorized_keys"
    chmod 0755 "$dir"
    grant_traversal "$dir"
    : >"$dir/hosts.tsv"
    : >"$dir/known_hosts"

    for i in $(seq 1 "$n"); do
        prepare_vm "$dir" "$(vm_name "$i" "$n")" "$(vm_address "$i" "${subnets[@]}")"
    done
    for i in $(seq 1 "$n"); do
        start_vm "$dir" "$(vm_name "$i" "$n")"
    done
    for i in $(seq 1 "$n"); do
        name=$(vm_name "$i" "$n")
        record_init_pid "$dir/vms/$name" || {
            cat "$dir/vms/$name/console.log" >&2 || true
            die "$name did not start"
        }
    done

    # A big fleet takes its time to boot on a small machine.
    deadline=$((SECONDS + READY_TIMEOUT + n / 10))
    pending=$(seq 1 "$n")
    while [ -n "$pending" ]; do
        local still=""
        for i in $pending; do
            vm_ready "$(vm_address "$i" "${subnets[@]}")" || still="$still $i"
        done
        pending=${still# }
        [ -n "$pending" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            local names=""
            for i in $pending; do
                name=$(vm_name "$i" "$n")
                names="$names $name"
                printf '== %s console\n' "$name" >&2
                tail -n 20 "$dir/vms/$name/console.log" >&2 || true
                printf '== %s sshd.log\n' "$name" >&2
                tail -n 20 "$dir/vms/$name/sshd.log" >&2 || true
            done
            die "VMs not ready after ${READY_TIMEOUT}s:$names"
        fi
        sleep 0.1
    done

    for b in "${subnets[@]}"; do rm -f "$LOCK_ROOT/$b/up.pid"; done
    trap - EXIT TERM INT HUP
}

pidns_empty() {
    ! ps -e -o pidns=,stat= | awk -v ns="$1" '$1 == ns && $2 !~ /^Z/ {found=1} END {exit !found}'
}

# Waits until no process (zombies aside) is left in the PID namespace NS of
# the VM whose init is IPID, repeating the TERM: one sent before the init
# had installed its handler is lost.
wait_vm_gone() {
    local ns=$1 ipid=$2 i
    for i in $(seq 1 50); do
        pidns_empty "$ns" && return 0
        if [ $((i % 5)) = 0 ] && [ -n "$ipid" ]; then
            kill -TERM "$ipid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    if [ -n "$ipid" ]; then kill -KILL "$ipid" 2>/dev/null || true; fi
    for i in $(seq 1 50); do
        pidns_empty "$ns" && return 0
        sleep 0.1
    done
    return 1
}

cmd_down() {
    local dir=$1 vmdir upid ipid ns _
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    # Ask every VM first, so they wind down in parallel.
    for vmdir in "$dir"/vms/*/; do
        vmdir=${vmdir%/}
        [ -f "$vmdir/pid" ] || continue
        upid=$(cat "$vmdir/pid")
        if is_vm_pid "$upid" "$dir" && [ ! -f "$vmdir/init.pid" ]; then
            # Interrupted right after starting it.
            record_init_pid "$vmdir" || true
        fi
        ipid=$(read_file "$vmdir/init.pid")
        if is_vm_pid "$upid" "$dir"; then
            # Its PID 1 exits on TERM, and the kernel kills the rest.
            if [ -n "$ipid" ]; then kill -TERM "$ipid" 2>/dev/null || true; fi
            kill -TERM "$upid" 2>/dev/null || true
        fi
    done
    for vmdir in "$dir"/vms/*/; do
        vmdir=${vmdir%/}
        [ -f "$vmdir/pid" ] || continue
        upid=$(cat "$vmdir/pid")
        ipid=$(read_file "$vmdir/init.pid")
        ns=$(read_file "$vmdir/pidns")
        if [ -n "$ns" ] && ! wait_vm_gone "$ns" "$ipid"; then
            die "processes of $(basename "$vmdir") survive"
        fi
        # unshare exits by itself once it has reaped the VM's PID 1.
        for _ in $(seq 1 30); do
            is_vm_pid "$upid" "$dir" || break
            sleep 0.1
        done
        if is_vm_pid "$upid" "$dir"; then
            kill -KILL "$upid" 2>/dev/null || true
        fi
        rm -f "$vmdir/pid" "$vmdir/init.pid" "$vmdir/pidns" "$vmdir/sshd.pid"
    done
    release_subnet "$dir"
}

cmd_sshd_stop() {
    local dir vmdir ipid addr _
    dir=$(realpath "$1")
    vmdir=$(vm_dir "$dir" "$2")
    ipid=$(vm_init_pid "$vmdir" "$dir")
    addr=$(awk -v n="$2" '$1 == n {print $2}' "$dir/hosts.tsv")
    # The pid file holds the PID as seen inside the VM, so the kill has to
    # happen in there too.
    # shellcheck disable=SC2016
    in_vm "$ipid" /bin/sh -c '
        pid=$(cat "$1" 2>/dev/null) || exit 0
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || exit 0
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true' sh "$vmdir/sshd.pid"
    rm -f "$vmdir/sshd.pid"
    for _ in $(seq 1 50); do
        port_accepts "$addr" 22 || return 0
        sleep 0.1
    done
    die "sshd of $2 still accepts connections"
}

cmd_sshd_start() {
    local dir vmdir ipid addr _
    dir=$(realpath "$1")
    vmdir=$(vm_dir "$dir" "$2")
    ipid=$(vm_init_pid "$vmdir" "$dir")
    addr=$(awk -v n="$2" '$1 == n {print $2}' "$dir/hosts.tsv")
    port_accepts "$addr" 22 && return 0
    # Without -D sshd daemonises; the VM's PID 1 adopts and later reaps it.
    in_vm "$ipid" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /usr/sbin/sshd -f "$vmdir/sshd_config" -E "$vmdir/sshd.log" \
        </dev/null >/dev/null 2>&1
    for _ in $(seq 1 100); do
        port_accepts "$addr" 22 && return 0
        sleep 0.1
    done
    die "sshd of $2 does not accept connections"
}

cmd_exec() {
    local dir vmdir ipid
    dir=$(realpath "$1")
    vmdir=$(vm_dir "$dir" "$2")
    ipid=$(vm_init_pid "$vmdir" "$dir")
    shift 2
    in_vm "$ipid" "$@"
}

[ $# -ge 2 ] || usage
case $1 in
    up) [ $# -eq 3 ] || usage; cmd_up "$2" "$3" ;;
    down) [ $# -eq 2 ] || usage; cmd_down "$2" ;;
    sshd-stop) [ $# -eq 3 ] || usage; cmd_sshd_stop "$2" "$3" ;;
    sshd-start) [ $# -eq 3 ] || usage; cmd_sshd_start "$2" "$3" ;;
    exec) [ $# -ge 4 ] || usage; cmd_exec "$2" "$3" "${@:4}" ;;
    *) usage ;;
esac
