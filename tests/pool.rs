//! The pool (`diarrhoea::pool`) with real worker processes and real sockets: balancing by
//! calls in flight, a killed worker's calls (`is_closed()`, retries of idempotent methods
//! only, within the budget), the back-off of a crash loop, no child process left behind
//! (drop, shutdown, and the parent's SIGKILL), reconnecting to a restarted server,
//! notifications to one or every worker, a worker calling back into the parent, and a frozen
//! worker replaced after a missed probe.
//!
//! The workers are tests/pool_worker.rs (a harness-less target, like tests/stdio_worker.rs):
//! run these tests with `cargo test --test pool --test pool_worker` (or plain `cargo test`).
//!
//! Nothing here waits a fixed time for something it can observe: each wait polls the pool's
//! metrics, `/proc` or a task, within a generous bound. The one fixed window is the crash
//! loop's, which counts restarts over it.

mod support;

use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::pool::{Pool, PoolBuilder, PoolCaller};
use diarrhoea::{Error, Request, Response, Router, UnixListener};
use serde::Serialize;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::retry::budget::TpsBudget;
use tower::{Service, ServiceExt};

use support::{eventually, process_gone, temp_dir, within, KillOnDrop};

/// The worker program's mode switch (see tests/pool_worker.rs).
const WORKER_MODE: &str = "DIARRHOEA_POOL_WORKER";
/// Makes a worker exit this many milliseconds after it started.
const CRASH_AFTER_MS: &str = "DIARRHOEA_POOL_WORKER_CRASH_AFTER_MS";
/// Makes a worker create this file 100 ms after its input ends, then exit.
const FAREWELL: &str = "DIARRHOEA_POOL_WORKER_FAREWELL";
/// Makes a worker block this many milliseconds before it serves.
const FREEZE_AT_START_MS: &str = "DIARRHOEA_POOL_WORKER_FREEZE_AT_START_MS";

/// How long a condition the test is waiting for may take before the test fails: generous,
/// for a loaded machine; a passing run takes a fraction of it.
const BOUND: Duration = Duration::from_secs(5);

/// The worker program, `tests/pool_worker.rs`, found next to this test binary as the stdio
/// worker is (see `support::harnessless_exe`).
fn pool_worker_exe() -> PathBuf {
    support::harnessless_exe("pool_worker", "pool")
}

/// A pool of `n` worker processes. The pool starts them with `kill_on_drop`, so a test that
/// fails (and drops its runtime) leaves none behind.
fn workers(n: usize) -> PoolBuilder {
    let exe = pool_worker_exe();
    Pool::builder().spawn(n, move |_| {
        let mut command = Command::new(&exe);
        command.env(WORKER_MODE, "serve");
        command
    })
}

/// The pid of every slot's current worker.
fn pids(pool: &Pool) -> Vec<u32> {
    (pool.metrics().workers.iter())
        .map(|w| w.pid.expect("a worker the pool started has a pid"))
        .collect()
}

/// Whether process `pid` is gone and reaped: no `/proc` entry at all, not even a zombie.
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends SIGKILL to `pid`.
fn kill9(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL");
}

/// Polls `check` until it holds, failing the test with `what` after [`BOUND`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    if !eventually(BOUND, || std::future::ready(check())).await {
        panic!("still not true after {BOUND:?}: {what}");
    }
}

/// Sends one call through `caller` (whose balancer picks the worker when `call` is made: the
/// call counts against that worker's load from then on) and returns its reply future.
async fn send(
    caller: &mut PoolCaller,
    method: &str,
    args: impl Serialize,
) -> diarrhoea::pool::PoolResponseFuture {
    let request = Request::new(method, args).expect("arguments serialize");
    within("a ready worker", caller.ready())
        .await
        .expect("the pool takes calls")
        .call(request)
}

