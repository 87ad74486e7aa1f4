#!/usr/bin/python3
"""A Konnectivity client written against the upstream protocol with grpcio.

Compiles the given .proto at run time (protos.py), then for each cluster
opens one ProxyService.Proxy stream, dials "<cluster>:443", runs TLS inside
the stream to the member apiserver and GETs /version. Prints one JSON line
per cluster: the cluster, the HTTP status and the parsed body. It shares no
code with kubetunnel.

  proxy_client.py --proto FILE --target HOST:PORT|unix:PATH [--ca F --cert F --key F --server-name N]
                  --member-ca CLUSTER=FILE ... --token T CLUSTER ...
"""
import argparse
import json
import queue
import random
import ssl

import grpc
from protos import compile_proto


class Conn:
    """One dialed connection over one Proxy stream: bytes in, bytes out."""

    def __init__(self, pb, stub, address, metadata):
        self.pb = pb
        self.outbox = queue.Queue()
        self.random = random.getrandbits(63)
        self.outbox.put(pb.Packet(type=pb.DIAL_REQ, dialRequest=pb.DialRequest(protocol="tcp", address=address, random=self.random)))
        self.call = stub.Proxy(iter(self.outbox.get, None), metadata=metadata)
        first = next(self.call)
        if first.type != pb.DIAL_RSP or first.dialResponse.random != self.random:
            raise RuntimeError("want DIAL_RSP for my random, got %s" % first)
        if first.dialResponse.error:
            raise RuntimeError("dial refused: " + first.dialResponse.error)
        self.id = first.dialResponse.connectID
        self.closed = False

    def send(self, data):
        self.outbox.put(self.pb.Packet(type=self.pb.DATA, data=self.pb.Data(connectID=self.id, data=data)))

    def recv(self):
        """The next bytes; b"" once the far end closed (CLOSE_RSP) or the stream ended."""
        if self.closed:
            return b""
        for p in self.call:
            if p.type == self.pb.DATA and p.data.connectID == self.id:
                return p.data.data
            if p.type == self.pb.CLOSE_RSP:
                self.closed = True
                return b""
            raise RuntimeError("unexpected packet %s" % p)
        self.closed = True
        return b""

    def close(self):
        if not self.closed:
            self.outbox.put(self.pb.Packet(type=self.pb.CLOSE_REQ, closeRequest=self.pb.CloseRequest(connectID=self.id)))
            for p in self.call:
                if p.type == self.pb.CLOSE_RSP:
                    break
        self.outbox.put(None)
        self.closed = True


def https_get(conn, member_ca, path, token):
    """HTTP/1.1 GET over TLS driven through memory BIOs on top of the Proxy stream."""
    ctx = ssl.create_default_context(cafile=member_ca)
    ctx.check_hostname = True
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="kubernetes.default.svc")

    def flush():
        data = outgoing.read()
        if data:
            conn.send(data)

    def feed():
        data = conn.recv()
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            feed()
    flush()
    tls.write(("GET %s HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer %s\r\n"
               "Accept: application/json\r\nConnection: close\r\n\r\n" % (path, token)).encode())
    flush()
    body = b""
    while True:
        try:
            chunk = tls.read(65536)
            if not chunk:
                break
            body += chunk
        except ssl.SSLWantReadError:
            if incoming.eof:
                break
            feed()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            break
    head, _, payload = body.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        payload = out
    return status, payload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--member-ca", action="append", default=[])
    ap.add_argument("--token", default="")
    ap.add_argument("--hub-token", default="")
    ap.add_argument("clusters", nargs="+")
    a = ap.parse_args()
    pb, pb_grpc = compile_proto(a.proto)
    if a.target.startswith("unix:"):
        channel = grpc.insecure_channel(a.target)
    else:
        read = lambda f: open(f, "rb").read() if f else None
        creds = grpc.ssl_channel_credentials(read(a.ca), read(a.key), read(a.cert))
        channel = grpc.secure_channel(a.target, creds, options=[("grpc.ssl_target_name_override", a.server_name)])
    stub = pb_grpc.ProxyServiceStub(channel)
    member_cas = dict(m.split("=", 1) for m in a.member_ca)
    metadata = [("authorization", "Bearer " + a.hub_token)] if a.hub_token else None
    for cluster in a.clusters:
        conn = Conn(pb, stub, cluster + ":443", metadata)
        try:
            status, payload = https_get(conn, member_cas[cluster], "/version", a.token)
        finally:
            conn.close()
        print(json.dumps({"cluster": cluster, "connectID": conn.id, "status": status, "body": json.loads(payload)}), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
