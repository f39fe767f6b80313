#!/usr/bin/python3
# Vesemir's HAProxy module: takes a server out of rotation and puts it back through
# HAProxy's Runtime API, over TCP, a local unix socket, or SSH to the load balancer
# host and its unix socket (with socat there), as the native executor does. Reaching
# the load balancer is the module's own business, so a load balancer that cannot be
# reached fails the task like any refusal, and the play's rescue still runs.
#
# Every change is read back: HAProxy forgets runtime changes when it reloads, so a
# change that did not stick is made once more, and then fails. Answers are parsed
# strictly; anything that is not success fails with HAProxy's own words.
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: vesemir_haproxy
short_description: Drain, maintain, re-enable and re-weight a server through HAProxy's Runtime API
description:
  - One load balancer per call. Changes are verified by reading the server back.
options:
  name:
    description: The load balancer's name, used in messages.
    type: str
    required: true
  runtime_api:
    description:
      - Where the Runtime API listens; a TCP address C(host:port), or the absolute path
        of a unix socket (on the host running the task, or on I(ssh.host)).
    type: str
    required: true
  ssh:
    description:
      - Reach the unix socket on this host, over SSH with the options in I(options_file)
        (the worker's one set: strict host-key checking, keys only, no prompts).
    type: dict
    options:
      host: {type: str, required: true}
      options_file: {type: path, required: true}
      connect_timeout: {type: int, default: 10}
  backend:
    description: The HAProxy backend.
    type: str
    required: true
  server:
    description: The server in that backend.
    type: str
    required: true
  action:
    description:
      - C(drain) and C(maint) take the server out of rotation.
      - C(wait_drained) waits until it holds no session (up to I(wait_seconds); then goes on).
      - C(ready) puts it back, at I(percent) of its initial weight when given, and waits
        until HAProxy's own check reports it UP (fails after I(wait_seconds)).
      - C(full_weight) sets its weight back to 100% and waits until it is UP.
    type: str
    required: true
    choices: [drain, wait_drained, maint, ready, full_weight]
  percent:
    description: The weight, in percent of the initial weight, that C(ready) sets first.
    type: int
  wait_seconds:
    type: int
    default: 60
  poll_ms:
    type: int
    default: 200
  timeout_ms:
    description: Longest wait for one Runtime API answer.
    type: int
    default: 3000
"""

RETURN = r"""
still_out:
  description: For a failed C(ready), whether the server is still out of rotation.
  type: bool
  returned: failure
report:
  description: One line per change or check, as the load balancer reported it.
  type: list
  elements: str
  returned: always
"""

# srv_admin_state flags (HAProxy's SRV_ADMF_*): maintenance from any source, drain
# forced or inherited.
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
ADMF_DRAIN = 0x08 | 0x10
MAX_ANSWER_BYTES = 4 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Refused(Exception):
    # Set when `ready` failed before the server was put back: it is still out.
    still_out = False


class RuntimeApi:
    def __init__(self, where, timeout, ssh=None):
        self.where = where
        self.timeout = timeout
        self.ssh = ssh

    def _over_ssh(self, line):
        ssh = self.ssh
        # The worker's one set of SSH options (-F): keys, known hosts, no prompts.
        argv = [
            "ssh", "-F", ssh["options_file"], "-T",
            "--", ssh["host"], "socat - UNIX-CONNECT:" + shlex.quote(self.where),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv, input=line.encode(), capture_output=True, timeout=self.timeout + ssh["connect_timeout"]
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Refused("load balancer unreachable: %s" % e)
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip()
            raise Refused("load balancer unreachable: ssh to %s: %s" % (ssh["host"], said))
        return done.stdout[:MAX_ANSWER_BYTES].decode("utf-8", "replace")

    def _connect(self):
        if self.where.startswith("/"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(self.timeout)
            conn.connect(self.where)
            return conn
        host, _, port = self.where.rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)

    def command(self, line):
        if self.ssh:
            return self._over_ssh(line + "\n")
        try:
            with self._connect() as conn:
                conn.sendall((line + "\n").encode())
                chunks, size = [], 0
                while size < MAX_ANSWER_BYTES:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except (OSError, ValueError) as e:
            raise Refused("load balancer unreachable: %s" % e)
        return b"".join(chunks).decode("utf-8", "replace")

    def change(self, line):
        answer = self.command(line).strip()
        if answer:
            raise Refused("`%s` was refused: %s" % (line, answer))

    def server(self, backend, server):
        state_command = "show servers state %s" % backend
        admin, weight, initial = parse_servers_state(self.command(state_command), server, state_command)
        stat_command = "show stat %s 4 -1" % backend
        status, sessions = parse_stat(self.command(stat_command), server, stat_command)
        return {"admin": admin, "status": status, "sessions": sessions, "weight": weight, "initial_weight": initial}


def parse_servers_state(answer, server, command):
    lines = [line for line in answer.splitlines() if line.strip()]
    if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("# "):
        raise Refused("`%s` was refused: %s" % (command, answer.strip()))
    at = columns(lines[1][2:].split(), ("srv_name", "srv_admin_state", "srv_uweight", "srv_iweight"), command)
    for row in lines[2:]:
        fields = row.split()
        if fields[at["srv_name"] : at["srv_name"] + 1] != [server]:
            continue
        try:
            flags = int(fields[at["srv_admin_state"]])
            admin = "maint" if flags & ADMF_MAINT else "drain" if flags & ADMF_DRAIN else "ready"
            return admin, int(fields[at["srv_uweight"]]), int(fields[at["srv_iweight"]])
        except (IndexError, ValueError):
            raise Refused("`%s`: unreadable row: %s" % (command, row))
    raise Refused("`%s` was refused: No such server." % command)


def columns(header, names, command):
    """The position of each named column, or Refused naming the one missing."""
    for name in names:
        if name not in header:
            raise Refused("`%s`: no %s column in the answer" % (command, name))
    return {name: header.index(name) for name in names}


def parse_stat(answer, server, command):
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise Refused("`%s` was refused: %s" % (command, answer.strip()))
    at = columns(lines[0][2:].split(","), ("svname", "status", "scur"), command)
    for row in lines[1:]:
        fields = row.split(",")
        if fields[at["svname"] : at["svname"] + 1] != [server]:
            continue
        try:
            return fields[at["status"]], int(fields[at["scur"]])
        except (IndexError, ValueError):
            raise Refused("`%s`: unreadable row: %s" % (command, row))
    raise Refused("`%s` was refused: No such server." % command)


def weight_for(initial, percent):
    # HAProxy computes a percentage of the initial weight with integer division.
    return min(initial * percent // 100, 256)


def is_up(status):
    # A server just set ready shows "UP 1/2" until its first check passes.
    return status["status"] in ("UP", "no check")


def apply_checked(api, backend, server, command, applied):
    last = None
    for _ in range(2):
        api.change(command)
        last = api.server(backend, server)
        if applied(last):
            return last
    raise Refused(
        "the change did not stick, twice; the load balancer reports %s %s weight %d"
        % (last["admin"], last["status"], last["weight"])
    )


class Server:
    """One server of one backend, on one load balancer."""

    def __init__(self, api, p):
        self.api, self.p = api, p
        self.backend, self.server = p["backend"], p["server"]
        self.where = "%s: %s/%s" % (p["name"], self.backend, self.server)

    def set_state(self, state):
        command = "set server %s/%s state %s" % (self.backend, self.server, state)
        status = apply_checked(self.api, self.backend, self.server, command, lambda s: s["admin"] == state)
        return "%s is %s (%s)" % (self.where, status["admin"], status["status"])

    def set_weight(self, percent):
        command = "set weight %s/%s %d%%" % (self.backend, self.server, percent)
        status = apply_checked(
            self.api, self.backend, self.server, command, lambda s: s["weight"] == weight_for(s["initial_weight"], percent)
        )
        return "%s weight %d of %d" % (self.where, status["weight"], status["initial_weight"])

    def wait(self, done):
        """Polls until done(status) or the wait is over: (last status, whether done)."""
        deadline = time.monotonic() + self.p["wait_seconds"]
        while True:
            status = self.api.server(self.backend, self.server)
            if done(status):
                return status, True
            if time.monotonic() >= deadline:
                return status, False
            time.sleep(self.p["poll_ms"] / 1000.0)

    def wait_drained(self):
        status, drained = self.wait(lambda s: s["sessions"] == 0)
        if drained:
            return "%s: no session left" % self.where
        return "%s: %d sessions still open after the %ds drain timeout; going on" % (
            self.where,
            status["sessions"],
            self.p["wait_seconds"],
        )

    def wait_up(self):
        status, up = self.wait(is_up)
        if not up:
            raise Refused(
                "%s/%s not UP after %ds: %s says %s"
                % (self.backend, self.server, self.p["wait_seconds"], self.p["name"], status["status"])
            )
        return "%s is %s" % (self.where, status["status"])


def run(server, p):
    """The action's report, one line per change or check."""
    action = p["action"]
    if action in ("drain", "maint"):
        return [server.set_state(action)]
    if action == "wait_drained":
        return [server.wait_drained()]
    if action == "ready":
        # The reduced weight is set while the server is still out, so it comes back at
        # that weight and never takes a full share early.
        try:
            report = [server.set_weight(p["percent"])] if p["percent"] is not None else []
            report.append(server.set_state("ready"))
        except Refused as e:
            e.still_out = True
            raise
        return report + [server.wait_up()]
    return [server.set_weight(100), server.wait_up()]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            runtime_api=dict(type="str", required=True),
            ssh=dict(
                type="dict",
                options=dict(
                    host=dict(type="str", required=True),
                    options_file=dict(type="path", required=True),
                    connect_timeout=dict(type="int", default=10),
                ),
            ),
            backend=dict(type="str", required=True),
            server=dict(type="str", required=True),
            action=dict(
                type="str", required=True, choices=["drain", "wait_drained", "maint", "ready", "full_weight"]
            ),
            percent=dict(type="int"),
            wait_seconds=dict(type="int", default=60),
            poll_ms=dict(type="int", default=200),
            timeout_ms=dict(type="int", default=3000),
        ),
    )
    p = module.params
    # Names go into a one-line text protocol: anything but a plain name is refused.
    for field in ("backend", "server"):
        if not NAME.match(p[field]):
            module.fail_json(msg="%s %r is not a valid HAProxy name" % (field, p[field]), report="")
    if p["percent"] is not None and not 1 <= p["percent"] <= 100:
        module.fail_json(msg="percent must be from 1 to 100", report="")
    api = RuntimeApi(p["runtime_api"], p["timeout_ms"] / 1000.0, p["ssh"])
    try:
        report = run(Server(api, p), p)
    except Refused as e:
        module.fail_json(msg="%s: %s" % (p["name"], e), report=[], still_out=e.still_out)
    module.exit_json(changed=p["action"] not in ("wait_drained",), report=report, msg="\n".join(report))


if __name__ == "__main__":
    main()
