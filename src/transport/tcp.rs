//! TCP: the peer's address, and a hang-up check.

use std::future::Future;

use tokio::io::Interest;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::Transport;
use crate::peer::Identity;

impl Transport for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn identity(&self) -> Identity {
        match self.peer_addr() {
            Ok(addr) => Identity::Tcp(addr),
            Err(_) => Identity::Unknown,
        }
    }

    fn split(self) -> (Self::Read, Self::Write) {
        // Frames are batched by the writer already; Nagle's algorithm would only add delay.
        let _ = self.set_nodelay(true);
        self.into_split()
    }

    fn hung_up(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let socket: &TcpStream = read.as_ref();
        super::until_write_closed(move || socket.ready(Interest::WRITABLE))
    }

    fn readable(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let socket: &TcpStream = read.as_ref();
        async move {
            // An error shows in the read that follows.
            let _ = socket.readable().await;
        }
    }
}
