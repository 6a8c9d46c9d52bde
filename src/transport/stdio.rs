//! Pipes: a child process's stdin and stdout, or this process's own.

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
}
