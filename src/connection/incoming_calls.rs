//! The peer's requests on this side, by id: to refuse a duplicate id, and to find a request
//! that the peer cancels.
//!
//! A request is answered exactly once, by whoever removes its entry: its task when it
//! finishes, a `$/cancel` (which also aborts the task), or an expired deadline.
//!
//! A request that asks for a stream (`meta.stream`) keeps its [`Credit`] here from the moment
//! it is read, so a `$/credit` that comes while it waits to start still counts.

use std::collections::hash_map::{Entry as Slot, HashMap, RandomState};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::credit::Credit;

#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<u64, Entry, PeerIds>>);

/// Hashes the peer's request ids with two rounds of folded multiply (the two halves of a
/// 128-bit product, xored) of the id and a random key per table, the way `foldhash`
/// (hashbrown's default) hashes integers: about a tenth of SipHash's cost. The ids are the peer's to choose, so the
/// key keeps a peer from aiming them at one bucket without learning it; and the table holds
/// only what the inbound buffer admits. The multipliers are fixed: a random one is sometimes
/// poor (few bits set), and then ids that differ in their high bits share buckets.
#[derive(Clone)]
struct PeerIds {
    key: u64,
}

/// Two odd multipliers with their bits spread (the golden ratio's and pi's): two rounds of
/// folded multiply, so consecutive ids spread over the buckets as random ones would, whatever
/// the key (one round leaves some keys filling only two thirds of them).
const MULTIPLIERS: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0x243f_6a88_85a3_08d3];

/// The 128-bit product's two halves, xored: the high one carries what the low bits of the
/// id alone cannot.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Default for PeerIds {
    fn default() -> Self {
        // std's random hashing keys, drawn once per table.
        PeerIds {
            key: RandomState::new().hash_one(0x243f_6a88_85a3_08d3_u64),
        }
    }
}

impl BuildHasher for PeerIds {
    type Hasher = PeerIdHasher;

    fn build_hasher(&self) -> PeerIdHasher {
        PeerIdHasher { state: self.key }
    }
}

struct PeerIdHasher {
    state: u64,
}

impl Hasher for PeerIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still hashes, byte by byte.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.state = fold(fold(self.state ^ id, MULTIPLIERS[0]), MULTIPLIERS[1]);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[derive(Default)]
struct Entry {
    /// Made only when a handler asks for it.
    token: Option<CancellationToken>,
    /// Set once the request runs in a task of its own.
    task: Option<AbortHandle>,
    /// The items the caller allows, for a request that asked for a stream.
    credit: Option<Arc<Credit>>,
    started: bool,
}

impl Entry {
    /// Stops the request's work: its task, its stream, and whatever watches its token.
    fn cancel(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(credit) = self.credit {
            credit.close();
        }
        if let Some(token) = self.token {
            token.cancel();
        }
    }
}

/// What a `$/credit` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Granted {
    /// Added to a stream's credit.
    Stream,
    /// A request in flight that asked for no stream: ignored.
    NotStream,
    /// No such request (unknown, finished, or not yet read): ignored.
    Unknown,
}

/// What a `$/cancel` found.
pub(crate) enum Cancelled {
    /// No such request (unknown, or already answered): ignored.
    Unknown,
    /// Queued, not started: removed; the canceller answers -32800.
    Queued,
    /// Running: removed and its task aborted; the canceller answers -32800.
    Running,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry, PeerIds>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request, with its initial credit if it asks for a stream; `false` if the
    /// id is already in flight.
    pub(crate) fn insert(&self, id: u64, stream: Option<u64>) -> bool {
        match self.lock().entry(id) {
            Slot::Occupied(_) => false,
            Slot::Vacant(slot) => {
                slot.insert(Entry {
                    credit: stream.map(|initial| Arc::new(Credit::new(initial))),
                    ..Entry::default()
                });
                true
            }
        }
    }

    /// The credit of a request that asked for a stream.
    pub(crate) fn credit(&self, id: u64) -> Option<Arc<Credit>> {
        self.lock().get(&id).and_then(|entry| entry.credit.clone())
    }

    /// Adds `n` to a stream's credit (`$/credit`).
    pub(crate) fn grant(&self, id: u64, n: u64) -> Granted {
        match self.lock().get(&id) {
            Some(Entry {
                credit: Some(credit),
                ..
            }) => {
                credit.grant(n);
                Granted::Stream
            }
            Some(_) => Granted::NotStream,
            None => Granted::Unknown,
        }
    }

    /// No more credit can come (the caller's side has ended): every stream ends once it has
    /// spent what it was granted.
    pub(crate) fn last_grants(&self) {
        for credit in self.lock().values().filter_map(|e| e.credit.as_ref()) {
            credit.last_grant();
        }
    }

    /// The request's cancellation token, made on first use; an already cancelled token for a
    /// request that is no longer in flight.
    pub(crate) fn token(&self, id: u64) -> CancellationToken {
        match self.lock().get_mut(&id) {
            Some(entry) => entry
                .token
                .get_or_insert_with(CancellationToken::new)
                .clone(),
            None => {
                let token = CancellationToken::new();
                token.cancel();
                token
            }
        }
    }

