#!/usr/bin/env python3
"""A JSON-RPC 2.0 server that is not diarrhoea: written from the JSON-RPC 2.0
specification (and the LSP base protocol for --lsp), standard library only.

Usage:  python3 tests/interop/jsonrpc_peer.py SOCKET_PATH [--lsp]

It listens on SOCKET_PATH (prints "listening" once it does), serves one
connection, and exits when the client closes it: 0 and "ok" when everything the
client sent was valid JSON-RPC 2.0, 1 and the reason otherwise.
  add(a, b)        -> a + b
  ask(n)           -> calls the client's double(n) (string id), answers its result
  notify_me(text)  -> (a notification) sends the client the notification note(text)
  anything else    -> error -32601
"""
import json
import socket
import sys

TIMEOUT_S = 10.0


class Failed(Exception):
    pass


class Stream:
    def __init__(self, sock, lsp):
        self.sock, self.lsp, self.buf = sock, lsp, b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def recv(self):
        """The next message, or None at the end of the stream."""
        if not self.lsp:
            while b"\n" not in self.buf:
                if not self._fill():
                    return None
            line, self.buf = self.buf.split(b"\n", 1)
            return json.loads(line)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = None
        for line in header.decode("ascii").split("\r\n"):
            name, value = line.split(":", 1)
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise Failed("a header without Content-Length: %r" % header)
        while len(self.buf) < length:
            if not self._fill():
                raise Failed("the stream ended inside a message")
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def send(self, message):
        body = json.dumps(message, separators=(",", ":")).encode()
        if self.lsp:
            self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        else:
            self.sock.sendall(body + b"\n")


def check(message):
    if message.get("jsonrpc") != "2.0":
        raise Failed("not JSON-RPC 2.0: %r" % message)
    if "id" in message and not isinstance(message["id"], (int, str)):
        raise Failed("an id that is neither a number nor a string: %r" % message)


def serve(stream):
    calls_back = 0
    while True:
        message = stream.recv()
        if message is None:
            return
        check(message)
        method, params = message.get("method"), message.get("params", [])
        if not isinstance(params, list):
            raise Failed("by-position params expected: %r" % message)
        reply = None
        if method == "add":
            reply = {"result": params[0] + params[1]}
        elif method == "ask":
            calls_back += 1
            call_id = "py-%d" % calls_back
            stream.send({"jsonrpc": "2.0", "method": "double", "params": [params[0]], "id": call_id})
            answer = stream.recv()
            check(answer)
            if answer.get("id") != call_id or "result" not in answer:
                raise Failed("expected the answer to %s, got %r" % (call_id, answer))
            reply = {"result": answer["result"]}
        elif method == "notify_me":
            stream.send({"jsonrpc": "2.0", "method": "note", "params": [params[0]]})
        else:
            reply = {"error": {"code": -32601, "message": "Method not found"}}
        if "id" in message:
            reply = reply or {"result": None}
            reply.update({"jsonrpc": "2.0", "id": message["id"]})
            stream.send(reply)
        elif reply is not None and method != "notify_me":
            raise Failed("a call sent as a notification: %r" % message)


def main():
    path, lsp = sys.argv[1], "--lsp" in sys.argv[2:]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(TIMEOUT_S)
    print("listening", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT_S)
    try:
        serve(Stream(conn, lsp))
    except (Failed, ValueError, KeyError, IndexError, OSError) as e:
        print("failed: %s" % e, flush=True)
        sys.exit(1)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
