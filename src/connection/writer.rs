//! The writer: the one task that writes to the stream. It takes every queued frame at once and
//! writes them with one system call where it can.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::outbox::Receiver;
use super::Shared;
use crate::error::Error;

/// Frames taken from the queue per batch.
const BATCH: usize = 256;
/// Bytes gathered before a write; larger batches are written as they fill.
const WRITE_CHUNK: usize = 65_536;
/// A buffer that grew beyond this is given back after its write, so a connection that was
/// busy once does not keep the memory (1,000 connections x a large buffer adds up).
const KEEP: usize = 16_384;

/// Drops a buffer that grew beyond [`KEEP`].
fn give_back_if_grown(buf: &mut BytesMut) {
    if buf.capacity() > KEEP {
        *buf = BytesMut::new();
    }
}

pub(super) async fn run<W: AsyncWrite + Unpin>(mut write: W, queue: Receiver, shared: Arc<Shared>) {
    let Receiver {
        mut queue,
        spare: spare_lines,
    } = queue;
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = shared.lifecycle.aborted() => return,
            queued = queue.recv() => queued,
            _ = shared.lifecycle.ended() => None,
        };
        let Some(first) = first else {
            break;
        };
        // Everything queued by now, up to a batch, goes out in one write; no vector holds
        // the batch, so a connection keeps nothing of a busy spell but its write buffer.
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(queued) = next {
            buf.extend_from_slice(&queued.line);
            // Dropping the rest of `queued` returns its bytes to the budget: they are in `buf`.
            spare_lines.give_back(queued.line);
            taken += 1;
            if buf.len() >= WRITE_CHUNK && !flush(&mut write, &mut buf, &shared).await {
                return;
            }
            next = if taken < BATCH {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if !flush(&mut write, &mut buf, &shared).await {
            return;
        }
        give_back_if_grown(&mut buf);
    }
    // Ending: write what is queued, refuse the rest, then shut down the write side.
    queue.close();
    while let Ok(queued) = queue.try_recv() {
        buf.extend_from_slice(&queued.line);
    }
    if flush(&mut write, &mut buf, &shared).await {
        let _ = write.shutdown().await;
    }
}

/// Writes the buffer and flushes the stream (a no-op for sockets; TLS and buffered streams
/// need it); `false` after a failure, which tears the connection down.
async fn flush<W: AsyncWrite + Unpin>(write: &mut W, buf: &mut BytesMut, shared: &Shared) -> bool {
    if buf.is_empty() {
        return true;
    }
    let result = tokio::select! {
        biased;
        _ = shared.lifecycle.aborted() => return false,
        r = write_and_flush(write, buf) => r,
    };
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
            buf.clear();
            shared.lifecycle.abort();
            false
        }
    }
}

async fn write_and_flush<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    write.write_all_buf(buf).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_that_grew_beyond_keep_is_given_back() {
        let mut kept = BytesMut::with_capacity(KEEP);
        give_back_if_grown(&mut kept);
        assert_eq!(kept.capacity(), KEEP);
        let mut grown = BytesMut::with_capacity(KEEP + 1);
        give_back_if_grown(&mut grown);
        assert_eq!(grown.capacity(), 0);
    }

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

    /// Large frames queued together are written as the buffer fills, one write each, not
    /// gathered into one write: the writer's buffer holds about WRITE_CHUNK, not a batch.
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
        // Under WRITE_CHUNK gathered, then one frame (its line is LARGE and a few bytes).
        let most = writes.iter().max().copied().unwrap_or(0);
        assert!(
            most < WRITE_CHUNK + LARGE + 64,
            "a write of {most} bytes: {writes:?}"
        );
    }
}
