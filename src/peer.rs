//! [`PeerInfo`]: who is on the other end of a connection, as far as its transport can tell.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who is on the other end of a connection; on every incoming request
/// ([`Request::peer`](crate::Request::peer)) and on the [`Connection`](crate::Connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The process-unique id of the connection, as in logs.
    pub connection_id: u64,
    /// What the transport knows about the peer.
    pub identity: Identity,
}

impl PeerInfo {
    /// A peer with a fresh connection id.
    pub fn new(identity: Identity) -> Self {
        static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);
        PeerInfo {
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            identity,
        }
    }

    /// The peer's credentials, for a Unix socket peer.
    pub fn credentials(&self) -> Option<Credentials> {
        match self.identity {
            Identity::Unix(cred) => Some(cred),
            _ => None,
        }
    }

    /// The peer's address, for a TCP peer.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.identity {
            Identity::Tcp(addr) => Some(addr),
            _ => None,
        }
    }
}

/// What a transport tells about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// A Unix socket peer, with the credentials the kernel reported when it connected.
    Unix(Credentials),
    /// A TCP peer's address: says where it connects from, not who it is.
    Tcp(SocketAddr),
    /// The transport cannot tell (pipes, in-memory streams, TLS over an unknown stream), or a
    /// Unix socket whose credentials could not be read.
    Unknown,
}

/// A Unix socket peer's credentials (`SO_PEERCRED` on Linux, `getpeereid` on the BSDs and
/// macOS, where the pid is not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The peer process's effective user id.
    pub uid: u32,
    /// The peer process's effective group id.
    pub gid: u32,
    /// The peer process's id, where the platform reports it.
    pub pid: Option<i32>,
}
