//! The writer: the one task that writes to the stream. It takes every queued frame at once
//! (the outbox's whole buffer) and writes them with one system call where it can.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::outbox::{FdFrame, Receiver, WRITE_CHUNK};
use super::Shared;
use crate::error::Error;
use crate::transport::Transport;

pub(super) async fn run<T: Transport>(mut write: T::Write, queue: Receiver, shared: Arc<Shared>) {
    // Empty while waiting: the buffer is given back to the outbox before each wait, so a
    // quiet connection's memory is the outbox's to free.
    let mut buf = BytesMut::new();
    // The frames in `buf` that carry descriptors (rare: empty, no allocation).
    let mut fds = Vec::new();
    loop {
        let taken = tokio::select! {
            biased;
            _ = shared.lifecycle.aborted() => return,
            () = queue.take(&mut buf, &mut fds) => true,
            _ = shared.lifecycle.ended() => false,
        };
        if !taken {
            break;
        }
        if !flush::<T>(&mut write, &mut buf, &mut fds, &queue, &shared).await {
            return;
        }
    }
    // Ending: write what is queued, refuse the rest, then shut down the write side.
    queue.close(&mut buf, &mut fds);
    if flush::<T>(&mut write, &mut buf, &mut fds, &queue, &shared).await {
        let _ = write.shutdown().await;
    }
}

/// Writes the buffer and flushes the stream (a no-op for sockets; TLS and buffered streams
/// need it), leaving the buffer empty; `false` after a failure, which tears the connection
/// down.
async fn flush<T: Transport>(
    write: &mut T::Write,
    buf: &mut BytesMut,
    fds: &mut Vec<FdFrame>,
    queue: &Receiver,
    shared: &Shared,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let result = tokio::select! {
        biased;
        _ = shared.lifecycle.aborted() => return false,
        r = async {
            if fds.is_empty() {
                write_and_flush(write, buf, queue).await
            } else {
                write_with_fds::<T>(write, buf, fds, queue).await
            }
        } => r,
    };
    // Closes the duplicates sent (the peer has its own) or not sent.
    fds.clear();
    // Cleared, not advanced: the buffer keeps its whole capacity for the next frames.
    buf.clear();
    match result {
        Ok(()) => true,
        Err(e) => {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                shared.error(Error::io(e));
            } else {
                tracing::debug!(connection = shared.id(), error = %e, "diarrhoea: peer went away");
            }
            shared.lifecycle.abort();
            false
        }
    }
}

/// Writes `buf` at most [`WRITE_CHUNK`] at a time, telling the outbox as it goes: what a large
/// batch holds beyond one write stays charged to the budget until it is written.
async fn write_and_flush<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &[u8],
    queue: &Receiver,
) -> std::io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        let end = buf.len().min(written + WRITE_CHUNK);
        write.write_all(&buf[written..end]).await?;
        written = end;
        if buf.len() > WRITE_CHUNK {
            queue.written(buf.len() - written);
        }
    }
    write.flush().await
}

/// As [`write_and_flush`], for a buffer with frames that carry descriptors: each such frame
/// starts a message of its own (`sendmsg`) with its descriptors attached to its first
/// bytes, so the peer, whose read stops after that message, finds them beside the frame's
/// line (see `reader`).
async fn write_with_fds<T: Transport>(
    write: &mut T::Write,
    buf: &[u8],
    fds: &[FdFrame],
    queue: &Receiver,
) -> std::io::Result<()> {
    let mut written = 0;
    let mut next = fds.iter().peekable();
    while written < buf.len() {
        if let Some(frame) = next.next_if(|frame| frame.start == written) {
            written += T::write_with_fds(write, &buf[frame.start..frame.end], &frame.fds).await?;
            continue;
        }
        let mut end = buf.len().min(written + WRITE_CHUNK);
        if let Some(frame) = next.peek() {
            end = end.min(frame.start);
        }
        write.write_all(&buf[written..end]).await?;
        written = end;
        if buf.len() > WRITE_CHUNK {
            queue.written(buf.len() - written);
        }
    }
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that never has anything to read and whose writes wait until it is opened,
    /// then take everything they are handed: it records how much each write was handed.
    #[derive(Clone, Default)]
    struct Gate(Arc<std::sync::Mutex<GateState>>);

    #[derive(Default)]
    struct GateState {
        open: bool,
        waiting: Option<std::task::Waker>,
        writes: Vec<usize>,
    }

    impl Gate {
        fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
            self.0.lock().unwrap()
        }

        fn open(&self) {
            let mut state = self.state();
            state.open = true;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }
    }

    impl tokio::io::AsyncRead for Gate {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    impl AsyncWrite for Gate {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut state = self.state();
            if !state.open {
                state.waiting = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            state.writes.push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Lets the connection's tasks run (this runtime has one thread) until `done`.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never: {what}");
    }

    /// Records, at each write, what the outbox still charges for the batch being written.
    struct Charges<'a> {
        queue: &'a Receiver,
        seen: Vec<usize>,
    }

    impl AsyncWrite for Charges<'_> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let held = self.queue.held();
            self.seen.push(held);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What a batch holds beyond one write stays charged, and shrinks as each chunk goes out.
    #[tokio::test]
    async fn a_large_batch_is_charged_until_each_chunk_is_written() {
        let (outbox, queue) = super::super::outbox::Outbox::new(8, usize::MAX);
        let len = 3 * WRITE_CHUNK + 10;
        outbox
            .try_send_with(|buf| {
                buf.extend_from_slice(&vec![b'x'; len]);
                Ok(())
            })
            .unwrap();
        let mut buf = BytesMut::new();
        queue.take(&mut buf, &mut Vec::new()).await;
        let mut charges = Charges {
            queue: &queue,
            seen: Vec::new(),
        };
        write_and_flush(&mut charges, &buf, &queue).await.unwrap();
        assert_eq!(
            charges.seen,
            [2 * WRITE_CHUNK + 10, WRITE_CHUNK + 10, 10, 0]
        );
        assert_eq!(queue.held(), 0);
    }

    /// Large frames queued together are written a chunk at a time, not handed to the stream
    /// in one write: at most about WRITE_CHUNK of a batch is written uncharged.
    #[tokio::test(flavor = "current_thread")]
    async fn large_frames_are_written_as_the_buffer_fills() {
        const LARGE: usize = 100_000;
        let gate = Gate::default();
        let conn =
            crate::Connection::builder().serve_connection(crate::transport::Io(gate.clone()));
        // The writer takes a first frame and waits on the closed gate; four large frames
        // queue up behind it meanwhile.
        conn.try_post_message("first", ()).unwrap();
        until("the writer waits on the gate", || {
            gate.state().waiting.is_some()
        })
        .await;
        for _ in 0..4 {
            conn.try_post_message("large", ("x".repeat(LARGE),))
                .unwrap();
        }
        gate.open();
        let written = || gate.state().writes.iter().sum::<usize>();
        until("every frame is written", || written() > 4 * LARGE).await;
        let writes = gate.state().writes.clone();
        // At most WRITE_CHUNK (the bound the queue of lines had: under WRITE_CHUNK gathered,
        // then one frame of LARGE and a few bytes).
        let most = writes.iter().max().copied().unwrap_or(0);
        assert!(
            most < WRITE_CHUNK + LARGE + 64,
            "a write of {most} bytes: {writes:?}"
        );
    }
}
