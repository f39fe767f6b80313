#!/usr/bin/python3
"""Stand-in application deployed onto the sandbox fleet's VMs.

Serves on HOST:PORT:
  GET /health   200 "ok", or 500 when the running release is a broken one
                or this start was broken on purpose (see below)
  GET /version  200 with the version of the release it was started from

The version is read once, at start, from ROOT/current/VERSION ("none" when
nothing is installed yet), like a real service that only picks up a new
release when restarted. A version starting with "broken" keeps the process
running but makes /health fail, so only a health check notices.

Fault knob: if ROOT/break-next-start exists when the app starts, the app
removes it and stays unhealthy (/health 500) for its whole life, whatever
its release. Only that one start is broken: the next restart is healthy
again unless the file is created anew. An app already running when the file
appears is not affected.
"""

import argparse
import http.server
import os
import signal
import sys
import threading
import time

BREAK_KNOB = "break-next-start"


def take_break_knob(root):
    """True if this start is to be broken; consumes the knob."""
    try:
        os.remove(os.path.join(root, BREAK_KNOB))
    except FileNotFoundError:
        return False
    return True


def read_version(root):
    try:
        with open(os.path.join(root, "current", "VERSION"), encoding="utf-8") as f:
            return f.read().strip() or "none"
    except FileNotFoundError:
        return "none"


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "sandbox-app"
    protocol_version = "HTTP/1.1"
    # With Nagle's algorithm, the body (a second small segment) waits for the
    # client's delayed ACK of the headers: about 40 ms for every request on a
    # keep-alive connection. A buffered writer also sends headers and body in
    # one segment; the base class flushes it after each request.
    disable_nagle_algorithm = True
    wbufsize = -1

    def do_GET(self):
        version = self.server.app_version
        if self.path == "/health":
            if self.server.broken_start:
                self.reply(500, "unhealthy: this start was broken by %s" % BREAK_KNOB)
            elif version.startswith("broken"):
                self.reply(500, "unhealthy: release %s is broken" % version)
            else:
                self.reply(200, "ok")
        elif self.path == "/version":
            self.reply(200, version)
        else:
            self.reply(404, "not found")

    def reply(self, status, body):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        self.server.log("%s %s" % (self.address_string(), fmt % args))


class Server(http.server.ThreadingHTTPServer):
    # Threads serving idle keep-alive connections must not hold up an exit.
    daemon_threads = True
    # The default backlog of 5 drops SYNs when a load balancer's health checks
    # and a burst of new connections arrive together, and a dropped SYN costs
    # the client a one-second retransmission.
    request_queue_size = 128

    def __init__(self, address, log_path, version):
        super().__init__(address, Handler)
        self.app_version = version
        self.broken_start = False
        # Line-buffered append: several generations of the app share the log.
        self.log_file = open(log_path, "a", buffering=1, encoding="utf-8")
        self.log_lock = threading.Lock()

    def log(self, line):
        with self.log_lock:
            self.log_file.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), line))

    def handle_error(self, request, client_address):
        # A client hanging up mid-request is routine behind a load balancer;
        # one line instead of a traceback.
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError):
            self.log("%s connection lost: %s" % (client_address[0], err))
        else:
            super().handle_error(request, client_address)


class Terminated(Exception):
    pass


def on_term(signum, frame):
    # Unwinds serve_forever in the main thread; shutdown() would deadlock
    # there, as it waits for the loop it is called from.
    raise Terminated()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/opt/sandbox-app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()

    version = read_version(args.root)
    server = Server((args.host, args.port), os.path.join(args.root, "app.log"), version)
    # Taken only once the port is bound: a start that fails to bind must not
    # use up the knob meant for the start that follows.
    server.broken_start = take_break_knob(args.root)

    # Written only once the port is bound, so a pid file always names a
    # process that is serving.
    pid_file = os.path.join(args.root, "app.pid")
    with open(pid_file + ".tmp", "w", encoding="utf-8") as f:
        f.write("%d\n" % os.getpid())
    os.replace(pid_file + ".tmp", pid_file)

    # Handled rather than left to the default action, so that the stop shows
    # in the log, and so that a TERM ignored by whoever started the app (an
    # ignored signal is inherited) still stops it.
    signal.signal(signal.SIGTERM, on_term)
    try:
        server.log(
            "app %s listening on %s:%d (pid %d)%s"
            % (version, args.host, args.port, os.getpid(),
               ", start broken by " + BREAK_KNOB if server.broken_start else "")
        )
        server.serve_forever()
    except Terminated:
        server.log("app %s stopping on TERM (pid %d)" % (version, os.getpid()))
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
