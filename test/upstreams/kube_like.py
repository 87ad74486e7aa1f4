"""A member "apiserver" that is not written in Node: Python's http.server.

Serves a few kube-like endpoints over HTTP/1.1 (over TLS unless --plain), in
the way http.server writes: the status line and headers in one write, the
body in others, and empty writes between chunks of a stream. Every request's
method, path and headers (as the exact bytes received) are appended to the
--record file as one JSON line, so tests can assert what the member saw.

    /version                      version JSON (Content-Length)
    /api, /apis, /api/v1          legacy discovery
    /api/v1/namespaces            a NamespaceList (Content-Length)
    /api/v1/namespaces?watch=1    three watch events, chunked, then the end
    /large?size=N                 N deterministic bytes in 64 KiB writes
    /echo (POST, PUT)             the request body back (chunked or sized)
    /upgrade-echo                 101 (Upgrade: x-echo), then echoes bytes
    /close-delimited              300,000 bytes of /large, ended by closing
    /no-content                   204
    HEAD anything                 200 with a Content-Length and no body

Prints "listening PORT" once it accepts connections. Exits on SIGTERM.
"""

import argparse
import http.client
import http.server
import json
import signal
import ssl
import sys
import threading

# A Go kube-apiserver has no limit on the number of header lines (only 1 MiB
# of header bytes); http.server's default of 100 lines would refuse a long
# Impersonate-Group list that the real apiserver reads.
http.client._MAXHEADERS = 100_000

NAMESPACES = ["default", "kube-system", "python-apps"]

# Legacy discovery, enough for `kubectl get namespaces` (it falls back to these
# when the answer is not aggregated discovery).
DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace", "verbs": ["get", "list", "watch"], "shortNames": ["ns"]}],
    },
}


def pattern(size):
    """The bytes of /large: a counter pattern the test rebuilds to compare."""
    block = bytes(i % 251 for i in range(65536))
    out = bytearray()
    while len(out) < size:
        out += block
    return bytes(out[:size])


def namespace(name):
    return {"metadata": {"name": name, "uid": "uid-" + name, "resourceVersion": "1"}, "status": {"phase": "Active"}}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As a Go server does (TCP_NODELAY); the head and the body still go out in separate writes.
    disable_nagle_algorithm = True
    server_version = "kube-like-python"

    def log_message(self, fmt, *args):
        pass

    def record(self):
        headers = [[k, v.encode("latin-1").hex()] for k, v in self.headers.items()]
        line = json.dumps({"method": self.command, "path": self.path, "headers": headers})
        with self.server.record_lock:
            with open(self.server.record_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        # The body in its own write, after the head (what made the agent frame an empty DATA).
        self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self):
        self.record()
        path, _, query = self.path.partition("?")
        if path in DISCOVERY:
            return self.send_json(200, DISCOVERY[path])
        if path == "/version":
            return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-python", "platform": "python"})
        if path == "/api/v1/namespaces" and "watch=1" in query.split("&"):
            return self.watch()
        if path == "/api/v1/namespaces":
            items = [namespace(n) for n in NAMESPACES]
            return self.send_json(200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
        if path == "/large":
            size = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("size", "0"))
            body = pattern(size)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for i in range(0, size, 65536):
                self.wfile.write(body[i:i + 65536])
                self.wfile.write(b"")
            return
        if path == "/close-delimited":
            # No Content-Length, not chunked: the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            for i in range(0, 300_000, 65536):
                self.wfile.write(pattern(300_000)[i:i + 65536])
            self.close_connection = True
            return
        if path == "/no-content":
            self.send_response(204)
            self.end_headers()
            return
        if path == "/upgrade-echo" and self.headers.get("Upgrade", "").lower() == "x-echo":
            return self.upgrade_echo()
        self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_HEAD(self):
        self.record()
        body = json.dumps({"major": "1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def watch(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for name in NAMESPACES:
            event = json.dumps({"type": "ADDED", "object": namespace(name)}).encode() + b"\n"
            self.wfile.write(b"%x\r\n" % len(event))
            self.wfile.write(b"")
            self.wfile.write(event + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        self.record()
        body = self.read_body()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(body)

    do_PUT = do_POST

    def upgrade_echo(self):
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "x-echo")
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(b"")
        conn = self.connection
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                break
            if not data:
                break
            conn.sendall(b"")
            conn.sendall(data)
        self.close_connection = True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--plain", action="store_true", help="plain HTTP (behind nginx)")
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.record_file = args.record
    server.record_lock = threading.Lock()
    if not args.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("listening %d" % server.server_address[1], flush=True)
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
