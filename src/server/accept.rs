//! The accept loop, shared by every listener: the connection limit, back-off when out of
//! file descriptors, skipping errors that concern one connection, rate-limited logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::listener::Listener;
use crate::error::{code, Error, RpcError};
use crate::frame::Frame;
use crate::transport::Transport;

/// How long a connection over the limit is given to take its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) struct Acceptor<L> {
    listener: L,
    /// One permit per open connection, up to `max_connections`.
    slots: Arc<Semaphore>,
    max_connections: usize,
    pressure: Pressure,
}

impl<L: Listener> Acceptor<L> {
    pub(super) fn new(listener: L, max_connections: usize) -> Self {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            pressure: Pressure::default(),
        }
    }

    /// The next connection within the limit, with its place in the limit. Only a listener
    /// that can no longer accept is an error.
    pub(super) async fn next(&mut self) -> Result<(L::Io, OwnedSemaphorePermit), Error> {
        loop {
            match self.listener.accept().await {
                Ok(io) => {
                    // Descriptors are available again: the next shortage starts at 10 ms.
                    self.pressure.backoff = Duration::ZERO;
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => return Ok((io, slot)),
                        Err(_) => self.refuse_full(io),
                    }
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "diarrhoea: accept failed for one connection");
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    let backoff = self.pressure.out_of_descriptors(&e);
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(Error::io(e).with_context("accept")),
            }
        }
    }

    /// Tells a connection over the limit why, then closes it; never holds up accepting.
    fn refuse_full(&mut self, io: L::Io) {
        let limit = self.max_connections;
        let full = RpcError::new(
            code::OVERLOADED,
            format!("overloaded: server full ({limit} connections)"),
        );
        let (read, mut write) = io.split();
        tokio::spawn(async move {
            let line = Frame::ConnectionError(full).to_line();
            let refusal = async {
                write.write_all(&line).await?;
                write.shutdown().await
            };
            // A peer that does not take the line is closed all the same.
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
            drop(read);
        });
        if every_second(&mut self.pressure.full_logged) {
            tracing::warn!(
                limit,
                "diarrhoea: connection limit reached, refusing connections"
            );
        }
    }
}

/// What the accept loop remembers between accepts, so that back-off and rate-limited logs
/// hold across connections that come and go.
#[derive(Debug, Default)]
struct Pressure {
    backoff: Duration,
    descriptors_logged: Option<Instant>,
    full_logged: Option<Instant>,
}

impl Pressure {
    /// The next back-off after EMFILE and friends: 10 ms doubling to 1 s, starting over after
    /// an accept succeeds. The warning is logged at most once a second however often that is.
    fn out_of_descriptors(&mut self, e: &std::io::Error) -> Duration {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if every_second(&mut self.descriptors_logged) {
            tracing::warn!(error = %e, backoff = ?self.backoff, "diarrhoea: out of file descriptors, accept backs off");
        }
        self.backoff
    }
}

/// `true` at most once a second: for logs that a flood of events must not flood.
fn every_second(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || errno(e) == Some(rustix::io::Errno::PROTO)
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: resources that come back when connections close.
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        errno(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

fn errno(e: &std::io::Error) -> Option<rustix::io::Errno> {
    e.raw_os_error().map(rustix::io::Errno::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_at_most_once_a_second() {
        let mut last = None;
        assert!(every_second(&mut last), "the first one is logged");
        assert!(!every_second(&mut last), "the next, at once, is not");
        last = Instant::now().checked_sub(Duration::from_millis(1100));
        assert!(every_second(&mut last), "a second later it is again");
        assert!(!every_second(&mut last));
    }

    #[test]
    fn errors_are_classified_by_errno() {
        use rustix::io::Errno;
        let os = |errno: Errno| std::io::Error::from_raw_os_error(errno.raw_os_error());
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            assert!(is_out_of_descriptors(&os(errno)), "{errno:?}");
            assert!(!is_per_connection(&os(errno)), "{errno:?}");
        }
        for errno in [Errno::PROTO, Errno::CONNABORTED, Errno::INTR] {
            assert!(is_per_connection(&os(errno)), "{errno:?}");
            assert!(!is_out_of_descriptors(&os(errno)), "{errno:?}");
        }
        assert!(!is_per_connection(&os(Errno::BADF)));
        assert!(!is_out_of_descriptors(&os(Errno::BADF)));
    }

    /// Hands out what it was given, in order: errors, then connections.
    struct Scripted(std::collections::VecDeque<std::io::Result<tokio::io::DuplexStream>>);

    impl Listener for Scripted {
        type Io = tokio::io::DuplexStream;

        async fn accept(&mut self) -> std::io::Result<Self::Io> {
            self.0.pop_front().expect("the script is long enough")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_backs_off_and_accepting_goes_on() {
        use rustix::io::Errno;
        let os = |errno: Errno| Err(std::io::Error::from_raw_os_error(errno.raw_os_error()));
        let (io, _peer) = tokio::io::duplex(64);
        let script = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
            .map(os)
            .into_iter()
            .chain([Ok(io)])
            .collect();
        let mut acceptor = Acceptor::new(Scripted(script), 4);
        let start = tokio::time::Instant::now();
        let accepted = acceptor.next().await;
        assert!(accepted.is_ok(), "{:?}", accepted.err());
        // Paused time: the back-offs (10 + 20 + 40 + 80 ms) were slept, not spun through.
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn any_other_listener_error_ends_accepting() {
        let bad = std::io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error());
        let mut acceptor = Acceptor::new(Scripted([Err(bad)].into()), 4);
        assert!(acceptor.next().await.is_err());
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut pressure = Pressure::default();
        let e = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let steps: Vec<u128> = (0..9)
            .map(|_| pressure.out_of_descriptors(&e).as_millis())
            .collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
