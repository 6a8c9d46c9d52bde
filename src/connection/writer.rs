//! The writer: the one task that writes to the socket. It takes every queued frame at once and
//! writes them with one system call where it can.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::outbox::Queued;
use super::Shared;
use crate::error::Error;

/// Frames taken from the queue per batch.
const BATCH: usize = 256;
/// Bytes gathered before a write; larger batches are written as they fill.
const WRITE_CHUNK: usize = 64 * 1024;
/// A buffer that grew beyond this is given back after its write, so a connection that was
/// busy once does not keep the memory (1,000 connections x a large buffer adds up).
const KEEP: usize = 16 * 1024;

pub(super) async fn run(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            n = queue.recv_many(&mut batch, BATCH) => n,
            _ = shared.ending.cancelled() => 0,
        };
        if got == 0 {
            break;
        }
        for queued in batch.drain(..) {
            // Dropping `queued` returns its bytes to the budget: they are in `buf` now.
            buf.extend_from_slice(&queued.line);
            if buf.len() >= WRITE_CHUNK && !flush(&mut write, &mut buf, &shared).await {
                return;
            }
        }
        if !flush(&mut write, &mut buf, &shared).await {
            return;
        }
        if buf.capacity() > KEEP {
            buf = BytesMut::new();
        }
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

/// Writes the buffer; `false` after a failure, which tears the connection down.
async fn flush(write: &mut OwnedWriteHalf, buf: &mut BytesMut, shared: &Shared) -> bool {
    if buf.is_empty() {
        return true;
    }
    let result = tokio::select! {
        biased;
        _ = shared.abort.cancelled() => return false,
        r = write.write_all_buf(buf) => r,
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
                tracing::debug!(connection = shared.id, error = %e, "diarrhoea: peer went away");
            }
            buf.clear();
            shared.abort.cancel();
            false
        }
    }
}
