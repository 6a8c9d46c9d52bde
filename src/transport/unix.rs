//! Unix domain sockets: the peer's credentials, a hang-up check, and read readiness.

use std::future::Future;
use std::os::fd::OwnedFd;

use bytes::BytesMut;
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

    fn carries_fds() -> bool {
        true
    }

    fn read_with_fds<'a>(
        read: &'a mut Self::Read,
        buf: &'a mut BytesMut,
        want: usize,
        fds: &'a mut Vec<OwnedFd>,
        max_fds: usize,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        let read: &'a Self::Read = read;
        fds::read(read.as_ref(), buf, want, fds, max_fds)
    }

    fn write_with_fds<'a>(
        write: &'a mut Self::Write,
        bytes: &'a [u8],
        fds: &'a [OwnedFd],
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        let write: &'a Self::Write = write;
        fds::write(write.as_ref(), bytes, fds)
    }
}

/// Descriptors beside the bytes of a Unix socket (`SCM_RIGHTS`), with `sendmsg` and
/// `recvmsg` through rustix (safe code).
mod fds {
    use std::io::{IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

    use bytes::BytesMut;
    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };
    use tokio::io::Interest;
    use tokio::net::UnixStream;

    use crate::fd::SCM_MAX_FD;

    /// Room for the most descriptors one message may carry, and one more.
    const SPACE: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD + 1));

    /// The most a read is offered (what a Unix socket's buffer holds, about).
    const MOST: usize = 262_144;

    thread_local! {
        /// Where `recvmsg` reads, then copied after the buffer's bytes: safe code reads only
        /// into initialized memory, and zeroing the buffer's room before every read costs
        /// more than copying what a read brings (often much less than the room). One per
        /// thread, zeroed once as it grows, to at most `MOST`.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    const RECV_FLAGS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const RECV_FLAGS: RecvFlags = RecvFlags::empty();

    #[cfg(any(target_os = "linux", target_os = "android"))]
    const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
    // Elsewhere the crate ignores SIGPIPE (`driver::ignore_sigpipe`).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const SEND_FLAGS: SendFlags = SendFlags::empty();

    /// Reads as `read_buf` does, with the descriptors that came with the bytes.
    pub(super) async fn read(
        socket: &UnixStream,
        buf: &mut BytesMut,
        want: usize,
        fds: &mut Vec<OwnedFd>,
        max_fds: usize,
    ) -> std::io::Result<usize> {
        loop {
            socket.readable().await?;
            let mut got = None;
            let result = socket.try_io(Interest::READABLE, || {
                let before = fds.len();
                let (n, room) = recv(socket, buf, want, fds, max_fds)?;
                got = Some(n);
                if n > 0 && n < room && fds.len() == before {
                    // A short read without descriptors drained the socket: say so, so the
                    // next read waits for readiness (as tokio's own reads do) instead of
                    // asking the kernel once more. After descriptors it may not have.
                    Err(std::io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match (got, result) {
                (Some(n), _) => return Ok(n),
                (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                (None, result) => return result,
            }
        }
    }

    /// One `recvmsg` into the room after `buf`'s bytes; the bytes read and the room offered.
    fn recv(
        socket: &UnixStream,
        buf: &mut BytesMut,
        want: usize,
        fds: &mut Vec<OwnedFd>,
        max_fds: usize,
    ) -> std::io::Result<(usize, usize)> {
        let room = (buf.capacity() - buf.len()).min(want).clamp(1, MOST);
        let mut space = [MaybeUninit::<u8>::uninit(); SPACE];
        let space_for = rustix::cmsg_space!(ScmRights(max_fds.min(SCM_MAX_FD) + 1));
        let mut control = RecvAncillaryBuffer::new(&mut space[..space_for]);
        let n = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < room {
                scratch.resize(room, 0);
            }
            let msg = rustix::net::recvmsg(
                socket,
                &mut [IoSliceMut::new(&mut scratch[..room])],
                &mut control,
                RECV_FLAGS,
            )?;
            buf.extend_from_slice(&scratch[..msg.bytes]);
            Ok::<_, std::io::Error>(msg.bytes)
        })?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        for fd in fds.iter() {
            // No MSG_CMSG_CLOEXEC here: close-on-exec right after (a child started in
            // between could inherit one).
            let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
        }
        Ok((n, room))
    }

    /// Writes a prefix of `bytes` with `fds` attached.
    pub(super) async fn write(
        socket: &UnixStream,
        bytes: &[u8],
        fds: &[OwnedFd],
    ) -> std::io::Result<usize> {
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        loop {
            socket.writable().await?;
            let result = socket.try_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::<u8>::uninit(); SPACE];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} descriptors do not fit in one message", fds.len()),
                    ));
                }
                rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, SEND_FLAGS)
                    .map_err(Into::into)
            });
            match result {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                result => return result,
            }
        }
    }
}