/// A reply's value.
fn value<T: serde::de::DeserializeOwned>(reply: Result<Response, Error>) -> T {
    reply
        .expect("the call succeeds")
        .deserialize()
        .expect("the reply deserializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_prefers_the_less_loaded_worker() {
    let pool = workers(2).build().unwrap();
    within("two live workers", pool.until_live(2)).await;
    let pids = pids(&pool);

    // One worker held busy by a call through the pool (its load is the calls the pool sent
    // it and has no reply to yet), made through a caller of its own.
    let mut holder = pool.caller();
    let held = tokio::spawn(send(&mut holder, "hold", ()).await);
    let metrics = pool.metrics();
    let busy = (metrics.workers.iter())
        .position(|w| w.in_flight == 1)
        .unwrap_or_else(|| panic!("the held call is in flight on a worker: {metrics:?}"));
    let idle = 1 - busy;

    // Quick calls through another caller, one at a time: with two workers the balancer
    // compares both, and the one without a call in flight wins every time. The load is
    // shared by every handle, so this caller sees the other's call.
    let mut caller = pool.caller();
    for i in 0..20 {
        let pid: u32 = value(within("a quick call", send(&mut caller, "pid", ()).await).await);
        assert_eq!(
            pid, pids[idle],
            "quick call {i} went to the busy worker {} instead of the idle {}",
            pids[busy], pids[idle]
        );
    }
    let metrics = pool.metrics();
    assert_eq!(metrics.workers[idle].completed, 20, "{metrics:?}");
    assert_eq!(metrics.workers[busy].completed, 0, "{metrics:?}");
    assert_eq!(metrics.workers[busy].in_flight, 1, "{metrics:?}");

    // Released, the held call is answered by the busy worker.
    assert_eq!(
        within("release", pool.broadcast("release", ()))
            .await
            .unwrap(),
        2
    );
    let pid: u32 = value(within("the held call", held).await.unwrap());
    assert_eq!(pid, pids[busy]);
    let metrics = pool.metrics();
    assert_eq!(metrics.workers[busy].completed, 1, "{metrics:?}");
    assert_eq!(metrics.workers[busy].in_flight, 0, "{metrics:?}");
}

/// What became of the calls on two workers when one of them was killed.
struct AfterKill {
    /// The methods of the calls that failed (each with `is_closed()`), sorted.
    failed: Vec<&'static str>,
    /// The methods of the calls the survivor answered (after a `release`), sorted.
    answered: Vec<&'static str>,
    /// The pool's counters once every call ended.
    metrics: diarrhoea::pool::PoolMetrics,
}

/// Puts `per_worker` calls (each a `hold` or `hold_once`) on each of `pool`'s two workers,
/// kills the first one with SIGKILL, and waits until `failing` calls have ended and
/// `retried` calls were sent again to the survivor; then releases the survivor's calls.
async fn kill_a_busy_worker(
    pool: &Pool,
    per_worker: &[&'static str],
    failing: usize,
    retried: u64,
) -> AfterKill {
    within("two live workers", pool.until_live(2)).await;
    let pids = pids(pool);
    let (victim, survivor) = (pids[0], pids[1]);

    // Calls in pairs: with both workers equally loaded, the first call of a pair goes to
    // one worker and the second to the other (which then has fewer in flight), so each
    // worker holds one call of each pair.
    let mut caller = pool.caller();
    let mut calls: Vec<(&str, JoinHandle<Result<Response, Error>>)> = Vec::new();
    for &method in per_worker {
        for _ in 0..2 {
            calls.push((method, tokio::spawn(send(&mut caller, method, ()).await)));
        }
    }
    let metrics = pool.metrics();
    assert!(
        (metrics.workers.iter()).all(|w| w.in_flight == per_worker.len()),
        "the calls are spread evenly: {metrics:?}"
    );

    kill9(victim);

    // The victim's calls fail, and those retried wait on the survivor with its own.
    let ended =
        |calls: &[(&str, JoinHandle<_>)]| calls.iter().filter(|c| c.1.is_finished()).count();
    let settled = eventually(BOUND, || {
        let metrics = pool.metrics();
        std::future::ready(
            ended(&calls) >= failing
                && metrics.retried >= retried
                && metrics.workers[1].in_flight == per_worker.len() + retried as usize,
        )
    })
    .await;
    assert!(
        settled,
        "after {BOUND:?}, {} calls ended ({failing} expected), with {:?}",
        ended(&calls),
        pool.metrics()
    );
    let mut failed = Vec::new();
    let mut waiting = Vec::new();
    for (method, call) in calls {
        if call.is_finished() {
            let error = call.await.unwrap().expect_err("no worker answered it");
            assert!(error.is_closed(), "{method}: {error:?}");
            failed.push(method);
        } else {
            waiting.push((method, call));
        }
    }

    within("release", pool.broadcast("release", ()))
        .await
        .unwrap();
    let mut answered = Vec::new();
    for (method, call) in waiting {
        let pid: u32 = value(within("a call on the survivor", call).await.unwrap());
        assert_eq!(pid, survivor, "{method} was answered by the survivor");
        answered.push(method);
    }
    failed.sort_unstable();
    answered.sort_unstable();
    AfterKill {
        failed,
        answered,
        metrics: pool.metrics(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_calls_fail_closed_and_only_idempotent_ones_are_retried() {
    // The default budget: ample for three retries.
    let pool = workers(2).idempotent(["hold"]).build().unwrap();
    let after = kill_a_busy_worker(&pool, &["hold_once", "hold", "hold", "hold"], 1, 3).await;
    assert_eq!(
        after.failed,
        ["hold_once"],
        "only the non-idempotent call failed"
    );
    assert_eq!(
        after.answered,
        ["hold", "hold", "hold", "hold", "hold", "hold", "hold_once"],
        "the survivor answered its own four and the victim's three `hold`s"
    );
    let metrics = after.metrics;
    assert_eq!(metrics.retried, 3, "{metrics:?}");
    assert_eq!(
        metrics.workers[0].failed, 4,
        "no retry went to the dead worker: {metrics:?}"
    );
    assert_eq!(metrics.workers[1].completed, 7, "{metrics:?}");
}

// One thread: `TpsBudget` checks its balance and withdraws in two steps, so two retries
// decided at the same instant on two threads may both get the last token. Here the retry
// decisions are made one after the other, and the budget is exact.
#[tokio::test(flavor = "current_thread")]
async fn retries_stay_within_the_budget() {
    // A budget of one retry, renewed after a second: ample for the calls one kill cuts off to
    // fail together. Successful calls earn nothing (a retry percentage of 0).
    let pool = workers(2)
        .idempotent(["hold"])
        .retry_budget(TpsBudget::new(Duration::from_secs(1), 1, 0.0))
        .build()
        .unwrap();
    let after = kill_a_busy_worker(&pool, &["hold", "hold", "hold"], 2, 1).await;
    assert_eq!(
        after.failed,
        ["hold", "hold"],
        "beyond the budget, calls fail"
    );
    assert_eq!(after.answered, ["hold", "hold", "hold", "hold"]);
    let metrics = after.metrics;
    assert_eq!(metrics.retried, 1, "{metrics:?}");
    assert_eq!(
        metrics.workers[0].failed, 3,
        "no retry went to the dead worker: {metrics:?}"
    );
    assert_eq!(metrics.workers[1].completed, 4, "{metrics:?}");
}

/// The most restarts a worker slot can make in `elapsed` with the default back-off (100 ms,
/// doubling, jitter only adds): restart `n` comes at least 100 ms * (2^n - 1) after the
/// first start (more: each worker also lives 100 ms, which this leaves out as slack).
fn most_restarts_within(elapsed: Duration) -> u64 {
    let ms = elapsed.as_millis();
    (1..64)
        .take_while(|n| 100 * ((1u128 << n) - 1) <= ms)
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off() {
    // A worker that answers its first probe, then exits 100 ms after it started: without a
    // back-off it would be restarted ten times a second or more.
    let exe = pool_worker_exe();
    let pool = Pool::builder()
        .spawn(1, move |_| {
            let mut command = Command::new(&exe);
            command.env(WORKER_MODE, "serve").env(CRASH_AFTER_MS, "100");
            command
        })
        .build()
        .unwrap();
    within("the worker's first start", pool.until_live(1)).await;
    let first = Instant::now();
    until("the crashed worker to be restarted", || {
        pool.metrics().workers[0].restarts >= 1
    })
    .await;
    // The window: two seconds from the first start seen. The first start came a little
    // before (its probe, and this task's wake-up): allow it a generous 500 ms.
    tokio::time::sleep_until(first + Duration::from_secs(2)).await;
    let restarts = pool.metrics().workers[0].restarts;
    let elapsed = first.elapsed();
    let most = most_restarts_within(elapsed + Duration::from_millis(500));
    assert!(
        (1..=most).contains(&restarts),
        "{restarts} restarts in {elapsed:?}; the back-off allows 1 to {most}"
    );
    assert!(most <= 5, "the window ran long: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_silent_past_its_start_timeout_is_started_again() {
    // The worker blocks for 30 s before it serves: with a 200 ms start timeout the pool gives
    // up on it and starts another (with the default 10 s, not within the test's bound).
    let exe = pool_worker_exe();
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let pool = Pool::builder()
        .spawn(1, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut command = Command::new(&exe);
            command
                .env(WORKER_MODE, "serve")
                .env(FREEZE_AT_START_MS, "30000");
            command
        })
        .start_timeout(Duration::from_millis(200))
        .restart_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap();
    until(
        "a second start after the first missed its start timeout",
        || starts.load(Ordering::SeqCst) >= 2,
    )
    .await;
    let worker = &pool.metrics().workers[0];
    assert!(!worker.live, "a worker that never answered went live");
    assert_eq!(
        worker.restarts, 0,
        "a start that failed counted as a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_leaves_no_child_process() {
    let pool = workers(2).build().unwrap();
    within("two live workers", pool.until_live(2)).await;
    let pids = pids(&pool);
    assert!(pids.iter().all(|&pid| !reaped(pid)), "the workers run");
    let also = pool.clone();
    drop(pool);
    assert!(
        pids.iter().all(|&pid| !reaped(pid)),
        "a clone keeps the workers"
    );
    drop(also);
    until("every worker to exit and be reaped", || {
        pids.iter().all(|&pid| reaped(pid))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_calls_in_flight_then_leaves_no_child_process() {
    let pool = workers(2).build().unwrap();
    within("two live workers", pool.until_live(2)).await;
    let pids = pids(&pool);
    // Kept to release the held call once the shutdown has begun (the pool no longer lists
    // its workers then).
    let conns = pool.connections();

    let held = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<u32>("hold", ()).await }
    });
    until("the call to be in flight", || {
        (pool.metrics().workers.iter())
            .map(|w| w.in_flight)
            .sum::<usize>()
            == 1
    })
    .await;

    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown(Duration::from_secs(10)).await }
    });
    until("the workers to leave the balance", || pool.live() == 0).await;
    let refused = within("a call after shutdown", pool.call::<u32>("pid", ()))
        .await
        .expect_err("no calls once shutting down");
    assert!(refused.is_closed(), "{refused:?}");
    assert!(!held.is_finished(), "the held call is still in flight");
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the call in flight"
    );

    let released = Instant::now();
    for conn in &conns {
        // Once the held call has its reply, the shutdown goes on and may end the other worker
        // before this loop reaches it: a release that finds its connection closed is fine.
        // The held call finishing, below, is what shows the release reached its worker.
        let posted = within("release", conn.post_message("release", ())).await;
        assert!(
            posted.as_ref().map_or_else(Error::is_closed, |()| true),
            "{posted:?}"
        );
    }
    let pid = within("the call in flight", held)
        .await
        .unwrap()
        .expect("a call in flight finishes during a shutdown");
    assert!(pids.contains(&pid));
    within("shutdown", shutdown).await.unwrap();
    let took = released.elapsed();
    // Shutdown returns once its workers are ended and reaped: no waiting here.
    for pid in &pids {
        assert!(reaped(*pid), "worker {pid} is still there after shutdown");
    }
    // The workers exit when their input ends, before their second of grace is up.
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} after the last call"
    );
}

/// A worker whose calls are done gets time to exit on its own at shutdown (up to a second,
/// within the deadline): one that takes 100 ms after its input ends to finish up does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_a_worker_time_to_exit_on_its_own() {
    let dir = temp_dir();
    let farewell = dir.path().join("farewell");
    let pool = Pool::builder()
        .spawn(1, {
            let (exe, farewell) = (pool_worker_exe(), farewell.clone());
            move |_| {
                let mut command = Command::new(&exe);
                command.env(WORKER_MODE, "serve").env(FAREWELL, &farewell);
                command
            }
        })
        .build()
        .unwrap();
    within("a live worker", pool.until_live(1)).await;
    within("shutdown", pool.shutdown(Duration::from_secs(5))).await;
    assert!(
        farewell.exists(),
        "the worker was killed before it could finish"
    );
}

