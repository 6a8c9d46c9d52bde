//! Unix domain sockets: the peer's credentials, a hang-up check, and read readiness.

use std::future::Future;

use tokio::io::Interest;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::Transport;
use crate::peer::{Credentials, Identity};

impl Transport for UnixStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn identity(&self) -> Identity {
        match self.peer_cred() {
            Ok(cred) => Identity::Unix(Credentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            }),
            Err(_) => Identity::Unknown,
        }
    }

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn hung_up(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let socket: &UnixStream = read.as_ref();
        super::until_write_closed(move || socket.ready(Interest::WRITABLE))
    }

    fn readable(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let socket: &UnixStream = read.as_ref();
        async move {
            // An error shows in the read that follows.
            let _ = socket.readable().await;
        }
    }
}
