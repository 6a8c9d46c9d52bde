//! Retrying calls that failed because their worker went away: idempotent methods only, within
//! a budget.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;

use crate::error::Error;
use crate::request::Request;
use crate::response::Response;

/// A [`tower::retry::Policy`] that sends a call again, to whichever worker the balancer picks
/// next, when it failed with [`Error::is_closed`] (its worker died or its connection closed
/// before the reply) and its method was marked idempotent. Every other failure, and every
/// failure of a method not marked, is returned as it is.
///
/// Retries are paid from a [`TpsBudget`]: each call that ends deposits, each retry withdraws,
/// so a pool whose workers all fail does not multiply its load. The budget is approximate
/// under concurrency (tower's `TpsBudget` checks the balance and withdraws in two steps, so
/// two retries at the same instant may both take the last token). Every retry is counted
/// ([`PoolMetrics::retried`](super::PoolMetrics::retried)).
///
/// A [`PoolCaller`](super::PoolCaller) uses it already; use it directly to put `Retry` at
/// another place in a stack:
///
/// ```
/// use diarrhoea::pool::RetryIdempotent;
///
/// let policy = RetryIdempotent::new(["count_primes", "lookup"]);
/// assert!(policy.is_idempotent("lookup"));
/// assert!(!policy.is_idempotent("charge_card"));
/// ```
#[derive(Clone)]
pub struct RetryIdempotent {
    /// A few names, compared in turn: cheaper than hashing the method of every call.
    methods: Arc<[Box<str>]>,
    budget: Arc<TpsBudget>,
    retried: Arc<AtomicU64>,
}

impl RetryIdempotent {
    /// Retries `methods` within the default budget: 20% of the calls of the last 10 s, and
    /// at least 10 per second.
    pub fn new<I, M>(methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Box<str>>,
    {
        RetryIdempotent {
            methods: methods.into_iter().map(Into::into).collect(),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            retried: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Replaces the retry budget.
    pub fn with_budget(mut self, budget: TpsBudget) -> Self {
        self.budget = Arc::new(budget);
        self
    }

    /// Whether calls to `method` may be sent twice.
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.methods.iter().any(|m| **m == *method)
    }

    /// How many calls were sent again so far (by this policy and its clones).
    pub fn retried(&self) -> u64 {
        self.retried.load(Relaxed)
    }
}

impl fmt::Debug for RetryIdempotent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryIdempotent")
            .field("methods", &self.methods)
            .field("retried", &self.retried())
            .finish_non_exhaustive()
    }
}

impl Policy<Request, Response, Error> for RetryIdempotent {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request,
        result: &mut Result<Response, Error>,
    ) -> Option<Self::Future> {
        match result {
            Err(error) if error.is_closed() => {
                if self.budget.withdraw() {
                    self.retried.fetch_add(1, Relaxed);
                    tracing::debug!(%error, "retrying an idempotent call on another worker");
                    Some(std::future::ready(()))
                } else {
                    tracing::debug!(%error, "retry budget spent: not retrying");
                    None
                }
            }
            _ => {
                self.budget.deposit();
                None
            }
        }
    }

    /// Only idempotent calls are kept for a second try. The copy keeps the method, the
    /// arguments and the meta (its deadline); extensions stay with the first try.
    fn clone_request(&mut self, req: &Request) -> Option<Request> {
        if !self.is_idempotent(req.method()) {
            return None;
        }
        let mut copy = Request::from_parts(req.method_arc().clone(), req.args().clone());
        *copy.meta_mut() = req.meta().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Kind, RpcError};

    fn request(method: &str) -> Request {
        let mut req = Request::new(method, (1, "two")).expect("encodes");
        req.meta_mut().timeout_ms = Some(250);
        req
    }

    #[test]
    fn only_idempotent_methods_are_kept_for_a_second_try() {
        let mut policy = RetryIdempotent::new(["lookup"]);
        assert!(policy.clone_request(&request("charge")).is_none());
        let copy = policy.clone_request(&request("lookup")).expect("kept");
        assert_eq!(copy.method(), "lookup");
        assert_eq!(copy.args().get(), r#"[1,"two"]"#);
        assert_eq!(
            copy.meta().timeout_ms,
            Some(250),
            "the deadline goes with it"
        );
    }

    #[test]
    fn only_a_closed_connection_is_retried_and_every_retry_is_counted() {
        let mut policy = RetryIdempotent::new(["lookup"]);
        let mut req = request("lookup");
        let mut closed = Err(Error::closed());
        assert!(policy.retry(&mut req, &mut closed).is_some());
        assert_eq!(policy.retried(), 1);

        let mut remote = Err(Error::new(Kind::Remote(RpcError::internal("boom"))));
        assert!(policy.retry(&mut req, &mut remote).is_none());
        let mut timeout = Err(Error::new(Kind::Timeout));
        assert!(policy.retry(&mut req, &mut timeout).is_none());
        let mut ok = Ok(Response::null());
        assert!(policy.retry(&mut req, &mut ok).is_none());
        assert_eq!(policy.clone().retried(), 1, "clones share the count");
    }

    #[test]
    fn retries_stop_when_the_budget_is_spent() {
        // No reserve and no share of deposits: nothing to withdraw.
        let empty = TpsBudget::new(Duration::from_secs(1), 0, 0.0);
        let mut policy = RetryIdempotent::new(["lookup"]).with_budget(empty);
        let mut req = request("lookup");
        assert!(policy.retry(&mut req, &mut Err(Error::closed())).is_none());
        assert_eq!(policy.retried(), 0);

        // A reserve of one retry per second for a second.
        let one = TpsBudget::new(Duration::from_secs(1), 1, 0.0);
        let mut policy = RetryIdempotent::new(["lookup"]).with_budget(one);
        assert!(policy.retry(&mut req, &mut Err(Error::closed())).is_some());
        assert!(policy.retry(&mut req, &mut Err(Error::closed())).is_none());
        assert_eq!(policy.retried(), 1);
    }
}
