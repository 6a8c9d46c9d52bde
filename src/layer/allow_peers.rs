//! [`AllowPeers`]: only listed users and groups may use a server.
//!
//! The kernel tells a Unix socket server who connected (`SO_PEERCRED`: uid, gid, pid); every
//! incoming request carries it in [`PeerInfo`]. A peer whose uid is not listed, and whose gid
//! is not listed either, is refused: its request is answered with [`PEER_NOT_ALLOWED`] and the
//! connection is closed with a connection error `[null,null,{"code":-31001,...}]` carrying
//! the same code. A request without credentials (the platform could not read them) is refused
//! too (TCP, pipes, TLS: any transport without Unix credentials): the layer fails closed.
//!
//! The socket file's mode (0600 by default) already keeps other users out on most systems;
//! this layer is for sockets opened to a group, or a second line of defence.
//!
//! ```no_run
//! use diarrhoea::layer::AllowPeersLayer;
//! use tower::ServiceBuilder;
//!
//! # fn f() -> std::io::Result<()> {
//! // This process's own user, plus members of group 1001.
//! let stack = ServiceBuilder::new()
//!     .layer(AllowPeersLayer::same_user()?.gid(1001))
//!     .service(diarrhoea::Router::new());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::{BoxError, RpcError};
use crate::peer::PeerInfo;
use crate::request::Request;

/// The code of the error a refused peer gets.
///
/// An application code, outside the range -32768..=-32000 that protocol v1 reserves: the
/// protocol's codes say what was wrong with a frame or with the receiver's state, and -32600
/// ("invalid frame") would send a refused peer looking for a bug in its frames. A peer that
/// does not know this code still reads the message, `peer not allowed: ...`.
pub const PEER_NOT_ALLOWED: i64 = -31001;

/// Admits only listed uids and gids; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct AllowPeersLayer {
    allowed: Arc<Allowed>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Allowed {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl AllowPeersLayer {
    /// Admits nobody until uids or gids are added.
    pub fn none() -> Self {
        Self::default()
    }

    /// Admits the user this process runs as (its effective uid): the default policy.
    pub fn same_user() -> std::io::Result<Self> {
        Ok(Self::none().uid(current_uid()?))
    }

    /// Also admits peers running as `uid`.
    pub fn uid(mut self, uid: u32) -> Self {
        Arc::make_mut(&mut self.allowed).uids.push(uid);
        self
    }

    /// Also admits peers whose primary group is `gid`.
    pub fn gid(mut self, gid: u32) -> Self {
        Arc::make_mut(&mut self.allowed).gids.push(gid);
        self
    }

    /// Whether a peer with these credentials is admitted.
    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        self.allowed.uids.contains(&uid) || self.allowed.gids.contains(&gid)
    }
}

/// The effective uid this process runs as.
pub fn current_uid() -> std::io::Result<u32> {
    Ok(rustix::process::geteuid().as_raw())
}

impl<S> Layer<S> for AllowPeersLayer {
    type Service = AllowPeers<S>;

    fn layer(&self, inner: S) -> AllowPeers<S> {
        AllowPeers {
            inner,
            policy: self.clone(),
        }
    }
}

/// The service of [`AllowPeersLayer`].
#[derive(Debug, Clone)]
pub struct AllowPeers<S> {
    inner: S,
    policy: AllowPeersLayer,
}

impl<S> AllowPeers<S> {
    /// Wraps `inner`, admitting the peers `policy` admits.
    pub fn new(inner: S, policy: AllowPeersLayer) -> Self {
        policy.layer(inner)
    }

    /// Why a request is refused, if it is.
    fn check(&self, req: &Request) -> Result<(), RpcError> {
        match req.peer().and_then(PeerInfo::credentials) {
            Some(cred) if self.policy.admits(cred.uid, cred.gid) => Ok(()),
            Some(cred) => Err(RpcError::new(
                PEER_NOT_ALLOWED,
                format!(
                    "peer not allowed: uid {} gid {} is not admitted by this server",
                    cred.uid, cred.gid
                ),
            )),
            // TCP, pipes, TLS: no credentials, so the layer fails closed.
            None => Err(RpcError::new(
                PEER_NOT_ALLOWED,
                "peer not allowed: the peer's credentials could not be read \
                 (not a Unix socket peer)",
            )),
        }
    }
}

