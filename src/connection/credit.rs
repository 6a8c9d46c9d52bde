//! A stream's credit: how many more items the caller allows. The inbox adds to it when the
//! caller sends `["$/credit",[id,n]]`; the stream's pump spends one per item and waits while
//! none is left, so the producer is polled only while credit is left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Credit {
    left: AtomicU64,
    /// Set when the stream is cancelled: it sends nothing more.
    closed: AtomicBool,
    /// Set when the caller's side of the connection has ended: no more credit can come, and
    /// the stream ends once what was granted is spent.
    last_grant: AtomicBool,
    /// Wakes the pump (the one waiter): a wake-up given while it does not wait is kept.
    granted: Notify,
}

/// No more credit can come.
#[derive(Debug)]
pub(crate) struct Closed;

impl Credit {
    pub(crate) fn new(initial: u64) -> Self {
        Credit {
            left: AtomicU64::new(initial),
            ..Credit::default()
        }
    }

    /// Adds `n` items (saturating: a huge grant means "no limit").
    pub(crate) fn grant(&self, n: u64) {
        let _ = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_add(n))
            });
        self.granted.notify_one();
    }

    /// The stream is cancelled: it stops at once, credit left or not.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.granted.notify_one();
    }

    /// No more credit can come (the caller's side has ended): the stream ends once what was
    /// granted is spent.
    pub(crate) fn last_grant(&self) {
        self.last_grant.store(true, Ordering::Release);
        self.granted.notify_one();
    }

    /// Waits until some credit is left; `Err` once cancelled, or once it is spent after the
    /// last grant.
    pub(crate) async fn available(&self) -> Result<(), Closed> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            if self.left.load(Ordering::Acquire) > 0 {
                return Ok(());
            }
            if self.last_grant.load(Ordering::Acquire) {
                return Err(Closed);
            }
            self.granted.notified().await;
        }
    }

    /// Spends one item's credit, which [`Credit::available`] found.
    pub(crate) fn spend(&self) {
        self.left.fetch_sub(1, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_pump_waits_for_credit_and_a_grant_wakes_it() {
        let credit = std::sync::Arc::new(Credit::new(1));
        credit.available().await.unwrap();
        credit.spend();
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.available().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        credit.grant(2);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap());
        credit.grant(u64::MAX);
        assert_eq!(credit.left(), u64::MAX, "saturates");
        credit.close();
        assert!(credit.available().await.is_err(), "cancelled: at once");
        // After the last grant, what is left is still spent.
        let credit = Credit::new(1);
        credit.last_grant();
        credit.available().await.unwrap();
        credit.spend();
        assert!(credit.available().await.is_err());
    }
}
