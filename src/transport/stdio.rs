//! Pipes: a child process's stdin and stdout, or this process's own.

use std::future::Future;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::unix::pipe::Sender;
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::Transport;

/// A child process's stdout (read) and stdin (write), as the parent's end of a connection.
///
/// Taken from a child spawned with both piped; see
/// [`Builder::spawn_child`](crate::connection::Builder::spawn_child).
#[derive(Debug)]
pub struct ChildStdio {
    stdout: ChildStdout,
    stdin: ChildStdin,
}

impl ChildStdio {
    /// Takes the pipes out of `child`; `None` unless both stdin and stdout were piped.
    pub fn take(child: &mut Child) -> Option<Self> {
        Some(ChildStdio {
            stdout: child.stdout.take()?,
            stdin: child.stdin.take()?,
        })
    }
}

impl Transport for ChildStdio {
    type Read = ChildStdout;
    type Write = ChildStdin;

    fn split(self) -> (Self::Read, Self::Write) {
        (self.stdout, self.stdin)
    }
}

/// This process's own stdin (read) and stdout (write): the worker's end of a connection to
/// the parent that spawned it. The parent's death closes stdin, which ends the connection.
///
/// Nothing else in the process may write to stdout while it carries frames: log to stderr.
#[derive(Debug)]
pub struct Stdio {
    stdin: tokio::io::Stdin,
    stdout: tokio::io::Stdout,
}

impl Stdio {
    /// This process's stdin and stdout.
    pub fn new() -> Self {
        Stdio {
            stdin: tokio::io::stdin(),
            stdout: tokio::io::stdout(),
        }
    }
}

impl Default for Stdio {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Stdio {
    type Read = tokio::io::Stdin;
    type Write = tokio::io::Stdout;

    fn split(self) -> (Self::Read, Self::Write) {
        (self.stdin, self.stdout)
    }

    /// The parent is gone once nobody can read this process's stdout any more (a pipe whose
    /// read end is closed reports an error to `poll`): then the calls still running are
    /// dropped and the worker exits, instead of finishing work nobody can receive. A parent
    /// that only ended its side (closed the worker's stdin) still reads its replies. Stdout
    /// that cannot be polled (a regular file) is never seen as hung up.
    fn hung_up(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let _ = read;
        async move {
            let Some(stdout) = stdout_readiness() else {
                return std::future::pending().await;
            };
            super::until_write_closed(|| stdout.ready(Interest::WRITABLE)).await
        }
    }
}

/// A duplicate of this process's stdout, registered for readiness only: nothing is written
/// through it, so its blocking mode (shared with stdout) is left alone. `None` where stdout
/// cannot be polled.
fn stdout_readiness() -> Option<Sender> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    Sender::from_owned_fd_unchecked(fd).ok()
}
