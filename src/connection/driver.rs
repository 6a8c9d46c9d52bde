//! The driver: the tasks that run a connection once it is built (a writer, and the reader
//! and dispatcher side by side), and what they inherit from whoever started them.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::Budget;
use super::inbox::Inbox;
use super::{dispatch, inbound_queue, reader, writer};
use super::{BoundService, Config, Connection, Event, Shared};
use crate::frame::Frame;
use crate::jsonrpc::io::Translated;
use crate::jsonrpc::Protocol;
use crate::peer::PeerInfo;
use crate::transport::Transport;

/// Tokens and task tracking a connection inherits from whoever started it.
pub(crate) struct Parent {
    pub(crate) abort: CancellationToken,
    pub(crate) draining: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Parent {
    pub(crate) fn standalone() -> Self {
        Parent {
            abort: CancellationToken::new(),
            draining: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// A graceful shutdown of every connection started under this parent: each refuses new
    /// calls and finishes the ones in flight; after `timeout`, the rest are closed. `what`
    /// names them in the warning.
    pub(crate) async fn drain(&self, timeout: std::time::Duration, what: &str) {
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "diarrhoea: {what} shutdown deadline passed, closing connections"
            );
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Starts the tasks that drive `io`. `make` builds the service from the new connection's
/// handle before anything is read, so it may greet the peer first; `slot` is the
/// connection's place in a server's limit, given back when it closes.
pub(crate) fn launch<T: Transport>(
    io: T,
    config: Config,
    parent: &Parent,
    slot: Option<OwnedSemaphorePermit>,
    make: impl FnOnce(&Connection) -> BoundService,
) -> Connection {
    match config.protocol {
        // Protocol v1 runs on the stream as it is.
        Protocol::V1 => start(io, config, parent, slot, make),
        protocol => {
            let io = Translated::new(
                io,
                protocol,
                config.max_frame_size,
                config.partial_frame_timeout,
            );
            start(io, config, parent, slot, make)
        }
    }
}

fn start<T: Transport>(
    io: T,
    config: Config,
    parent: &Parent,
    slot: Option<OwnedSemaphorePermit>,
    make: impl FnOnce(&Connection) -> BoundService,
) -> Connection {
    ignore_sigpipe();
    let peer = PeerInfo::new(io.identity());
    let (read, write) = io.split();
    let fd_limit = T::carries_fds().then_some(config.max_fds_per_frame);
    let (shared, outgoing_rx, binding) =
        Shared::new(config, peer, BoundService::unbound(), parent, fd_limit);
    let conn = Connection {
        shared: shared.clone(),
    };
    shared.binding.send_replace(make(&conn));
    let writer = parent
        .tracker
        .spawn(writer::run::<T>(write, outgoing_rx, shared.clone()));
    parent
        .tracker
        .spawn(drive::<T>(read, binding, shared, writer, slot));
    conn
}

/// Runs the inbound side, then lets the writer finish, then reports the close.
async fn drive<T: Transport>(
    read: T::Read,
    binding: watch::Receiver<BoundService>,
    shared: Arc<Shared>,
    writer: tokio::task::JoinHandle<()>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let (tx, rx) = inbound_queue::channel();
    let budget = Budget::new(shared.config.inbound_buffer);
    let inbox = Inbox::new(tx, budget, shared.clone());
    let reader = async {
        if let Some(read) = reader::run::<T>(read, inbox, &shared).await {
            // The peer has ended; drop its calls at once if it is gone entirely.
            tokio::select! {
                biased;
                _ = shared.lifecycle.aborted() => {}
                _ = shared.lifecycle.ended() => {}
                _ = T::hung_up(&read) => {
                    tracing::debug!(connection = shared.id(), "diarrhoea: peer hung up, dropping its calls");
                    shared.lifecycle.abort();
                }
            }
        }
    };
    let dispatcher = async {
        dispatch::run(rx, binding, shared.clone()).await;
        if shared.lifecycle.is_draining() {
            let _ = shared
                .outgoing
                .send_control(Frame::ConnectionError(shared.farewell()));
        }
        shared.lifecycle.end();
    };
    tokio::join!(reader, dispatcher);
    shared.lifecycle.end();
    let _ = writer.await;
    // The connection's place in a server's limit is free before anyone hears it closed, so
    // a peer that reconnects at once is not refused as over the limit.
    drop(slot);
    shared.lifecycle.close();
    shared.emit(Event::Close);
}

/// Writing to a peer that went away must return `EPIPE`, never kill the process.
///
/// Rust binaries ignore SIGPIPE already, but a host process (or `-Zon-broken-pipe`) may not;
/// a tokio signal listener installs a handler that stays for the life of the process.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()) {
            tracing::warn!(error = %e, "diarrhoea: could not install a SIGPIPE handler");
        }
    });
}
