#!/usr/bin/env python3
"""Independent protocol-v1 peer used as an interoperability check.

This script is written from the protocol text in docs/PROTOCOL.md,
not from the Rust code, and imports nothing from the crate: it is a second,
separate implementation of the wire format, so that a shared misreading of
the spec cannot hide in both ends.

Usage:  python3 tests/interop/peer.py SOCKET_PATH
        python3 tests/interop/peer.py --tcp HOST:PORT

It connects to a server whose router binds:
  ping(x, time)  -> notification ["pong",[x,time]]
  echo(...args)  -> replies with its args array
  add(a, b)      -> replies a+b (ints)
  ask(n)         -> server requests ["double",[n],ID] from us, replies with it
It prints "ok <name>" per check and exits 0 only if all checks pass.
"""
import json
import socket
import sys
import time

TIMEOUT_S = 10.0
INVALID_FRAME, METHOD_NOT_FOUND, INVALID_PARAMS = -32600, -32601, -32602


class CheckFailed(Exception):
    pass


def encode(frame):
    """Compact JSON, one line, UTF-8."""
    return (json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def same(a, b):
    """JSON equality that does not confuse true with 1 or 1 with 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def is_id(v):
    return type(v) is int and 0 <= v < 2**53


class Peer:
    """A multiplexing protocol-v1 endpoint: while waiting for anything, it keeps
    reading, answers the server's requests, and files replies and
    notifications by id / arrival order."""

    def __init__(self, family, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(address)
        self.buf = b""
        self.replies = {}          # id -> reply frame
        self.notifications = []    # (frame, raw line bytes), in arrival order
        self.served = []           # [method, args] of each server request we answered

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, frame):
        self.send_raw(encode(frame))

    def _read_line(self):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise CheckFailed(f"no frame within {TIMEOUT_S:.0f} s")
            if not chunk:
                raise CheckFailed("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def _handle(self, raw):
        text = raw.decode("utf-8").rstrip("\r\n")
        if not text:
            return
        try:
            frame = json.loads(text)
        except ValueError:
            raise CheckFailed(f"server sent invalid JSON: {text!r}")
        if not isinstance(frame, list) or not frame:
            raise CheckFailed(f"server sent a non-frame: {text!r}")
        head = frame[0]
        if isinstance(head, str) and len(frame) == 2:
            self.notifications.append((frame, raw))
        elif isinstance(head, str) and len(frame) in (3, 4) and is_id(frame[2]):
            self._serve(head, frame[1], frame[2])
        elif is_id(head) and len(frame) in (2, 3):
            self.replies[head] = frame
        elif head is None and len(frame) == 3:
            raise CheckFailed(f"server sent a connection error: {text}")
        else:
            raise CheckFailed(f"server sent an unrecognised frame: {text}")

    def _serve(self, method, args, rid):
        self.served.append([method, args])
        if method == "double" and isinstance(args, list) and len(args) == 1 and type(args[0]) is int:
            self.send([rid, 2 * args[0]])
        elif method == "double":
            self.send([rid, None, {"code": INVALID_PARAMS, "message": "double(n: int)"}])
        else:
            self.send([rid, None, {"code": METHOD_NOT_FOUND, "message": f"no method {method}"}])

    def pump(self):
        """Read and dispatch exactly one line."""
        self._handle(self._read_line())

    def wait_reply(self, rid):
        while rid not in self.replies:
            self.pump()
        return self.replies.pop(rid)

    def wait_notification(self):
        while not self.notifications:
            self.pump()
        return self.notifications.pop(0)


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def show(frame):
    return json.dumps(frame, separators=(",", ":"))


def expect_frame(got, want):
    expect(same(got, want), f"expected {show(want)}, got {show(got)}")


def expect_error(got, rid, code):
    ok = (len(got) == 3 and same(got[0], rid) and got[1] is None and isinstance(got[2], dict)
          and same(got[2].get("code"), code) and isinstance(got[2].get("message"), str))
    expect(ok, f"expected error reply [{rid},null,{{\"code\":{code},\"message\":...}}], got {show(got)}")


def check_notification(p):
    p.send(["ping", ["py", 123]])
    frame, raw = p.wait_notification()
    expect_frame(frame, ["pong", ["py", 123]])
    expect(raw == b'["pong",["py",123]]\n', f"pong not compactly encoded: {raw!r}")


def check_echo(p):
    args = [1, "two", [3], {"four": 4}, None]
    p.send(["echo", args, 1])
    expect_frame(p.wait_reply(1), [1, args])


def check_meta(p):
    p.send(["add", [2, 3], 2, {"timeout_ms": 5000}])
    expect_frame(p.wait_reply(2), [2, 5])


def check_invalid_params(p):
    p.send(["add", ["x", 3], 3])
    expect_error(p.wait_reply(3), 3, INVALID_PARAMS)


def check_method_not_found(p):
    p.send(["nope", [], 4])
    expect_error(p.wait_reply(4), 4, METHOD_NOT_FOUND)


def check_garbage_line(p):
    p.send_raw(b"this is not json\n")
    p.send(["echo", [], 5])
    expect_frame(p.wait_reply(5), [5, []])
    expect(not p.replies and not p.notifications, "the garbage line produced a frame")


def check_invalid_frame(p):
    p.send_raw(b'["echo",5,6]\n')
    expect_error(p.wait_reply(6), 6, INVALID_FRAME)


def check_nested_request(p):
    p.served.clear()
    p.send(["ask", [21], 7])
    expect_frame(p.wait_reply(7), [7, 42])
    expect_frame(p.served, [["double", [21]]])


def check_pipelining(p):
    ids = range(100, 1100)
    p.send_raw(b"".join(encode(["add", [i, i], i]) for i in ids))
    for i in ids:
        expect_frame(p.wait_reply(i), [i, 2 * i])


def check_crlf(p):
    p.send_raw(b'\n["echo",["crlf"],8]\r\n')
    expect_frame(p.wait_reply(8), [8, ["crlf"]])
    expect(not p.replies and not p.notifications, f"stray frames: {p.replies} {p.notifications}")


CHECKS = [
    ("notification-ping-pong", check_notification),
    ("request-echo", check_echo),
    ("request-with-meta", check_meta),
    ("invalid-params", check_invalid_params),
    ("method-not-found", check_method_not_found),
    ("garbage-line-ignored", check_garbage_line),
    ("invalid-frame", check_invalid_frame),
    ("nested-request-ask-double", check_nested_request),
    ("pipelining-1000", check_pipelining),
    ("crlf-and-empty-line", check_crlf),
]


def target(args):
    """(family, address) from the command line: a socket path, or --tcp HOST:PORT."""
    if len(args) == 1:
        return socket.AF_UNIX, args[0]
    if len(args) == 2 and args[0] == "--tcp":
        host, sep, port = args[1].rpartition(":")
        if sep and host and port.isdigit():
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
    sys.exit("usage: python3 peer.py SOCKET_PATH | python3 peer.py --tcp HOST:PORT")


def main():
    family, address = target(sys.argv[1:])
    started = time.monotonic()
    name = "connect"
    try:
        peer = Peer(family, address)
        for name, check in CHECKS:
            check(peer)
            print(f"ok {name}", flush=True)
    except (CheckFailed, OSError) as e:
        print(f"FAIL {name}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(CHECKS)} checks passed in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    main()