/// A call that never finishes does not hold a shutdown past its timeout: its worker gets no
/// grace beyond the deadline (it used to get a second more), and the call fails with
/// `is_closed()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_by_its_timeout_whatever_the_calls_do() {
    let pool = workers(1).build().unwrap();
    within("a live worker", pool.until_live(1)).await;
    let pid = pids(&pool)[0];
    let mut caller = pool.caller();
    let held = tokio::spawn(send(&mut caller, "hold", ()).await);
    until("the call to be in flight", || {
        pool.metrics().workers[0].in_flight == 1
    })
    .await;

    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    within("shutdown", pool.shutdown(timeout)).await;
    let took = started.elapsed();
    // Before, the worker (which never ends while its call runs) got its whole second of
    // grace after the timeout (1.86 s here); now the deadline is the limit, and what is left
    // is killing and reaping it, far less than that second even on a loaded machine.
    assert!(
        took < timeout + Duration::from_secs(1),
        "shutdown({timeout:?}) took {took:?}"
    );
    assert!(reaped(pid), "the worker is ended and reaped");
    let error = within("the held call", held)
        .await
        .unwrap()
        .expect_err("its worker was ended");
    assert!(error.is_closed(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_parent_killed_with_sigkill_leaves_no_worker_alive_after_1s() {
    parent_killed_leaves_no_worker(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_pair_workers_outlive_their_parents_sigkill_by_under_1s() {
    parent_killed_leaves_no_worker(true).await;
}

/// A worker over a socket pair takes descriptors: it writes into the pipe it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_pair_worker_gets_descriptors() {
    let pool = Pool::builder()
        .spawn_socket(1, |_| {
            let mut command = Command::new(pool_worker_exe());
            command.arg("--serve");
            command
        })
        .build()
        .unwrap();
    within("a live worker", pool.until_live(1)).await;
    let (mut reader, writer) = std::io::pipe().unwrap();
    let pid: u32 = within(
        "write_to",
        pool.call("write_to", (diarrhoea::Fd::from(writer), "from the parent")),
    )
    .await
    .unwrap();
    assert_eq!(Some(pid), pool.metrics().workers[0].pid);
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text).map(|_| text)
    });
    assert_eq!(
        within("the pipe", text).await.unwrap().unwrap(),
        "from the parent"
    );
    // The pipe-based workers cannot: refused before anything is written.
    let pipes = workers(1).build().unwrap();
    within("a live worker", pipes.until_live(1)).await;
    let (_reader, writer) = std::io::pipe().unwrap();
    let error = within(
        "a refusal",
        pipes.call::<u32>("write_to", (diarrhoea::Fd::from(writer), "x")),
    )
    .await
    .unwrap_err();
    assert!(!error.is_remote(), "{error}");
    within("shutdown", pool.shutdown(Duration::from_secs(1))).await;
    within("shutdown", pipes.shutdown(Duration::from_secs(1))).await;
}

