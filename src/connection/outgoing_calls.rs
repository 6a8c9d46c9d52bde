//! The pending table: this side's calls waiting for their replies, keyed by id.
//!
//! Each entry is its call's slot, so a call needs no channel of its own: the reader stores the
//! reply there and wakes the caller, whose future takes it. A caller that drops its future
//! removes its entry, answered or not (see `CallGuard`); a connection that ends fails every
//! waiter with a closed error, so nothing waits forever.
//!
//! A stream call's slot holds its items as they come (`$/item`), never more than the credit
//! this side has granted, then its end, the ordinary reply.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::args::Args;
use crate::error::{Error, RpcError};
use crate::response::Response;

#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
    /// `Inner::closed`, readable without the lock: callers check it before every call.
    closed: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Every call started and not yet let go of by its future.
    calls: HashMap<u64, Slot, OwnIds>,
    /// Calls given up on (dropped, timed out) whose reply may still be on its way: such a
    /// reply is expected, not a peer's mistake. Bounded, oldest forgotten first.
    forgotten: HashSet<u64, OwnIds>,
    forgotten_order: VecDeque<u64>,
    /// Set once the reader has stopped: no reply can arrive any more.
    closed: bool,
}

/// One call's state, from its start until its future takes the reply or is dropped.
///
/// Wakers and replies taken out of the table are dropped after the lock is released: dropping
/// a waker runs the executor's code, which may drop a task and with it another call's future,
/// whose guard locks this table.
enum Slot {
    /// No reply yet; the waker of the task that last polled the call's future, if any has.
    Waiting(Option<Waker>),
    /// The reply, or the closed error. The error is boxed because every entry is as large as
    /// its largest state: 48 bytes instead of 104 (an `Error`), for the rare error reply's
    /// allocation.
    Done(Result<Response, Box<Error>>),
    /// A stream call. Boxed: most calls do not stream, and every entry is as large as its
    /// largest state.
    Stream(Box<StreamSlot>),
}

/// A stream call's items, from the reader to the stream's consumer.
#[derive(Default)]
struct StreamSlot {
    /// Items come and not yet taken, as they arrived (`[id,item]`, still in their line).
    items: VecDeque<Args>,
    /// The ending reply, once it came (or the closed error); the items before it are still
    /// taken first.
    end: Option<Result<Response, Box<Error>>>,
    waker: Option<Waker>,
    /// How many more items the peer may send: the credit granted, less the items come.
    allowed: u64,
}

impl Slot {
    /// Whether the call still expects something from the peer.
    fn is_waiting(&self) -> bool {
        match self {
            Slot::Waiting(_) => true,
            Slot::Done(_) => false,
            Slot::Stream(stream) => stream.end.is_none(),
        }
    }
}

/// What became of a stream's item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ItemDelivery {
    /// Kept for the stream's consumer.
    Delivered,
    /// Its stream was given up on: dropped quietly.
    Late,
    /// No call of this side is waiting under that id: dropped.
    Unknown,
    /// The call under that id asked for no stream: dropped.
    NotStream,
    /// More items than the credit granted: the stream now ends with an error, and the
    /// caller of this tells the peer with `$/cancel`.
    Overrun,
}

/// What a stream's consumer finds next.
pub(crate) enum StreamEvent {
    /// An item, `[id,item]`.
    Item(Args),
    /// The end: the trailer, or the error the stream ends with. The entry is gone.
    End(Result<Response, Error>),
}

/// Hashes this side's own call ids. They count up from 1 and only this side adds them (a
/// peer's reply ids are only looked up), so no peer can flood a bucket: one multiplication
/// (Fibonacci hashing) spreads them over the table instead of a keyed SipHash.
type OwnIds = BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still hashes, byte by byte.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many given-up call ids are remembered.
const FORGOTTEN: usize = 4096;

