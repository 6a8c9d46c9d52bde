//! The named futures of this crate, in one place.

pub use crate::connection::ResponseFuture;
pub use crate::router::RouteFuture;
pub use crate::server::ServeFuture;