impl<S> Service<Request> for AllowPeers<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AllowPeersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> AllowPeersFuture<S::Future> {
        match self.check(&req) {
            Ok(()) => AllowPeersFuture::admitted(self.inner.call(req)),
            Err(error) => {
                tracing::warn!(
                    connection = req.connection().map(|c| c.id()),
                    method = %crate::error::truncate(req.method(), 64),
                    "diarrhoea: {}", error.message
                );
                // Requests in flight (this one included) are answered before the connection
                // error is sent and the connection ends.
                if let Some(conn) = req.connection() {
                    conn.close_with_error(error.clone());
                }
                AllowPeersFuture::refused(error)
            }
        }
    }
}

pin_project! {
    /// The future of [`AllowPeers`]: the inner service's, or the refusal.
    pub struct AllowPeersFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Admitted { #[pin] inner: F },
        // Taken when polled.
        Refused { error: Option<RpcError> },
    }
}

impl<F> AllowPeersFuture<F> {
    fn admitted(inner: F) -> Self {
        AllowPeersFuture {
            state: State::Admitted { inner },
        }
    }

    fn refused(error: RpcError) -> Self {
        AllowPeersFuture {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for AllowPeersFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner } => inner.poll(cx).map_err(Into::into),
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("AllowPeersFuture polled after completion")
                .into())),
        }
    }
}

impl<F> fmt::Debug for AllowPeersFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Admitted { .. } => "admitted",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("AllowPeersFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::Response;
    use tokio::net::UnixStream;
    use tower::ServiceExt;
    use tower_test::mock;

    /// Real credentials of this process, read from a socket pair.
    fn own_cred() -> crate::peer::Credentials {
        let (a, _b) = UnixStream::pair().unwrap();
        match crate::transport::Transport::identity(&a) {
            crate::peer::Identity::Unix(cred) => cred,
            other => panic!("a socket pair has credentials, got {other:?}"),
        }
    }

    /// `fut`, failing the test instead of waiting forever when a request goes where it should
    /// not (the mock service never answers on its own).
    async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(5), fut)
            .await
            .unwrap_or_else(|_| panic!("still waiting after 5 s: {what}"))
    }

    fn request_from(cred: Option<crate::peer::Credentials>) -> Request {
        let mut req = Request::new("hello", ()).unwrap();
        req.set_peer(PeerInfo {
            connection_id: 1,
            identity: cred.map_or(crate::peer::Identity::Unknown, crate::peer::Identity::Unix),
        });
        req
    }

    #[tokio::test]
    async fn the_same_user_is_admitted_by_default() {
        let cred = own_cred();
        assert_eq!(current_uid().unwrap(), cred.uid);
        let (mut service, mut handle) =
            mock::spawn_layer::<Request, Response, _>(AllowPeersLayer::same_user().unwrap());
        assert!(service.poll_ready().is_ready());
        let fut = service.call(request_from(Some(cred)));
        let (req, send) = bounded(
            "the request to reach the inner service",
            handle.next_request(),
        )
        .await
        .unwrap();
        assert_eq!(req.method(), "hello");
        send.send_response(Response::null());
        assert_eq!(bounded("the reply", fut).await.unwrap(), Response::null());
    }

    #[tokio::test]
    async fn others_are_refused_before_the_inner_service() {
        let cred = own_cred();
        let layer = AllowPeersLayer::none()
            .uid(cred.uid.wrapping_add(1))
            .gid(cred.gid.wrapping_add(1));
        let (mut service, mut handle) = mock::spawn_layer::<Request, Response, _>(layer);
        for req in [request_from(Some(cred)), request_from(None)] {
            assert!(service.poll_ready().is_ready());
            let error = bounded("the refusal", service.call(req)).await.unwrap_err();
            let rpc = RpcError::from_box_error(error);
            assert_eq!(rpc.code, -31001, "the code the docs give");
            assert!(rpc.message.starts_with("peer not allowed"), "{rpc}");
        }
        drop(service);
        assert!(
            handle.next_request().await.is_none(),
            "nothing reached the inner service"
        );
    }

    #[tokio::test]
    async fn a_listed_gid_is_enough() {
        let cred = own_cred();
        let layer = AllowPeersLayer::none().gid(cred.gid);
        assert!(layer.admits(cred.uid, cred.gid));
        assert!(!layer.admits(cred.uid, cred.gid.wrapping_add(1)));
        let service = layer.layer(tower::service_fn(|_: Request| async {
            Ok::<_, BoxError>(Response::null())
        }));
        service.oneshot(request_from(Some(cred))).await.unwrap();
    }
}