/// What became of a reply.
pub(crate) enum Delivery {
    /// A caller was waiting for it.
    Delivered,
    /// Its caller had given up: dropped quietly.
    Late,
    /// No call of this side is waiting under that id.
    Unknown,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call; fails if the connection can no longer receive replies.
    pub(crate) fn insert(&self, id: u64) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::closed());
        }
        inner.calls.insert(id, Slot::Waiting(None));
        Ok(())
    }

    /// Stores a reply in its call's slot and wakes the caller.
    pub(crate) fn complete(&self, id: u64, result: Result<Response, Error>) -> Delivery {
        let mut guard = self.lock();
        let inner = &mut *guard;
        match inner.calls.get_mut(&id) {
            Some(slot) if matches!(slot, Slot::Waiting(_)) => {
                let waiting = std::mem::replace(slot, Slot::Done(result.map_err(Box::new)));
                drop(guard);
                if let Slot::Waiting(Some(waker)) = waiting {
                    waker.wake();
                }
                Delivery::Delivered
            }
            Some(Slot::Stream(stream)) if stream.end.is_none() => {
                stream.end = Some(result.map_err(Box::new));
                let waker = stream.waker.take();
                drop(guard);
                if let Some(waker) = waker {
                    waker.wake();
                }
                Delivery::Delivered
            }
            // A second reply to a call whose first is not yet taken: the first stands.
            Some(_) => Delivery::Unknown,
            None if inner.forgotten.remove(&id) => Delivery::Late,
            None => Delivery::Unknown,
        }
    }

    /// Registers a stream call that grants `credit` items at first; fails if the connection
    /// can no longer receive replies.
    pub(crate) fn insert_stream(&self, id: u64, credit: u64) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::closed());
        }
        let slot = StreamSlot {
            allowed: credit,
            ..StreamSlot::default()
        };
        inner.calls.insert(id, Slot::Stream(Box::new(slot)));
        Ok(())
    }

    /// Keeps an item (`args`, `[id,item]`) for its stream and wakes the consumer.
    pub(crate) fn item(&self, id: u64, args: Args) -> ItemDelivery {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let stream = match inner.calls.get_mut(&id) {
            Some(Slot::Stream(stream)) if stream.end.is_none() => stream,
            // An item after the stream's end is the peer's mistake, as one to a plain call.
            Some(_) => return ItemDelivery::NotStream,
            // Items keep coming until the peer reads the `$/cancel`: expected, not counted.
            None if inner.forgotten.contains(&id) => return ItemDelivery::Late,
            None => return ItemDelivery::Unknown,
        };
        let delivery = if stream.allowed == 0 {
            stream.items.clear();
            let overrun = RpcError::invalid_frame(format!(
                "stream {id}: the peer sent more items than the credit granted"
            ));
            stream.end = Some(Err(Box::new(Error::protocol(overrun))));
            ItemDelivery::Overrun
        } else {
            stream.allowed -= 1;
            stream.items.push_back(args);
            ItemDelivery::Delivered
        };
        let waker = stream.waker.take();
        drop(guard);
        if let Some(waker) = waker {
            waker.wake();
        }
        delivery
    }

    /// Counts credit this side grants a stream, before it tells the peer.
    pub(crate) fn grant(&self, id: u64, n: u64) {
        if let Some(Slot::Stream(stream)) = self.lock().calls.get_mut(&id) {
            stream.allowed = stream.allowed.saturating_add(n);
        }
    }

    /// The stream's next item, or its end once the items before it are taken (removing the
    /// entry); until then, wakes `cx` when one comes.
    pub(crate) fn poll_stream(&self, id: u64, cx: &mut Context<'_>) -> Poll<StreamEvent> {
        let mut inner = self.lock();
        let Some(Slot::Stream(stream)) = inner.calls.get_mut(&id) else {
            // Only the stream's own consumer removes its entry: a poll after its end.
            return Poll::Ready(StreamEvent::End(Err(Error::closed())));
        };
        if let Some(item) = stream.items.pop_front() {
            return Poll::Ready(StreamEvent::Item(item));
        }
        if stream.end.is_none() {
            if stream
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            let old = stream.waker.replace(cx.waker().clone());
            drop(inner);
            drop(old);
            return Poll::Pending;
        }
        let Some(Slot::Stream(stream)) = inner.calls.remove(&id) else {
            unreachable!("a stream slot was just found under this id");
        };
        drop(inner);
        let end = stream.end.expect("the end was just found");
        Poll::Ready(StreamEvent::End(end.map_err(|e| *e)))
    }

    /// The reply, once it is there; until then, wakes `cx` when it comes. Removes the entry
    /// when it hands the reply out.
    pub(crate) fn poll_reply(
        &self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response, Error>> {
        let mut inner = self.lock();
        if let Some(Slot::Waiting(waker)) = inner.calls.get_mut(&id) {
            // The same task polls again and again: its waker is cloned once.
            if waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            let old = waker.replace(cx.waker().clone());
            drop(inner);
            drop(old);
            return Poll::Pending;
        }
        match inner.calls.remove(&id) {
            Some(Slot::Done(result)) => Poll::Ready(result.map_err(|e| *e)),
            // Only the call's own future removes its entry: a poll after it took the reply.
            _ => Poll::Ready(Err(Error::closed())),
        }
    }

    /// Removes a call whose frame was never sent: no reply can come for it.
    pub(crate) fn remove(&self, id: u64) {
        // The lock is released at the end of the statement, before the slot is dropped.
        let _slot = self.lock().calls.remove(&id);
    }

    /// Gives up on a call; `true` if it was still waiting. An answered call's entry goes too,
    /// with its reply: it expects nothing more.
    pub(crate) fn forget(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let slot = inner.calls.remove(&id);
        let waiting = slot.as_ref().is_some_and(Slot::is_waiting);
        if waiting {
            if inner.forgotten_order.len() == FORGOTTEN {
                if let Some(oldest) = inner.forgotten_order.pop_front() {
                    inner.forgotten.remove(&oldest);
                }
            }
            inner.forgotten.insert(id);
            inner.forgotten_order.push_back(id);
        }
        drop(inner);
        drop(slot);
        waiting
    }

    /// Fails every waiting call and refuses new ones.
    pub(crate) fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = true;
            self.closed.store(true, Ordering::Release);
            inner
                .calls
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Waiting(waker) => {
                        let waker = waker.take();
                        *slot = Slot::Done(Err(Box::new(Error::closed())));
                        waker
                    }
                    Slot::Stream(stream) if stream.end.is_none() => {
                        stream.end = Some(Err(Box::new(Error::closed())));
                        stream.waker.take()
                    }
                    Slot::Done(_) | Slot::Stream(_) => None,
                })
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether no reply can arrive any more (the reader has stopped).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many calls are waiting (answered ones not yet taken are not). Walks the table: it
    /// is for diagnostics.
    pub(crate) fn len(&self) -> usize {
        self.lock()
            .calls
            .values()
            .filter(|slot| slot.is_waiting())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    #[test]
    fn own_ids_hash_apart_and_other_input_still_hashes() {
        use std::hash::BuildHasher;
        let hashes: HashSet<u64> = (1..=1000u64)
            .map(|id| OwnIds::default().hash_one(id))
            .collect();
        assert_eq!(hashes.len(), 1000);
        let bytes = |input: &[u8]| {
            let mut hasher = IdHasher::default();
            hasher.write(input);
            hasher.finish()
        };
        assert_ne!(bytes(&[1, 2]), bytes(&[2, 1]));
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn poll(pending: &Pending, id: u64, wakes: &Arc<Wakes>) -> Poll<Result<Response, Error>> {
        let waker = Waker::from(wakes.clone());
        pending.poll_reply(id, &mut Context::from_waker(&waker))
    }

    /// Entries in the table, waiting or not.
    fn entries(pending: &Pending) -> usize {
        pending.lock().calls.len()
    }

    #[test]
    fn replies_reach_their_caller_once() {
        let pending = Pending::default();
        let wakes = Arc::new(Wakes::default());
        pending.insert(1).unwrap();
        assert!(poll(&pending, 1, &wakes).is_pending());
        assert_eq!(pending.len(), 1);
        // The reply comes between two polls: it waits in the slot, and the caller is woken.
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Delivered
        ));
        assert_eq!(wakes.count(), 1);
        assert_eq!(pending.len(), 0, "answered is not waiting");
        assert_eq!(entries(&pending), 1, "until the caller takes it");
        match poll(&pending, 1, &wakes) {
            Poll::Ready(reply) => assert_eq!(reply.unwrap(), Response::null()),
            Poll::Pending => panic!("the reply is there"),
        }
        assert_eq!(entries(&pending), 0);
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
        assert!(!pending.forget(1));
    }

    #[test]
    fn a_reply_before_the_first_poll_is_taken_by_it() {
        let pending = Pending::default();
        let wakes = Arc::new(Wakes::default());
        pending.insert(1).unwrap();
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Delivered
        ));
        assert!(matches!(poll(&pending, 1, &wakes), Poll::Ready(Ok(_))));
        assert_eq!(wakes.count(), 0);
        assert_eq!(entries(&pending), 0);
    }

    #[test]
    fn the_last_task_to_poll_is_the_one_woken() {
        let pending = Pending::default();
        let (first, second) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
        pending.insert(1).unwrap();
        assert!(poll(&pending, 1, &first).is_pending());
        assert!(poll(&pending, 1, &first).is_pending());
        assert!(poll(&pending, 1, &second).is_pending());
        pending.complete(1, Ok(Response::null()));
        assert_eq!((first.count(), second.count()), (0, 1));
    }

    #[test]
    fn a_second_reply_to_an_answered_call_is_unknown_and_changes_nothing() {
        let pending = Pending::default();
        let wakes = Arc::new(Wakes::default());
        pending.insert(1).unwrap();
        pending.complete(1, Ok(Response::null()));
        let other = Err(Error::closed());
        assert!(matches!(pending.complete(1, other), Delivery::Unknown));
        assert!(matches!(poll(&pending, 1, &wakes), Poll::Ready(Ok(_))));
    }

    #[test]
    fn an_answered_call_dropped_before_it_takes_its_reply_leaves_nothing() {
        let pending = Pending::default();
        pending.insert(1).unwrap();
        pending.complete(1, Ok(Response::null()));
        // Not waiting: nothing to cancel at the peer, no late reply to expect.
        assert!(!pending.forget(1));
        assert_eq!(entries(&pending), 0);
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn a_reply_after_the_call_is_forgotten_is_late_once() {
        let pending = Pending::default();
        let wakes = Arc::new(Wakes::default());
        pending.insert(1).unwrap();
        assert!(poll(&pending, 1, &wakes).is_pending());
        assert!(pending.forget(1));
        assert_eq!(entries(&pending), 0);
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Late
        ));
        assert_eq!(wakes.count(), 0);
        assert_eq!(entries(&pending), 0, "a late reply is not stored");
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn an_unsent_call_is_removed_without_being_remembered() {
        let pending = Pending::default();
        pending.insert(1).unwrap();
        pending.remove(1);
        assert_eq!(entries(&pending), 0);
        assert!(!pending.forget(1));
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn every_call_given_up_on_is_remembered_up_to_the_bound() {
        let pending = Pending::default();
        let ids = 1..=(FORGOTTEN as u64 + 1);
        for id in ids.clone() {
            pending.insert(id).unwrap();
            assert!(pending.forget(id));
            assert!(!pending.forget(id), "forgotten once");
        }
        // The oldest is dropped from memory first; every other late reply is expected.
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
        for id in 2..=(FORGOTTEN as u64 + 1) {
            assert!(
                matches!(pending.complete(id, Ok(Response::null())), Delivery::Late),
                "id {id}"
            );
        }
        // A late reply is expected once.
        assert!(matches!(
            pending.complete(2, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    fn poll_stream(pending: &Pending, id: u64) -> Poll<StreamEvent> {
        let waker = std::task::Waker::noop();
        pending.poll_stream(id, &mut Context::from_waker(waker))
    }

    #[test]
    fn a_stream_gets_its_items_within_its_credit_then_its_end() {
        let pending = Pending::default();
        pending.insert_stream(1, 2).unwrap();
        let item = |n: u32| Args::new(&(1, n)).unwrap();
        assert!(poll_stream(&pending, 1).is_pending());
        assert_eq!(pending.item(1, item(0)), ItemDelivery::Delivered);
        assert_eq!(pending.item(1, item(1)), ItemDelivery::Delivered);
        pending.grant(1, 1);
        assert_eq!(pending.item(1, item(2)), ItemDelivery::Delivered);
        assert_eq!(pending.len(), 1, "a stream without its end waits");
        pending.complete(1, Ok(Response::new(&3).unwrap()));
        assert_eq!(
            pending.item(1, item(9)),
            ItemDelivery::NotStream,
            "after the end"
        );
        for n in 0..3 {
            match poll_stream(&pending, 1) {
                Poll::Ready(StreamEvent::Item(args)) => assert_eq!(args, item(n)),
                _ => panic!("item {n} first"),
            }
        }
        match poll_stream(&pending, 1) {
            Poll::Ready(StreamEvent::End(Ok(trailer))) => assert_eq!(trailer.get(), "3"),
            _ => panic!("then the end"),
        }
        assert_eq!(entries(&pending), 0);
        assert_eq!(pending.item(1, item(0)), ItemDelivery::Unknown);
    }

    #[test]
    fn an_item_beyond_the_credit_ends_the_stream_and_dropped_streams_take_late_items() {
        let pending = Pending::default();
        pending.insert_stream(1, 1).unwrap();
        let item = Args::new(&(1, 0)).unwrap();
        assert_eq!(pending.item(1, item.clone()), ItemDelivery::Delivered);
        assert_eq!(pending.item(1, item.clone()), ItemDelivery::Overrun);
        match poll_stream(&pending, 1) {
            Poll::Ready(StreamEvent::End(Err(e))) => assert!(e.is_protocol(), "{e}"),
            _ => panic!("the overrun ends it, and its items go"),
        }
        pending.insert_stream(2, 8).unwrap();
        assert!(pending.forget(2), "a stream without its end is cancelled");
        assert_eq!(pending.item(2, item.clone()), ItemDelivery::Late);
        assert_eq!(pending.item(2, item.clone()), ItemDelivery::Late);
        assert!(matches!(
            pending.complete(2, Err(Error::closed())),
            Delivery::Late
        ));
        pending.insert(3).unwrap();
        assert_eq!(pending.item(3, item), ItemDelivery::NotStream);
        pending.insert_stream(4, 8).unwrap();
        pending.close();
        assert!(matches!(
            poll_stream(&pending, 4),
            Poll::Ready(StreamEvent::End(Err(e))) if e.is_closed()
        ));
    }

    #[test]
    fn closing_fails_every_waiter_and_refuses_new_calls() {
        let pending = Pending::default();
        let wakes = Arc::new(Wakes::default());
        pending.insert(7).unwrap();
        assert!(poll(&pending, 7, &wakes).is_pending());
        // Never polled: failed all the same, for its first poll.
        pending.insert(9).unwrap();
        // Answered before the end: keeps its reply.
        pending.insert(10).unwrap();
        pending.complete(10, Ok(Response::null()));
        pending.close();
        assert!(pending.is_closed());
        assert_eq!(wakes.count(), 1, "the waiter is woken");
        assert_eq!(pending.len(), 0);
        assert!(pending.insert(8).unwrap_err().is_closed());
        for id in [7, 9] {
            match poll(&pending, id, &wakes) {
                Poll::Ready(reply) => assert!(reply.unwrap_err().is_closed(), "id {id}"),
                Poll::Pending => panic!("id {id} waits after the end"),
            }
        }
        assert!(matches!(poll(&pending, 10, &wakes), Poll::Ready(Ok(_))));
        assert_eq!(entries(&pending), 0);
    }
}
