#!/usr/bin/python3
"""A Konnectivity proxy-agent written against the upstream protocol with grpcio.

It behaves as ANP's proxy-agent does on the wire: one AgentService.Connect
stream with `agentID` and `agentIdentifiers` metadata; it dials the address
of each DIAL_REQ and answers DIAL_RSP with a connectID of its own; DATA both
ways; CLOSE_RSP when the far end closes or on CLOSE_REQ; DRAIN when told to
drain. It shares no code with kubetunnel.

Stdout: one JSON line per event ("connected" with the server's serverID and
serverCount headers, "dial", "refused" with the gRPC status, "closed").
Stdin: "drain" sends DRAIN; end of input closes the agent.

  agent.py --proto FILE --target HOST:PORT --ca F --cert F --key F --agent-id ID
           [--identifiers host=...] [--resolve HOST:PORT=IP:PORT ...]
"""
import argparse
import json
import queue
import socket
import sys
import threading

import grpc
from protos import compile_proto


out_lock = threading.Lock()


def event(**kv):
    with out_lock:
        sys.stdout.write(json.dumps(kv) + "\n")
        sys.stdout.flush()


class Agent:
    def __init__(self, pb, resolve):
        self.pb = pb
        self.resolve = resolve
        self.outbox = queue.Queue()
        self.conns = {}
        self.lock = threading.Lock()
        self.next_id = 0

    def send(self, pkt):
        self.outbox.put(pkt)

    def packets(self):
        return iter(self.outbox.get, None)

    def dial(self, req):
        pb = self.pb
        event(event="dial", address=req.address)
        host, _, port = self.resolve.get(req.address, req.address).rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.settimeout(None)
        except OSError as e:
            self.send(pb.Packet(type=pb.DIAL_RSP, dialResponse=pb.DialResponse(random=req.random, error=str(e))))
            return
        with self.lock:
            self.next_id += 1
            cid = self.next_id
            self.conns[cid] = sock
        self.send(pb.Packet(type=pb.DIAL_RSP, dialResponse=pb.DialResponse(random=req.random, connectID=cid)))
        threading.Thread(target=self.pump, args=(cid, sock), daemon=True).start()

    def pump(self, cid, sock):
        pb = self.pb
        while True:
            try:
                data = sock.recv(32 * 1024)
            except OSError:
                data = b""
            if not data:
                break
            self.send(pb.Packet(type=pb.DATA, data=pb.Data(connectID=cid, data=data)))
        self.close(cid, answer=True)

    def close(self, cid, answer):
        with self.lock:
            sock = self.conns.pop(cid, None)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if answer:
            self.send(self.pb.Packet(type=self.pb.CLOSE_RSP, closeResponse=self.pb.CloseResponse(connectID=cid)))
            event(event="closed", connectID=cid)

    def serve(self, responses):
        pb = self.pb
        for p in responses:
            if p.type == pb.DIAL_REQ:
                threading.Thread(target=self.dial, args=(p.dialRequest,), daemon=True).start()
            elif p.type == pb.DATA:
                with self.lock:
                    sock = self.conns.get(p.data.connectID)
                if sock is None:
                    self.send(pb.Packet(type=pb.CLOSE_RSP, closeResponse=pb.CloseResponse(connectID=p.data.connectID, error="unrecognized connectID")))
                    continue
                try:
                    sock.sendall(p.data.data)
                except OSError:
                    self.close(p.data.connectID, answer=True)
            elif p.type == pb.CLOSE_REQ:
                cid = p.closeRequest.connectID
                with self.lock:
                    known = cid in self.conns
                if known:
                    self.close(cid, answer=True)
                else:
                    self.send(pb.Packet(type=pb.CLOSE_RSP, closeResponse=pb.CloseResponse(connectID=cid, error="Unknown connectID")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("--identifiers", default="")
    ap.add_argument("--resolve", action="append", default=[])
    a = ap.parse_args()
    pb, pb_grpc = compile_proto(a.proto)
    read = lambda f: open(f, "rb").read()
    creds = grpc.ssl_channel_credentials(read(a.ca), read(a.key), read(a.cert))
    channel = grpc.secure_channel(a.target, creds, options=[("grpc.ssl_target_name_override", a.server_name)])
    agent = Agent(pb, dict(r.split("=", 1) for r in a.resolve))
    md = [("agentid", a.agent_id)]
    if a.identifiers:
        md.append(("agentidentifiers", a.identifiers))
    call = pb_grpc.AgentServiceStub(channel).Connect(agent.packets(), metadata=md)

    def commands():
        for line in sys.stdin:
            if line.strip() == "drain":
                agent.send(pb.Packet(type=pb.DRAIN, drain=pb.Drain()))
                event(event="drain-sent")
        agent.outbox.put(None)
        call.cancel()

    threading.Thread(target=commands, daemon=True).start()
    try:
        headers = dict(call.initial_metadata())
        if "serverid" in headers:
            event(event="connected", serverID=headers.get("serverid"), serverCount=headers.get("servercount"))
        agent.serve(call)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            event(event="refused", code=e.code().name, details=e.details())
    channel.close()


if __name__ == "__main__":
    main()
