//! The loops that hold this process's share of the work: claiming due runs (leases) and
//! spawning a driver for each, renewing the leases held, and listening for other replicas'
//! changes and cancels (PostgreSQL NOTIFY).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use futures::FutureExt;
use uuid::Uuid;

use super::{Engine, lock};
use crate::store::{Lease, now_ms};

impl Engine {
    pub(super) async fn claim_loop(self: Arc<Self>) {
        loop {
            let in_flight = u32::try_from(lock(&self.local).len()).unwrap_or(u32::MAX);
            let room = self.opts.max_in_flight.saturating_sub(in_flight);
            if room > 0 && !self.shutdown.is_cancelled() {
                match self.store.claim(&self.owner, self.opts.lease, room).await {
                    Ok(leases) => {
                        for lease in leases {
                            self.spawn_driver(lease);
                        }
                    }
                    Err(error) => tracing::error!(%error, "claiming runs failed"),
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.work.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Feeds changes made by other replicas (PostgreSQL NOTIFY) to the long-polls waiting here.
    /// With SQLite there are none: the drivers' own announcements are every change.
    pub(super) async fn listen_loop(self: Arc<Self>) {
        let retry = Duration::from_secs(1);
        let mut listener = loop {
            match self.store.change_listener().await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "cannot listen for changes; retrying"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        };
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                next = listener.next() => match next {
                    Ok(Some(change)) => {
                        let _ = self.changes.send(change.action_id);
                        if change.cancel {
                            // Cancelled through another replica: stop the runs driven here.
                            self.stop_local_runs(change.action_id, StopReason::Cancelled);
                        }
                    }
                    // Reconnecting: notices sent meanwhile are lost, long-polls end on time.
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "listening for changes failed; retrying");
                        tokio::time::sleep(retry).await;
                    }
                },
            }
        }
    }

    /// Raises the stop signal of the runs of `action_id` this process drives.
    pub(super) fn stop_local_runs(&self, action_id: Uuid, reason: StopReason) {
        for run in lock(&self.local).values().filter(|r| r.action_id == action_id) {
            run.stop.stop(reason);
            run.wake.notify_one();
        }
    }

    pub(super) async fn renew_loop(self: Arc<Self>) {
        let every = self.opts.lease / 3;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.store.renew_leases(&self.owner, self.opts.lease).await {
                tracing::error!(%error, "renewing leases failed");
            }
        }
    }

    fn spawn_driver(self: &Arc<Self>, lease: Lease) {
        let engine = Arc::clone(self);
        let run_id = lease.run_id;
        lock(&self.tasks).spawn(async move {
            let driven = AssertUnwindSafe(Arc::clone(&engine).drive(lease.clone())).catch_unwind().await;
            let failed = match driven {
                Ok(Ok(())) => false,
                Ok(Err(error)) => {
                    tracing::error!(run_id = %run_id, %error, "run driver failed; it will be retried");
                    true
                }
                Err(_) => {
                    tracing::error!(run_id = %run_id, "run driver panicked; it will be retried");
                    true
                }
            };
            lock(&engine.local).remove(&run_id);
            if failed {
                // Hand the run back after a pause rather than spinning on a persistent fault.
                let _ = engine.store.release(&lease, now_ms() + 5_000).await;
            }
        });
    }
}
