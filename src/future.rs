//! Every public named future of this crate, in one place: the connection's, the router's, the
//! server's, the pool's and the layers'. Each is also exported beside the type that returns it.

pub use crate::connection::ResponseFuture;
pub use crate::layer::{AllowPeersFuture, NameOverloadFuture, TraceFuture};
pub use crate::pool::{PoolPostFuture, PoolResponseFuture};
pub use crate::router::RouteFuture;
pub use crate::server::ServeFuture;
