#!/usr/bin/env python3
"""Calls a diarrhoea server from Python with an ordinary JSON-RPC 2.0 client:
python-lsp-jsonrpc (the JSON-RPC layer of python-lsp-server), Content-Length
framing over a Unix socket.

    pip install python-lsp-jsonrpc==1.1.2
    cargo run --release --example flood_server -- ./test.sock    # detects the protocol
    python3 examples/clients/python_client.py ./test.sock

It calls echo(1, "two"), sends ping("hello", t) and waits for the server's
pong notification, and shows a -32601 error; it exits 0 when all three behave.
"""
import socket
import sys
import threading
import time

from pylsp_jsonrpc.endpoint import Endpoint
from pylsp_jsonrpc.exceptions import JsonRpcException
from pylsp_jsonrpc.streams import JsonRpcStreamReader, JsonRpcStreamWriter


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "./test.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = JsonRpcStreamReader(sock.makefile("rb"))
    writer = JsonRpcStreamWriter(sock.makefile("wb"))

    pong = threading.Event()

    def on_pong(params):
        print("pong", params)
        pong.set()

    endpoint = Endpoint({"pong": on_pong}, writer.write)
    threading.Thread(target=reader.listen, args=(endpoint.consume,), daemon=True).start()

    echoed = endpoint.request("echo", [1, "two"]).result(timeout=5)
    print("echo ->", echoed)
    assert echoed == [1, "two"], echoed

    endpoint.notify("ping", ["hello", int(time.time() * 1000)])
    assert pong.wait(5), "no pong"

    try:
        endpoint.request("nope", []).result(timeout=5)
        raise SystemExit("nope answered")
    except JsonRpcException as e:
        print("nope ->", e.code, e.message)
        assert e.code == -32601

    print("ok")
    endpoint.shutdown()
    sock.close()


if __name__ == "__main__":
    main()
