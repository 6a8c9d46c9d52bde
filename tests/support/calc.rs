//! The typed-service program of the "Typed services" issue, unchanged (from `use` to the
//! `impl`), and a helper that hands out its router: tests/service.rs runs it over a Unix
//! socket, a socket pair and a pool; tests/pool_worker.rs serves it in the pool's workers.
//! Included with `#[path]` (the program imports names only its client part uses).

use std::sync::{Arc, Mutex};

use diarrhoea::{Connection, PeerInfo, Router, UnixListener};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum DivError { ByZero }
impl std::fmt::Display for DivError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("division by zero") }
}

/// A calculator (this doc comment and the methods' reach the generated items).
#[diarrhoea::service]
pub trait Calc {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    #[rpc(notification)]
    async fn log(&self, line: String);
    #[rpc(name = "whoAmI")]
    async fn who_am_i(&self, #[context] peer: PeerInfo) -> Option<i32>;
}

#[derive(Clone, Default)]
struct MyCalc { lines: Arc<Mutex<Vec<String>>> }

impl Calc for MyCalc {
    async fn add(&self, a: i64, b: i64) -> i64 { a + b }
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 { Err(DivError::ByZero) } else { Ok(a / b) }
    }
    async fn log(&self, line: String) { self.lines.lock().unwrap().push(line) }
    async fn who_am_i(&self, peer: PeerInfo) -> Option<i32> { peer.credentials().and_then(|c| c.pid) }
}

/// `MyCalc::default().into_router()`, and the lines its `log` keeps.
pub fn my_calc() -> (Router, Arc<Mutex<Vec<String>>>) {
    let calc = MyCalc::default();
    let lines = calc.lines.clone();
    (calc.into_router(), lines)
}
