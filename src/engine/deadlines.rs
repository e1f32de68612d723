//! One timer for the deadlines of every run driven here, not a task per driver: the runs'
//! deadlines ordered in a set, and one loop that sleeps until the earliest and stops the runs
//! it reaches (they see the stop at their next step, or wake from their wait for it).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Engine, lock};
use crate::store::now_ms;

#[derive(Default)]
pub(super) struct Deadlines {
    /// (deadline in ms since the epoch, run): the earliest first.
    due: Mutex<BTreeSet<(i64, Uuid)>>,
    /// Signalled when a deadline earlier than every other is added: the loop sleeps less.
    earlier: Notify,
}

impl Deadlines {
    pub(super) fn watch(&self, run: Uuid, at: i64) {
        let mut due = lock(&self.due);
        let earliest = due.first().is_none_or(|(first, _)| at < *first);
        due.insert((at, run));
        drop(due);
        if earliest {
            // A permit is kept when the loop is not waiting yet: it then looks again at once.
            self.earlier.notify_one();
        }
    }

    pub(super) fn unwatch(&self, run: Uuid, at: i64) {
        lock(&self.due).remove(&(at, run));
    }

    /// Removes and returns the runs whose deadline is at or before `now`, and the next
    /// deadline after them.
    fn take_due(&self, now: i64) -> (Vec<Uuid>, Option<i64>) {
        let mut due = lock(&self.due);
        let later = due.split_off(&(now.saturating_add(1), Uuid::nil()));
        let reached = std::mem::replace(&mut *due, later);
        (reached.into_iter().map(|(_, run)| run).collect(), due.first().map(|(at, _)| *at))
    }
}

impl Engine {
    pub(super) async fn deadline_loop(self: Arc<Self>) {
        loop {
            let now = now_ms();
            let (reached, next) = self.deadlines.take_due(now);
            if !reached.is_empty() {
                let local = lock(&self.local);
                for run in reached.iter().filter_map(|id| local.get(id)) {
                    run.stop.stop(StopReason::DeadlineExceeded);
                    run.wake.notify_one();
                }
            }
            // Nothing due: wake now and then all the same, as a timer would not drift far.
            let wait = next.map_or(60_000, |at| at.saturating_sub(now).clamp(1, 60_000));
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.deadlines.earlier.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())) => {}
            }
        }
    }
}
