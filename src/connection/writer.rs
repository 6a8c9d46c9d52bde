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
}
