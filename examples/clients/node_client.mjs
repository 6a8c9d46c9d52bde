// Calls a diarrhoea server from Node.js with an ordinary JSON-RPC 2.0 client: vscode-jsonrpc
// (the JSON-RPC layer of every VS Code language client), Content-Length framing over a Unix
// socket.
//
//     npm install vscode-jsonrpc@8.2.1
//     cargo run --release --example flood_server -- ./test.sock    # detects the protocol
//     node examples/clients/node_client.mjs ./test.sock
//
// It calls echo(1, "two"), sends ping("hello", t) and waits for the server's pong
// notification, and shows a -32601 error; it exits 0 when all three behave.
import net from "node:net";
import assert from "node:assert/strict";
import { createMessageConnection, SocketMessageReader, SocketMessageWriter } from "vscode-jsonrpc/node.js";

const path = process.argv[2] ?? "./test.sock";
const socket = net.connect(path);
await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
const connection = createMessageConnection(new SocketMessageReader(socket), new SocketMessageWriter(socket));
const pong = new Promise((resolve) => connection.onNotification("pong", (...params) => resolve(params)));
connection.listen();

// Several arguments travel as a params array: ["echo"] gets [1,"two"].
const echoed = await connection.sendRequest("echo", 1, "two");
console.log("echo ->", echoed);
assert.deepEqual(echoed, [1, "two"]);

await connection.sendNotification("ping", "hello", Date.now());
const timeout = setTimeout(() => { console.error("no pong"); process.exit(1); }, 5000);
console.log("pong", await pong);
clearTimeout(timeout);

try {
  await connection.sendRequest("nope");
  assert.fail("nope answered");
} catch (e) {
  console.log("nope ->", e.code, e.message);
  assert.equal(e.code, -32601);
}

console.log("ok");
connection.dispose();
socket.end();
