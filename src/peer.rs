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

    /// The peer's address, for a TCP peer (and a WebSocket or HTTP peer whose address the
    /// host server recorded).
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.identity {
            Identity::Tcp(addr) => Some(*addr),
            #[cfg(feature = "axum")]
            Identity::Http(http) => http.addr(),
            _ => None,
        }
    }

    /// What the HTTP request that opened a WebSocket (or made an HTTP call) carried: the
    /// remote address and the request's extensions.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn http(&self) -> Option<&HttpPeer> {
        match &self.identity {
            Identity::Http(http) => Some(http),
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
    /// A WebSocket or HTTP peer, as the host server's HTTP request saw it: its address, and
    /// whatever the server's layers put in the request's extensions (an authenticated user).
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    Http(HttpPeer),
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

/// A WebSocket or HTTP peer: what the HTTP request that reached this crate carried.
///
/// The host server's layers run before this crate sees the request, so what they learn about
/// the caller (an authenticated user, a tenant, a request id) reaches handlers and layers
/// here: `peer.http().and_then(|h| h.get::<User>())`.
///
/// Two `HttpPeer`s are equal when they hold the same address and the very same extensions
/// (those of one HTTP request): extensions hold values of any type, which cannot be compared.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone)]
pub struct HttpPeer {
    /// From axum's `ConnectInfo<SocketAddr>`: `None` unless the app is served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    addr: Option<SocketAddr>,
    /// Shared: every request of a WebSocket connection carries the same ones.
    extensions: std::sync::Arc<axum::http::Extensions>,
}

#[cfg(feature = "axum")]
impl HttpPeer {
    /// A peer from an HTTP request's address and extensions.
    pub fn new(addr: Option<SocketAddr>, extensions: axum::http::Extensions) -> Self {
        HttpPeer {
            addr,
            extensions: std::sync::Arc::new(extensions),
        }
    }

    /// The address the HTTP request came from, if the server recorded it (axum's
    /// `ConnectInfo<SocketAddr>`).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The HTTP request's extensions, as the host server's layers left them: `http`'s type,
    /// not the crate's [`Extensions`](crate::Extensions) of
    /// [`Request::extensions`](crate::Request::extensions).
    pub fn http_extensions(&self) -> &axum::http::Extensions {
        &self.extensions
    }

    /// The extension of type `T`, if any: e.g. the user an authentication layer inserted.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }
}

#[cfg(feature = "axum")]
impl PartialEq for HttpPeer {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && std::sync::Arc::ptr_eq(&self.extensions, &other.extensions)
    }
}

#[cfg(feature = "axum")]
impl Eq for HttpPeer {}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::*;

    #[test]
    fn an_http_peer_equals_its_clone_and_not_another_address_or_request() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let peer = HttpPeer::new(Some(addr), Default::default());
        assert_eq!(peer, peer.clone());
        assert_eq!(
            Identity::Http(peer.clone()),
            Identity::Http(peer.clone()),
            "the identity of a WebSocket connection's requests compares equal"
        );
        let elsewhere = HttpPeer {
            addr: Some("127.0.0.1:4001".parse().unwrap()),
            extensions: peer.extensions.clone(),
        };
        assert_ne!(peer, elsewhere);
        // Same address, another request's extensions: extensions cannot be compared by value.
        assert_ne!(peer, HttpPeer::new(Some(addr), Default::default()));
    }
}
