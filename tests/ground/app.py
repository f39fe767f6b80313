#!/usr/bin/python3
"""Stand-in application deployed onto the sandbox fleet's VMs.

Serves on HOST:PORT:
  GET /health   200 "ok", or 500 when the running release is a broken one
  GET /version  200 with the version of the release it was started from

The version is read once, at start, from ROOT/current/VERSION ("none" when
nothing is installed yet), like a real service that only picks up a new
release when restarted. A version starting with "broken" keeps the process
running but makes /health fail, so only a health check notices.
"""

import argparse
import http.server
import os
import time


def read_version(root):
    try:
        with open(os.path.join(root, "current", "VERSION"), encoding="utf-8") as f:
            return f.read().strip() or "none"
    except FileNotFoundError:
        return "none"


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "sandbox-app"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        version = self.server.app_version
        if self.path == "/health":
            if version.startswith("broken"):
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
    daemon_threads = True

    def __init__(self, address, log_path, version):
        super().__init__(address, Handler)
        self.app_version = version
        # Line-buffered append: several generations of the app share the log.
        self.log_file = open(log_path, "a", buffering=1, encoding="utf-8")

    def log(self, line):
        self.log_file.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), line))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/opt/sandbox-app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()

    version = read_version(args.root)
    server = Server((args.host, args.port), os.path.join(args.root, "app.log"), version)

    # Written only once the port is bound, so a pid file always names a
    # process that is serving.
    pid_file = os.path.join(args.root, "app.pid")
    with open(pid_file + ".tmp", "w", encoding="utf-8") as f:
        f.write("%d\n" % os.getpid())
    os.replace(pid_file + ".tmp", pid_file)

    server.log("app %s listening on %s:%d (pid %d)" % (version, args.host, args.port, os.getpid()))
    server.serve_forever()


if __name__ == "__main__":
    main()
