//! Typed services (`#[diarrhoea::service]`): the issue's program (tests/support/calc.rs) over a
//! Unix socket, a socket pair and a pool of two stdio workers; a Node-shaped raw peer calling a
//! typed server; names, namespaces, error codes, context parameters, clients over tower stacks,
//! `Router::merge`, and `$/methods` over a Router, a typed service and a custom service.
//!
//! The pool's workers are tests/pool_worker.rs: run with `cargo test --test service --test
//! pool_worker` (or plain `cargo test`).

mod support;

#[allow(unused_imports, unreachable_pub)]
#[rustfmt::skip]
#[path = "support/calc.rs"]
mod calc;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::pool::Pool;
use diarrhoea::typed::{MethodInfo, MethodKind};
use diarrhoea::{code, Connection, Deadline, Request, Response, Router, RpcError, UnixListener};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use calc::{my_calc, CalcClient, DivError};
use support::{eventually, temp_dir, within, RawPeer};

/// A bound on waits for something that happens at once on an idle machine.
const BOUND: Duration = Duration::from_secs(5);

/// The client half of the issue's program, over any connection to a `MyCalc` server; `pid` is
/// what `whoAmI` should answer.
async fn the_program(conn: &Connection, pid: Option<i32>) -> Result<(), diarrhoea::Error> {
    let calc = CalcClient::new(conn.clone());
    assert_eq!(calc.add(2, 3).await?, 5);
    assert_eq!(calc.div(1, 0).await?, Err(DivError::ByZero));
    assert_eq!(calc.div(7, 2).await?, Ok(3));
    calc.log("hi".into()).await?;
    let who: Option<i32> = calc.who_am_i().await?;
    assert_eq!(who, pid);
    let sum: i64 = conn.call("add", (2, 3)).await?;
    assert_eq!(sum, 5);
    Ok(())
}

