//! [`MakeConnectionService`]: what [`serve`](crate::serve) takes to give each connection its service.

use tower::Service;

use crate::connection::Connection;
use crate::error::BoxError;
use crate::request::Request;
use crate::response::Response;

/// Makes the service for each new connection: implemented for any cloneable service (cloned
/// per connection) and for any `FnMut(&Connection) -> S` factory.
///
/// `Marker` only tells the two apart; callers never name it. Unlike `tower::MakeService`,
/// whose target may be anything, it is given the new [`Connection`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot make a service for each connection",
    note = "pass a cloneable `Service<Request, Response = Response>` (e.g. a `Router`), or a closure `|conn: &Connection| -> S`"
)]
pub trait MakeConnectionService<Marker>: Send + 'static {
    /// The service a connection gets.
    type Service: Service<Request, Response = Response, Error: Into<BoxError>, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static;

    /// Makes the service for `conn`, before anything is read from it.
    fn make_service(&mut self, conn: &Connection) -> Self::Service;
}

/// Marks a plain service, cloned for every connection.
#[doc(hidden)]
#[derive(Debug)]
pub enum Cloned {}

/// Marks a per-connection factory.
#[doc(hidden)]
#[derive(Debug)]
pub enum PerConnection {}

impl<S> MakeConnectionService<Cloned> for S
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = S;

    fn make_service(&mut self, _: &Connection) -> S {
        self.clone()
    }
}

impl<F, S> MakeConnectionService<(PerConnection, S)> for F
where
    F: FnMut(&Connection) -> S + Send + 'static,
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = S;

    fn make_service(&mut self, conn: &Connection) -> S {
        self(conn)
    }
}
