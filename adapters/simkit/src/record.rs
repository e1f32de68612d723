//! What a simulator executed, and the admin routes that serve it.
//!
//! Tests in the simulator's process read [`SimLog`] directly; tests and benchmarks that run
//! the gateway (or a vendor SDK) as another process read the same record over HTTP:
//!
//! - `GET /_sim/log?since=SEQ&limit=N&op=NAME`: `{"entries": [...], "next": SEQ, "dropped": N}`,
//!   entries in execution order, each `{"seq", "at_ms", "op", "target", "detail"}`; `next` is
//!   the `since` of the following page, `dropped` how many old entries the cap evicted.
//! - `GET /_sim/counters`: `{"executed": {op: count}, "counters": {...}, "requests": {...}}`:
//!   exact counts per operation (never evicted), the simulator's own counters and, for a
//!   simulator with fault injection, the fault layer's [`FaultStats`](crate::FaultStats)
//!   (requests, side effects processed, faults injected).
//! - `GET`/`POST /_sim/faults`: the fault settings ([`crate::faults`]).
//!
//! The routes are outside every vendor's URL space and need no credential: simulators listen
//! on loopback for tests and the demo.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Entries kept by default: enough for every test and benchmark here (10,000 endpoints with a
/// few side effects each), bounded so a long demo cannot grow without limit. Counts per
/// operation stay exact beyond it.
pub const DEFAULT_CAP: usize = 200_000;

/// Most entries one `/_sim/log` page returns.
const PAGE_MAX: usize = 10_000;

/// One thing the simulated endpoint or server executed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// 1-based, in execution order.
    pub seq: u64,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
    /// What ran, in the vendor's words (`kill`, `RunScript`, `KILL_PROCESS`, `isolate`).
    pub op: String,
    /// Where: the sensor, machine or host it ran on.
    pub target: String,
    /// The operation's arguments and outcome, as the simulator saw them.
    pub detail: Value,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    cap: usize,
    next_seq: u64,
    dropped: u64,
    entries: VecDeque<Executed>,
    by_op: BTreeMap<String, u64>,
}

/// The simulator's record of executed side effects; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct SimLog {
    inner: Arc<Mutex<Inner>>,
}

impl Default for SimLog {
    fn default() -> Self {
        Self::with_cap(DEFAULT_CAP)
    }
}

impl SimLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record keeping at most `cap` entries (the oldest are evicted first).
    pub fn with_cap(cap: usize) -> Self {
        SimLog {
            inner: Arc::new(Mutex::new(Inner {
                started: Instant::now(),
                cap: cap.max(1),
                next_seq: 1,
                dropped: 0,
                entries: VecDeque::new(),
                by_op: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `op` ran on `target`.
    pub fn record(&self, op: &str, target: &str, detail: Value) {
        let mut inner = self.lock();
        let entry = Executed {
            seq: inner.next_seq,
            at_ms: u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            op: op.to_owned(),
            target: target.to_owned(),
            detail,
        };
        inner.next_seq += 1;
        *inner.by_op.entry(entry.op.clone()).or_default() += 1;
        if inner.entries.len() == inner.cap {
            inner.entries.pop_front();
            inner.dropped += 1;
        }
        inner.entries.push_back(entry);
    }

    /// How many times `op` ran (exact, whatever the cap evicted).
    pub fn count(&self, op: &str) -> u64 {
        self.lock().by_op.get(op).copied().unwrap_or(0)
    }

    /// How many times each operation ran.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.lock().by_op.clone()
    }

    /// Entries still kept, in execution order.
    pub fn entries(&self) -> Vec<Executed> {
        self.lock().entries.iter().cloned().collect()
    }

    /// Up to `limit` kept entries with `seq >= since`, optionally only of `op`; and the `since`
    /// of the next page.
    pub fn page(&self, since: u64, limit: usize, op: Option<&str>) -> (Vec<Executed>, u64) {
        let inner = self.lock();
        let mut next = since;
        let mut out = Vec::new();
        for e in inner.entries.iter().filter(|e| e.seq >= since) {
            if out.len() == limit {
                break;
            }
            next = e.seq + 1;
            if op.is_none_or(|op| e.op == op) {
                out.push(e.clone());
            }
        }
        (out, next)
    }

    fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
    op: Option<String>,
}

type Stats = Arc<dyn Fn() -> Option<Value> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    log: SimLog,
    counters: Arc<dyn Fn() -> Value + Send + Sync>,
    requests: Stats,
}

/// `GET /_sim/log` and `GET /_sim/counters` (see the module docs).
pub(crate) fn admin_router(
    log: SimLog,
    counters: impl Fn() -> Value + Send + Sync + 'static,
    requests: impl Fn() -> Option<Value> + Send + Sync + 'static,
) -> Router {
    let state = AdminState { log, counters: Arc::new(counters), requests: Arc::new(requests) };
    Router::new()
        .route("/_sim/log", get(log_page))
        .route("/_sim/counters", get(counters_doc))
        .with_state(state)
}

async fn log_page(State(s): State<AdminState>, Query(q): Query<LogQuery>) -> Json<Value> {
    let limit = q.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let (entries, next) = s.log.page(q.since, limit, q.op.as_deref());
    Json(json!({ "entries": entries, "next": next, "dropped": s.log.dropped() }))
}

async fn counters_doc(State(s): State<AdminState>) -> Json<Value> {
    let mut doc = json!({ "executed": s.log.counts(), "counters": (s.counters)() });
    if let Some(requests) = (s.requests)() {
        doc["requests"] = requests;
    }
    Json(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_pages_and_caps() {
        let log = SimLog::with_cap(3);
        for i in 0..5 {
            log.record(if i % 2 == 0 { "kill" } else { "get file" }, "WIN-0001", json!({ "i": i }));
        }
        assert_eq!(log.count("kill"), 3, "counts stay exact beyond the cap");
        assert_eq!(log.count("get file"), 2);
        let kept: Vec<u64> = log.entries().iter().map(|e| e.seq).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(log.dropped(), 2);
        let (page, next) = log.page(0, 2, None);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        let (page, next) = log.page(next, 2, None);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
        assert_eq!(next, 6);
        let (kills, _) = log.page(0, 10, Some("kill"));
        assert_eq!(kills.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 5]);
    }
}