/// The pool's parent (over pipes, or over socket pairs) is killed with SIGKILL: its workers
/// are gone within 1 s.
async fn parent_killed_leaves_no_worker(socket: bool) {
    let mut command = Command::new(pool_worker_exe());
    if socket {
        command.env("DIARRHOEA_POOL_WORKER_SOCKET", "1");
    }
    let mut parent = command
        .env(WORKER_MODE, "parent")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the parent");
    let mut stdout = tokio::io::BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    within(
        "the workers' pids",
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .unwrap();
    let workers: Vec<u32> = (line.split_whitespace())
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    // Killed whatever happens below.
    let _guards: Vec<KillOnDrop> = workers.iter().map(|&pid| KillOnDrop(pid)).collect();
    assert_eq!(workers.len(), 2, "the parent printed {line:?}");
    assert!(
        workers.iter().all(|&pid| !process_gone(pid)),
        "the workers run"
    );

    parent.start_kill().expect("SIGKILL the parent");
    let killed = Instant::now();
    within("the parent to die", parent.wait()).await.unwrap();
    // Gone, or a zombie nobody has reaped yet (their parent is dead): either way not alive.
    let gone = eventually(BOUND, || async {
        workers.iter().all(|&pid| process_gone(pid))
    })
    .await;
    let took = killed.elapsed();
    assert!(
        gone,
        "workers {workers:?} still run {took:?} after their parent's SIGKILL"
    );
    assert!(
        took < Duration::from_secs(1),
        "the workers lived {took:?} on"
    );
}

/// A server on `path` whose `who` answers `name`; stops (gracefully) when the token is
/// cancelled, or when the test's runtime ends.
fn start_server(path: &Path, name: &'static str) -> (CancellationToken, JoinHandle<()>) {
    let listener = UnixListener::bind(path).expect("bind the test server");
    let router = Router::new().route("who", move || async move { name });
    let stop = CancellationToken::new();
    let serving = diarrhoea::serve(listener, router)
        .shutdown_timeout(Duration::from_secs(1))
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    let task = tokio::spawn(async move {
        serving.await.expect("the server ran");
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_endpoints_reconnects_to_a_server_restarted_on_the_same_path() {
    let dir = temp_dir();
    let path = dir.path().join("pool.sock");
    let (stop, serving) = start_server(&path, "first");
    let pool = Pool::builder()
        .connect(&path)
        .restart_backoff(Duration::from_millis(20), Duration::from_millis(400))
        .build()
        .unwrap();
    within("the endpoint to join", pool.until_live(1)).await;
    assert_eq!(
        within("a call", pool.call::<String>("who", ()))
            .await
            .unwrap(),
        "first"
    );
    assert_eq!(
        pool.metrics().workers[0].pid,
        None,
        "not a process the pool started"
    );

    // The server goes away: its connection closes, and the pool notices.
    stop.cancel();
    within("the server to stop", serving).await.unwrap();
    until("the endpoint to leave the balance", || {
        pool.metrics().live == 0
    })
    .await;
    assert!(!pool.metrics().workers[0].live);

    // A call made meanwhile waits for a worker rather than failing.
    let mut waiting = Box::pin(pool.call::<String>("who", ()));
    assert!(
        support::poll_once(&mut waiting).await.is_none(),
        "a call waits while no worker is live"
    );

    // Back on the same path: the pool reconnects (after its back-off; the reconnects that
    // failed while nothing listened do not count as restarts).
    let (_stop, _serving) = start_server(&path, "second");
    within("the endpoint to rejoin", pool.until_live(1)).await;
    assert_eq!(within("the waiting call", waiting).await.unwrap(), "second");
    assert_eq!(
        within("a call", pool.call::<String>("who", ()))
            .await
            .unwrap(),
        "second"
    );
    let metrics = pool.metrics();
    assert_eq!(metrics.workers[0].restarts, 1, "{metrics:?}");
    assert_eq!(metrics.workers[0].completed, 3, "{metrics:?}");
}

/// How many `note`s each live worker has received, asked over its own connection (after the
/// notes sent on it, so its count includes them).
async fn notes(pool: &Pool) -> Vec<u64> {
    let mut counts = Vec::new();
    for conn in pool.connections() {
        counts.push(
            within("count", conn.call::<u64>("count", ()))
                .await
                .unwrap(),
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_go_to_one_worker_and_broadcasts_to_every_live_worker() {
    let pool = workers(2).build().unwrap();
    within("two live workers", pool.until_live(2)).await;

    for i in 0..10u64 {
        within("a note", pool.post_message("note", (i,)))
            .await
            .unwrap();
    }
    let counts = notes(&pool).await;
    assert_eq!(counts.len(), 2);
    assert_eq!(
        counts.iter().sum::<u64>(),
        10,
        "each note reached one worker: {counts:?}"
    );

    assert_eq!(
        within("broadcast", pool.broadcast("note", (99,)))
            .await
            .unwrap(),
        2
    );
    let after = notes(&pool).await;
    assert_eq!(
        after,
        counts.iter().map(|c| c + 1).collect::<Vec<_>>(),
        "the broadcast reached each worker once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_calls_back_into_the_parent() {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let parent = Router::new().route("double", move |n: i64| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { n * 2 }
    });
    let pool = workers(2).service(parent).build().unwrap();
    within("two live workers", pool.until_live(2)).await;
    for n in [1, 21, -4] {
        let doubled: i64 = within("ask_parent", pool.call("ask_parent", (n,)))
            .await
            .unwrap();
        assert_eq!(doubled, n * 2);
    }
    let metrics = pool.metrics();
    assert_eq!(metrics.workers.iter().map(|w| w.completed).sum::<u64>(), 3);
    // Each worker's connection carries its calls back, whichever way it was reached.
    for conn in pool.connections() {
        let doubled: i64 = within("ask_parent", conn.call("ask_parent", (5,)))
            .await
            .unwrap();
        assert_eq!(doubled, 10);
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        5,
        "the parent's router answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_is_replaced() {
    let pool = workers(1)
        .health_check(Duration::from_millis(100), Duration::from_millis(300))
        .build()
        .unwrap();
    within("the worker", pool.until_live(1)).await;
    let frozen_pid = pids(&pool)[0];

    // `freeze` blocks the worker's only thread: it answers nothing, probes included, but
    // its process and its pipes stay up (it would answer in 30 s).
    let frozen = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<u32>("freeze", (30_000,)).await }
    });
    let froze = Instant::now();
    let error = within("the frozen call to fail", frozen)
        .await
        .unwrap()
        .expect_err("the frozen worker never answers");
    let took = froze.elapsed();
    assert!(error.is_closed(), "{error:?}");
    // A probe every 100 ms, answered within 300 ms: noticed in well under the default
    // probe's 10 s.
    assert!(took < Duration::from_secs(4), "noticed after {took:?}");

    until("a new worker to replace it", || {
        let worker = &pool.metrics().workers[0];
        worker.live && worker.restarts == 1
    })
    .await;
    until("the frozen worker to be killed and reaped", || {
        reaped(frozen_pid)
    })
    .await;
    let pid: u32 = within("a call", pool.call("pid", ())).await.unwrap();
    assert_ne!(pid, frozen_pid);
    assert_eq!(pids(&pool), [pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_tcp_endpoints_calls_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("who", || async { "tcp" });
    let serving = tokio::spawn(diarrhoea::serve(listener, router).into_future());
    let pool = Pool::builder().connect_tcp(addr).build().unwrap();
    within("the endpoint to join", pool.until_live(1)).await;
    let who: String = within("a call", pool.call("who", ())).await.unwrap();
    assert_eq!(who, "tcp");
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_config_applies_to_its_worker_connections() {
    let pool = workers(1)
        .config(diarrhoea::Config::new().max_frame_size(1024))
        .build()
        .unwrap();
    within("the worker", pool.until_live(1)).await;
    // Over the pool's frame limit: refused before it is sent (a worker with the default
    // limit would have answered -32602, `sleep` takes a number).
    let error = within(
        "a call too large to send",
        pool.call::<u32>("sleep", ("x".repeat(4096),)),
    )
    .await
    .expect_err("over max_frame_size");
    assert_eq!(
        error.code(),
        Some(diarrhoea::code::FRAME_TOO_LARGE),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_health_checks_a_busy_worker_is_left_alone() {
    let pool = workers(1)
        .health_check(Duration::from_millis(100), Duration::from_millis(300))
        .no_health_check()
        .build()
        .unwrap();
    within("the worker", pool.until_live(1)).await;
    let pid = pids(&pool)[0];
    // Blocks the worker for 1.5 s: the probe set first would have replaced it within 0.5 s.
    let frozen: u32 = within("the frozen call", pool.call("freeze", (1500,)))
        .await
        .expect("a worker nobody probes is not replaced");
    assert_eq!(frozen, pid);
    assert_eq!(pool.metrics().workers[0].restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_no_longer_counts_against_its_worker() {
    let pool = workers(1).build().unwrap();
    within("the worker", pool.until_live(1)).await;
    let mut caller = pool.caller();
    let reply = send(&mut caller, "hold", ()).await;
    let in_flight = || pool.metrics().workers[0].in_flight;
    until("the call to count", || in_flight() == 1).await;
    drop(reply);
    until("the dropped call to stop counting", || in_flight() == 0).await;
}

/// A small deterministic generator, so a churn run's schedule is the same every time.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// How long one call may take under churn before it counts as stuck: far more than a call
/// that waits for a restarted worker needs (restarts back off 10 to 100 ms here).
const CALL_BOUND: Duration = Duration::from_secs(5);

/// What became of the calls of a churn run.
#[derive(Debug, Default)]
struct Churned {
    /// Idempotent calls (`nap`) answered, and those that failed, with their errors.
    idempotent_ok: u64,
    idempotent_failed: Vec<String>,
    /// Other calls (`sleep`) answered, failed with `is_closed()`, and failed otherwise.
    other_ok: u64,
    other_closed: u64,
    other_failed: Vec<String>,
    /// Calls that neither resolved nor failed within [`CALL_BOUND`].
    stuck: u64,
}

/// Keeps 64 tasks calling through `pool` for `run` (half `nap`, which the pool retries, half
/// `sleep`, which it does not), while `kill` is called every 50 to 200 ms; every call gets
/// [`CALL_BOUND`] to resolve.
///
/// Each call is polled as a busy task polls it: with all but one unit of the task's tokio
/// scheduling budget (127 of 128) spent before every poll, as when many calls share a task
/// (a `FuturesUnordered`, a `select!`). A wait inside the pool that counts on budget being
/// left (tokio's channels give up a poll without registering for a wake-up once it is spent)
/// then shows as a stuck call.
async fn churn(pool: &Pool, seed: u64, run: Duration, mut kill: impl FnMut(&mut Lcg)) -> Churned {
    let stop = CancellationToken::new();
    let tasks: Vec<JoinHandle<Churned>> = (0..64u64)
        .map(|task| {
            let mut caller = pool.caller();
            let stop = stop.clone();
            let method = if task % 2 == 0 { "nap" } else { "sleep" };
            let mut rng = Lcg(seed ^ task);
            tokio::spawn(async move {
                let mut seen = Churned::default();
                while !stop.is_cancelled() {
                    let request = Request::new(method, (rng.below(5),)).expect("serializes");
                    let call = busy(async { caller.ready().await?.call(request).await });
                    let Ok(reply) = tokio::time::timeout(CALL_BOUND, call).await else {
                        seen.stuck += 1;
                        break;
                    };
                    match (method, reply) {
                        ("nap", Ok(_)) => seen.idempotent_ok += 1,
                        ("nap", Err(e)) => seen.idempotent_failed.push(format!("{e:?}")),
                        (_, Ok(_)) => seen.other_ok += 1,
                        (_, Err(e)) if e.is_closed() => seen.other_closed += 1,
                        (_, Err(e)) => seen.other_failed.push(format!("{e:?}")),
                    }
                }
                seen
            })
        })
        .collect();
    let mut rng = Lcg(seed);
    let until = Instant::now() + run;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(151))).await;
        kill(&mut rng);
    }
    stop.cancel();
    let mut all = Churned::default();
    for task in tasks {
        let seen = within("a churn task to end", task).await.expect("no panic");
        all.idempotent_ok += seen.idempotent_ok;
        all.idempotent_failed.extend(seen.idempotent_failed);
        all.other_ok += seen.other_ok;
        all.other_closed += seen.other_closed;
        all.other_failed.extend(seen.other_failed);
        all.stuck += seen.stuck;
    }
    all
}

/// Polls `fut` after spending all but one unit of the task's scheduling budget, every time.
async fn busy<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        for _ in 0..127 {
            // Once the budget is spent this asks for another poll, which comes with a new
            // budget: the call is polled again either way.
            let _ = std::pin::pin!(tokio::task::consume_budget()).poll(cx);
        }
        fut.as_mut().poll(cx)
    })
    .await
}

/// The checks every churn run must pass: every call resolved; with an ample budget, every
/// idempotent call was answered; the others were answered or failed with `is_closed()`.
fn check_churn(round: u64, churned: &Churned, metrics: &diarrhoea::pool::PoolMetrics) {
    assert_eq!(
        churned.stuck, 0,
        "round {round}: calls stuck: {churned:?}, {metrics:?}"
    );
    assert!(
        churned.idempotent_failed.is_empty() && churned.other_failed.is_empty(),
        "round {round}: {churned:?}"
    );
    assert!(
        churned.idempotent_ok > 0 && churned.other_ok > 0,
        "round {round}: calls went through: {churned:?}"
    );
}

/// A pool for a churn run: `nap` retried within a budget no run here can spend (so every
/// idempotent call is retried until answered), restarts from `restart` up to ten times it.
fn for_churn(pool: PoolBuilder, restart: Duration) -> Pool {
    pool.idempotent(["nap"])
        .retry_budget(TpsBudget::new(Duration::from_secs(1), 100_000, 1000.0))
        .restart_backoff(restart, restart * 10)
        .build()
        .unwrap()
}

/// The pool survives its workers dying again and again: SIGKILL to a random live worker
/// every 50 to 200 ms, while 64 tasks call. Every call resolves (none waits on a worker that
/// no longer exists); idempotent calls are all answered; the others are answered or fail
/// with `is_closed()`. Several rounds on fresh pools, each with its own seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_resolves_while_workers_are_killed_again_and_again() {
    for round in 0..5 {
        // Restarts slower than the kills: moments with no worker live, when a balancer has
        // only the roster to wake it (with 10-100 ms the old bug showed in 2 runs of 9).
        let pool = for_churn(workers(3), Duration::from_millis(30));
        within("three live workers", pool.until_live(3)).await;
        let mut kills = 0;
        let churned = churn(&pool, round, Duration::from_secs(2), |rng| {
            let live: Vec<u32> = (pool.metrics().workers.iter())
                .filter(|w| w.live)
                .filter_map(|w| w.pid)
                .collect();
            if !live.is_empty() {
                let pid = live[rng.below(live.len() as u64) as usize];
                // The worker may have died meanwhile: that is the point.
                let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
                if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                    kills += 1;
                }
            }
        })
        .await;
        let metrics = pool.metrics();
        check_churn(round, &churned, &metrics);
        // Kills every 50 to 200 ms, but only of a live worker: fewer while restarts lag.
        assert!(kills >= 4, "round {round}: {kills} kills");
        within("shutdown", pool.shutdown(Duration::from_secs(1))).await;
    }
}

/// Names the socket a `listen` worker serves on (see tests/pool_worker.rs).
const LISTEN_PATH: &str = "DIARRHOEA_POOL_WORKER_PATH";

/// A server process serving the worker's methods on a Unix socket: SIGKILLed and reaped when
/// dropped, and ended by the end of its stdin if this test process dies first.
struct Server(std::process::Child);

impl Server {
    fn start(path: &Path) -> Server {
        let child = std::process::Command::new(pool_worker_exe())
            .env(WORKER_MODE, "listen")
            .env(LISTEN_PATH, path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start a server");
        Server(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The same churn against endpoints the pool connects to: three server processes, one of
/// them SIGKILLed and started again on its path (its stale socket file replaced) every 50 to
/// 200 ms. Every call resolves; idempotent ones are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_resolves_while_its_servers_are_killed_and_restarted() {
    let dir = temp_dir();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("server{i}.sock")))
        .collect();
    let mut servers: Vec<Server> = paths.iter().map(|path| Server::start(path)).collect();
    let endpoints = (paths.iter()).fold(Pool::builder(), |pool, path| pool.connect(path));
    let pool = for_churn(endpoints, Duration::from_millis(10));
    within("three live endpoints", pool.until_live(3)).await;
    let mut restarts = 0;
    let churned = churn(&pool, 7, Duration::from_secs(3), |rng| {
        let i = rng.below(3) as usize;
        servers[i].kill();
        servers[i] = Server::start(&paths[i]);
        restarts += 1;
    })
    .await;
    let metrics = pool.metrics();
    check_churn(0, &churned, &metrics);
    assert!(restarts >= 12, "{restarts} restarts");
    assert!(
        metrics.workers.iter().map(|w| w.restarts).sum::<u64>() >= 6,
        "the pool reconnected again and again: {metrics:?}"
    );
    within("shutdown", pool.shutdown(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_stream_stays_on_its_worker_and_ends_closed_when_it_dies() {
    use futures_util::StreamExt;
    let pool = workers(2).build().expect("pool");
    within("two live workers", pool.until_live(2)).await;
    let mut pids = pool.call_stream::<u32>("pids", ()).window(4);
    let pid = within("an item", pids.next()).await.unwrap().unwrap();
    for _ in 0..50 {
        let next = within("an item", pids.next()).await.unwrap().unwrap();
        assert_eq!(next, pid, "a stream stays on one worker");
    }
    kill9(pid);
    // The items already come are taken, then the end: a closed error, no retry.
    let error = within("the stream's end", async {
        loop {
            match pids.next().await {
                Some(Ok(next)) => assert_eq!(next, pid),
                Some(Err(e)) => return e,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await;
    assert!(error.is_closed(), "{error}");
    assert!(within("the end", pids.next()).await.is_none());
    within("the shutdown", pool.shutdown(Duration::from_secs(2))).await;
}