    /// Marks a request as running; `false` if it was answered while it waited.
    pub(crate) fn start(&self, id: u64) -> bool {
        self.lock().get_mut(&id).map(|e| e.started = true).is_some()
    }

    /// Remembers the task a request runs in, so a cancel can stop it; a request cancelled
    /// before its task was known has its task stopped now.
    pub(crate) fn set_task(&self, id: u64, task: AbortHandle) {
        match self.lock().get_mut(&id) {
            Some(entry) => entry.task = Some(task),
            None => task.abort(),
        }
    }

    /// Removes a request that has not started; `true` if the caller must now answer it.
    pub(crate) fn remove_unstarted(&self, id: u64) -> bool {
        let mut map = self.lock();
        match map.get(&id) {
            Some(e) if !e.started => {
                map.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Removes a request the peer cancelled and stops it; the caller answers -32800.
    pub(crate) fn cancel(&self, id: u64) -> Cancelled {
        let Some(entry) = self.lock().remove(&id) else {
            return Cancelled::Unknown;
        };
        let started = entry.started;
        entry.cancel();
        if started {
            Cancelled::Running
        } else {
            Cancelled::Queued
        }
    }

    /// Removes a finished request; `true` if it was still ours to answer (not cancelled).
    pub(crate) fn finish(&self, id: u64) -> bool {
        self.lock().remove(&id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn peer_ids_spread_over_the_buckets_whatever_bits_they_differ_in() {
        // Buckets are picked by the low bits: ids that differ only in their low bits, or only
        // in their high ones, still land apart, whatever the table's key. (256 ids in 1,024
        // buckets fill about 227 of them at random; 180 is far below what any key gives.)
        for _ in 0..100 {
            let ids = PeerIds::default();
            for ids_of in [|i: u64| i, |i: u64| i << 32, |i: u64| i << 53] {
                let buckets: HashSet<u64> =
                    (1..=256).map(|i| ids.hash_one(ids_of(i)) & 1023).collect();
                assert!(buckets.len() > 180, "{} of 256 buckets", buckets.len());
            }
        }
        let ids = PeerIds::default();
        // Each table has keys of its own.
        assert_ne!(ids.hash_one(7_u64), PeerIds::default().hash_one(7_u64));
        let bytes = |input: &[u8]| {
            let mut hasher = ids.build_hasher();
            hasher.write(input);
            hasher.finish()
        };
        assert_ne!(bytes(&[1, 2]), bytes(&[2, 1]));
    }

    #[test]
    fn an_id_is_in_flight_once() {
        let table = InFlight::default();
        assert!(table.insert(1, None));
        assert!(!table.insert(1, None));
        assert!(table.finish(1));
        assert!(!table.finish(1), "answered once");
        assert!(table.insert(1, None), "free again once answered");
    }

    #[test]
    fn only_a_request_that_has_not_started_is_removed_as_unstarted() {
        let table = InFlight::default();
        table.insert(1, None);
        table.insert(2, None);
        assert!(table.start(2));
        assert!(table.remove_unstarted(1));
        assert!(!table.remove_unstarted(2), "running: its task answers it");
        assert!(table.finish(2));
        assert!(!table.start(1), "removed: nothing left to start");
    }

    #[test]
    fn cancel_tells_queued_from_running_and_cancels_the_token() {
        let table = InFlight::default();
        table.insert(1, None);
        table.insert(2, None);
        table.start(2);
        let token = table.token(2);
        assert!(!token.is_cancelled());
        assert!(matches!(table.cancel(1), Cancelled::Queued));
        assert!(matches!(table.cancel(2), Cancelled::Running));
        assert!(token.is_cancelled());
        assert!(matches!(table.cancel(2), Cancelled::Unknown));
        assert!(!table.finish(2), "the cancel answered it");
        assert!(
            table.token(3).is_cancelled(),
            "not in flight: already cancelled"
        );
    }

    #[test]
    fn credit_goes_to_streams_in_flight_only_and_a_cancel_closes_it() {
        let table = InFlight::default();
        assert_eq!(table.grant(1, 5), Granted::Unknown, "before the request");
        table.insert(1, Some(2));
        table.insert(2, None);
        assert_eq!(table.grant(1, 5), Granted::Stream);
        assert_eq!(table.credit(1).unwrap().left(), 7);
        assert_eq!(table.grant(2, 5), Granted::NotStream);
        assert!(table.credit(2).is_none());
        let credit = table.credit(1).unwrap();
        table.cancel(1);
        let waker = std::task::Waker::noop();
        let available = std::pin::pin!(credit.available());
        assert!(matches!(
            std::future::Future::poll(available, &mut std::task::Context::from_waker(waker)),
            std::task::Poll::Ready(Err(_))
        ));
        assert_eq!(table.grant(1, 5), Granted::Unknown, "finished");
    }
}