async fn logged(lines: &std::sync::Mutex<Vec<String>>, line: &str) -> bool {
    eventually(BOUND, || async {
        lines.lock().unwrap().iter().any(|l| l == line)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_runs_over_a_unix_socket() {
    let dir = temp_dir();
    let path = dir.path().join("calc.sock");
    let (router, lines) = my_calc();
    let server = diarrhoea::serve(UnixListener::bind(&path).unwrap(), router);
    let server = tokio::spawn(server.into_future());
    let conn = within("connect", Connection::connect(&path)).await.unwrap();
    within(
        "the program",
        the_program(&conn, Some(std::process::id() as i32)),
    )
    .await
    .unwrap();
    assert!(logged(&lines, "hi").await, "the notification reached `log`");
    server.abort();
}

#[tokio::test]
async fn the_program_runs_over_a_socket_pair() {
    let (router, lines) = my_calc();
    let (server, client) = Connection::pair().unwrap();
    server.set_service(router);
    within(
        "the program",
        the_program(&client, Some(std::process::id() as i32)),
    )
    .await
    .unwrap();
    assert!(logged(&lines, "hi").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_runs_through_a_pool_of_two_stdio_workers() {
    let exe = support::harnessless_exe("pool_worker", "service");
    let pool = Pool::builder()
        .spawn(2, move |_| {
            let mut command = Command::new(&exe);
            command.env("DIARRHOEA_POOL_WORKER", "serve");
            command
        })
        .build()
        .unwrap();
    within("two live workers", pool.until_live(2)).await;
    let calc = CalcClient::new(pool.clone());
    within("the calls", async {
        assert_eq!(calc.add(2, 3).await.unwrap(), 5);
        assert_eq!(calc.div(1, 0).await.unwrap(), Err(DivError::ByZero));
        calc.log("hi".into()).await.unwrap();
        // A worker's peer is its parent over pipes, which carry no credentials.
        assert_eq!(calc.who_am_i().await.unwrap(), None);
        let sum: i64 = pool.call("add", (2, 3)).await.unwrap();
        assert_eq!(sum, 5);
        // The pool's caller and poster inside layers of their own.
        let limited = CalcClient::from_services(
            ServiceBuilder::new()
                .concurrency_limit(4)
                .service(pool.caller()),
            pool.poster(),
        );
        assert_eq!(limited.add(4, 5).await.unwrap(), 9);
        limited.log("limited".into()).await.unwrap();
    })
    .await;
    within("shutdown", pool.shutdown(BOUND)).await;
}

#[tokio::test]
async fn a_node_shaped_peer_calls_a_typed_server_by_name() {
    let (router, lines) = my_calc();
    let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    let server = diarrhoea::serve_connection(ours, router);
    let (read, write) = theirs.into_split();
    let mut node = RawPeer::new(read, write);
    node.send(r#"["log",["x"]]"#).await;
    node.send(r#"["add",[2,3],1]"#).await;
    assert_eq!(node.recv().await, json!([1, 5]));
    assert!(logged(&lines, "x").await);
    node.send(r#"["div",[1,0],2]"#).await;
    assert_eq!(
        node.recv().await,
        json!([2, null, {"code": -32000, "message": "division by zero", "data": "ByZero"}])
    );
    node.send(r#"["whoAmI",[],3]"#).await;
    assert_eq!(node.recv().await, json!([3, std::process::id()]));
    // The wire's own errors are the same as for a hand-written route.
    node.send(r#"["add",["two",3],4]"#).await;
    assert_eq!(node.recv().await[2]["code"], json!(code::INVALID_PARAMS));
    node.send(r#"["who_am_i",[],5]"#).await;
    assert_eq!(node.recv().await[2]["code"], json!(code::METHOD_NOT_FOUND));
    server.end();
}

/// Names, a namespace, an error code of its own, context parameters, an idempotent method.
#[diarrhoea::service(namespace = "files")]
trait Files {
    #[rpc(idempotent)]
    async fn size(&self, name: String) -> Result<u64, Missing>;
    #[rpc(name = "drop", code = 4100)]
    async fn remove(&self, name: String) -> Result<(), Missing>;
    /// Calls the peer back on the connection the call came on.
    async fn echo_back(
        &self,
        #[context] conn: Connection,
        text: String,
        #[context] deadline: Option<Deadline>,
    ) -> (String, bool);
    async fn wait(&self, #[context] cancel: CancellationToken, ms: u64) -> bool;
    #[rpc(idempotent)]
    async fn nothing(&self);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Missing {
    name: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no file named {}", self.name)
    }
}

/// Counts the `wait` calls whose token was cancelled when their future was dropped.
struct SeenOnDrop {
    cancel: CancellationToken,
    cancelled: Arc<AtomicUsize>,
}

impl Drop for SeenOnDrop {
    fn drop(&mut self) {
        if self.cancel.is_cancelled() {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Counts the `wait` calls whose token was cancelled.
#[derive(Clone, Default)]
struct Disk {
    cancelled: Arc<AtomicUsize>,
}

impl Files for Disk {
    async fn size(&self, name: String) -> Result<u64, Missing> {
        match name.as_str() {
            "a" => Ok(1),
            _ => Err(Missing { name }),
        }
    }

    async fn remove(&self, name: String) -> Result<(), Missing> {
        Err(Missing { name })
    }

    async fn echo_back(
        &self,
        conn: Connection,
        text: String,
        deadline: Option<Deadline>,
    ) -> (String, bool) {
        let echoed: String = conn.call("echo", (text,)).await.unwrap_or_default();
        (echoed, deadline.is_some())
    }

    async fn wait(&self, cancel: CancellationToken, ms: u64) -> bool {
        let _seen = SeenOnDrop {
            cancel,
            cancelled: self.cancelled.clone(),
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        true
    }

    async fn nothing(&self) {}
}

/// A server of `router` and a client connection whose own service echoes.
fn served(router: Router) -> (Connection, Connection) {
    let (server, client) = Connection::pair().unwrap();
    server.set_service(router);
    client.set_service(Router::new().route("echo", |s: String| async move { s }));
    (server, client)
}

#[tokio::test]
async fn names_codes_and_context_parameters_reach_the_wire_as_declared() {
    assert_eq!(
        FilesClient::METHODS,
        [
            MethodInfo::new("files.size", MethodKind::Request, &["name"]),
            MethodInfo::new("files.drop", MethodKind::Request, &["name"]),
            MethodInfo::new("files.echo_back", MethodKind::Request, &["text"]),
            MethodInfo::new("files.wait", MethodKind::Request, &["ms"]),
            MethodInfo::new("files.nothing", MethodKind::Request, &[]),
        ]
    );
    assert_eq!(FilesClient::IDEMPOTENT, ["files.size", "files.nothing"]);

    let (_server, client) = served(Disk::default().into_router());
    let files = FilesClient::new(client.clone());
    within("the calls", async {
        assert_eq!(files.size("a".into()).await.unwrap(), Ok(1));
        let missing = Missing { name: "b".into() };
        assert_eq!(files.size("b".into()).await.unwrap(), Err(missing));
        // `#[rpc(code = 4100)]`: the error reply carries it, and the client still decodes.
        assert_eq!(
            files.remove("c".into()).await.unwrap(),
            Err(Missing { name: "c".into() })
        );
        let raw = client.call::<()>("files.drop", ("c",)).await.unwrap_err();
        let rpc = raw.remote().expect("an error reply");
        assert_eq!((rpc.code, rpc.message.as_str()), (4100, "no file named c"));
        assert_eq!(rpc.data, Some(json!({"name": "c"})));
        // Context parameters are not sent; the rest keep their order.
        assert_eq!(
            files.echo_back("hey".into()).await.unwrap(),
            ("hey".to_owned(), false)
        );
        assert!(files.wait(1).await.unwrap());
        files.nothing().await.unwrap();
    })
    .await;
    // A deadline reaches `Option<Deadline>`.
    let with_deadline = client
        .call_with_timeout::<(String, bool)>("files.echo_back", ("x",), BOUND)
        .await
        .unwrap();
    assert_eq!(with_deadline, ("x".to_owned(), true));
}

#[tokio::test]
async fn a_cancelled_typed_call_cancels_its_token_at_the_server() {
    let disk = Disk::default();
    let (_server, client) = served(disk.clone().into_router());
    let files = FilesClient::new(client.clone());
    // Dropping the call's future sends `$/cancel`: the server cancels the method's token and
    // drops its future.
    let first = tokio::time::timeout(Duration::from_millis(50), files.wait(60_000)).await;
    assert!(first.is_err(), "the call is still waiting");
    assert!(
        eventually(BOUND, || async {
            disk.cancelled.load(Ordering::SeqCst) == 1
        })
        .await,
        "the method was stopped with its token cancelled"
    );
    assert_eq!(client.pending_calls(), 0, "the dropped call left no entry");
    assert!(within("the next call", files.wait(1)).await.unwrap());
}

#[tokio::test]
async fn an_error_of_another_code_or_shape_stays_a_crate_error() {
    // A peer that is not typed answers `files.size` with errors of its own.
    let router = Router::new().route("files.size", |name: String| async move {
        match name.as_str() {
            "other code" => Err(RpcError::new(4000, "nope").with_data(json!({"name": "x"}))),
            _ => Err(RpcError::new(code::SERVICE_ERROR, "not a Missing").with_data(json!(5))),
        }
        .map(|()| 0u64)
    });
    let (_server, client) = served(router);
    let files = FilesClient::new(client);
    for (name, code) in [("other code", 4000), ("bad data", code::SERVICE_ERROR)] {
        let error = within("a call", files.size(name.into())).await.unwrap_err();
        assert_eq!(error.remote().map(|rpc| rpc.code), Some(code), "{name}");
    }
}

#[tokio::test]
async fn a_client_over_tower_stacks_maps_layer_errors() {
    let (_server, client) = served(Disk::default().into_router());
    let caller = ServiceBuilder::new()
        .timeout(Duration::from_millis(20))
        .service(client.caller());
    let files = FilesClient::from_services(caller, client.poster());
    assert_eq!(
        within("a call", files.size("a".into())).await.unwrap(),
        Ok(1)
    );
    let late = within("a late call", files.wait(10_000)).await.unwrap_err();
    assert!(late.is_timeout(), "{late:?}");

    let calc = CalcClient::from_services(
        ServiceBuilder::new()
            .concurrency_limit(1)
            .service(client.caller()),
        client.poster(),
    );
    let (router, lines) = my_calc();
    let (_server, client) = served(router);
    let calc_here = CalcClient::from_services(client.caller(), client.poster());
    calc_here.log("over a poster".into()).await.unwrap();
    assert!(logged(&lines, "over a poster").await);
    // The first connection serves `Files`, not `Calc`: a wire error, not a method error.
    let error = within("a call", calc.add(1, 2)).await.unwrap_err();
    assert_eq!(error.code(), Some(code::METHOD_NOT_FOUND));
}

#[tokio::test]
async fn merged_routers_serve_both_services_and_refuse_a_method_routed_twice() {
    let (calc, _) = my_calc();
    let both = calc.clone().merge(Disk::default().into_router()).unwrap();
    assert!(both.has_route("add") && both.has_route("files.size"));
    let clash = both.clone().merge(calc).unwrap_err();
    assert!(clash.is_config());
    assert!(clash.to_string().contains("`add`"), "{clash}");
    let fallbacks = Router::new()
        .fallback(|| async {})
        .merge(Router::new().fallback(|| async {}))
        .unwrap_err();
    assert!(fallbacks.is_config());

    let (_server, client) = served(both);
    assert_eq!(
        within("add", CalcClient::new(client.clone()).add(1, 2))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        within("size", FilesClient::new(client).size("a".into()))
            .await
            .unwrap(),
        Ok(1)
    );
}

async fn methods_of(router: impl FnOnce(&Connection)) -> Result<Value, diarrhoea::Error> {
    let (server, client) = Connection::pair().unwrap();
    router(&server);
    within("$/methods", client.call::<Value>("$/methods", ())).await
}

#[tokio::test]
async fn every_connection_answers_methods_with_what_its_service_routes() {
    let plain = Router::new()
        .route("b", || async {})
        .route("a", || async {})
        .fallback(|| async { "fallback" });
    let listed = methods_of(|s| s.set_service(plain)).await.unwrap();
    assert_eq!(
        listed,
        json!(["a", "b"]),
        "names only, sorted, not the fallback"
    );

    let (calc, _) = my_calc();
    let typed = calc.merge(Router::new().route("zzz", || async {})).unwrap();
    let listed = methods_of(|s| s.set_service(typed)).await.unwrap();
    assert_eq!(
        listed,
        json!([
            {"name": "add", "kind": "request", "params": ["a", "b"]},
            {"name": "div", "kind": "request", "params": ["a", "b"]},
            {"name": "log", "kind": "notification", "params": ["line"]},
            {"name": "whoAmI", "kind": "request", "params": []},
            "zzz",
        ])
    );

    // A route rebound by hand is no longer described.
    let (calc, _) = my_calc();
    let rebound = calc.route("add", |a: i64| async move { a });
    let listed = methods_of(|s| s.set_service(rebound)).await.unwrap();
    assert_eq!(listed[0], json!("add"));

    // A service of its own sees `$/methods` as any method it does not know.
    let custom = tower::service_fn(|req: Request| async move {
        match req.method() {
            "hello" => Ok(Response::new("hi").unwrap()),
            other => Err(RpcError::method_not_found(other)),
        }
    });
    let error = methods_of(|s| s.set_service(custom)).await.unwrap_err();
    assert_eq!(error.code(), Some(code::METHOD_NOT_FOUND));

    // Only as a call: the other `$/` names stay the connection's.
    let (server, client) = Connection::pair().unwrap();
    server.set_service(Router::new().route("a", || async {}));
    let error = within("$/other", client.call::<Value>("$/other", ()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(code::METHOD_NOT_FOUND));
}

/// The Node program of the `typed` module's docs, run by a real `node` against `Calc` on a
/// Unix socket. `.ci/run` installs Node.js; elsewhere, without `node` on the PATH, the test
/// says so and passes, unless `CI` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_process_calls_a_typed_server() {
    let Ok(node) = which("node") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs node on the PATH"
        );
        eprintln!("skipped: no `node` on the PATH");
        return;
    };
    let dir = temp_dir();
    let path = dir.path().join("calc.sock");
    let (router, lines) = my_calc();
    let server = diarrhoea::serve(UnixListener::bind(&path).unwrap(), router);
    let server = tokio::spawn(server.into_future());
    let script = r#"
        const sock = require('net').createConnection(process.argv[1])
        let seen = 0
        require('readline').createInterface({ input: sock })
          .on('line', (line) => { console.log(line); if (++seen === 2) sock.end() })
        sock.write(JSON.stringify(['log', ['from node']]) + '\n')
        sock.write(JSON.stringify(['add', [2, 3], 1]) + '\n')
        sock.write(JSON.stringify(['div', [1, 0], 2]) + '\n')
    "#;
    let output = Command::new(node)
        .arg("-e")
        .arg(script)
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let output = within("node", output).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let replies: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        replies,
        [
            json!([1, 5]),
            json!([2, null, {"code": -32000, "message": "division by zero", "data": "ByZero"}]),
        ]
    );
    assert!(logged(&lines, "from node").await);
    server.abort();
}

/// `program` on the PATH.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}
