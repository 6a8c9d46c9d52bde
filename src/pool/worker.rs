//! Where a worker comes from (a process the pool starts, or an endpoint it connects to), and
//! how a running one is watched and ended.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use tokio::process::{Child, Command};

use crate::connection::{Builder, Connection};
use crate::error::Error;

/// Makes the command that starts the worker of a slot (its index is the argument).
pub(super) type MakeCommand = Arc<dyn Fn(usize) -> Command + Send + Sync>;

/// Where a slot's worker comes from.
#[derive(Clone)]
pub(super) enum Source {
    /// A process the pool starts and talks to over its stdin and stdout.
    Spawn(MakeCommand),
    /// A process the pool starts with one end of a Unix socket pair as its stdin: the
    /// connection carries descriptors.
    SpawnSocket(MakeCommand),
    /// A server on a Unix socket.
    Unix(PathBuf),
    /// A server on TCP.
    Tcp(SocketAddr),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Spawn(_) => f.write_str("Spawn"),
            Source::SpawnSocket(_) => f.write_str("SpawnSocket"),
            Source::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
            Source::Tcp(addr) => f.debug_tuple("Tcp").field(addr).finish(),
        }
    }
}

/// How the pool tells that a worker still answers: a `$/ping` call, which the worker's
/// connection answers itself (with -32601) without running any handler.
#[derive(Debug, Clone, Copy)]
pub(super) struct Health {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

/// The method of the liveness probe: reserved by the protocol, so no handler ever sees it and
/// every conforming peer answers it at once.
const PING: &str = "$/ping";

/// Whether the peer answered a probe within `timeout` (any reply counts, error replies too).
async fn answers(conn: &Connection, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, conn.call::<IgnoredAny>(PING, ())).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => error.is_remote() || error.is_overloaded(),
        Err(_elapsed) => false,
    }
}

/// Why a worker left the balance.
#[derive(Debug)]
pub(super) enum Down {
    /// Its connection closed.
    Closed,
    /// The process exited (or was killed).
    Exited(#[allow(dead_code)] Option<ExitStatus>),
    /// It stopped answering the liveness probe.
    Unresponsive,
}

/// A slot's worker while it is up.
pub(super) struct Running {
    pub(super) conn: Connection,
    child: Option<Child>,
}

impl Source {
    /// Starts (or connects to) the worker, and waits until it answers a first probe, so no
    /// call goes to a worker that is still starting or fails at once.
    pub(super) async fn start(
        &self,
        slot: usize,
        builder: Builder,
        timeout: Duration,
    ) -> Result<Running, Error> {
        let (conn, child) = match self {
            Source::Spawn(command) => {
                let (conn, child) = builder.spawn_child(&mut command(slot))?;
                (conn, Some(child))
            }
            Source::SpawnSocket(command) => {
                let (conn, child) = builder.spawn_child_socket(&mut command(slot))?;
                (conn, Some(child))
            }
            Source::Unix(path) => (builder.connect(path).await?, None),
            Source::Tcp(addr) => (builder.connect_tcp(addr).await?, None),
        };
        let mut running = Running { conn, child };
        if answers(&running.conn, timeout).await {
            Ok(running)
        } else {
            running.kill().await;
            Err(Error::closed().with_context("the worker did not answer its first probe"))
        }
    }
}

impl Running {
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Completes when the worker goes away: its connection closes, its process exits, or it
    /// stops answering probes.
    pub(super) async fn until_down(&mut self, health: Option<Health>) -> Down {
        let conn = self.conn.clone();
        let exited = async {
            match &mut self.child {
                Some(child) => child.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        let unresponsive = async {
            let Some(health) = health else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(health.interval).await;
                if !answers(&conn, health.timeout).await {
                    return;
                }
            }
        };
        tokio::select! {
            () = conn.closed() => Down::Closed,
            status = exited => Down::Exited(status),
            () = unresponsive => Down::Unresponsive,
        }
    }

    /// Ends a worker the pool no longer needs: finishes sending, gives a process `grace` to
    /// exit on its own (it sees the end of its stdin), then kills it.
    pub(super) async fn end(mut self, grace: Duration) {
        self.conn.end();
        if let Some(child) = &mut self.child {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        self.conn.close();
    }

    /// Ends a worker that failed: at once, and reaps its process.
    pub(super) async fn kill(&mut self) {
        self.conn.close();
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
    }
}
