//! The loops that hold this process's share of the work: claiming due runs (leases) and
//! spawning a driver for each, renewing the leases held, and listening for other replicas'
//! changes and cancels (PostgreSQL NOTIFY).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::adapter::{StopReason, StopSignal};
use futures::FutureExt;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Engine, LocalRun, lock};
use crate::store::{Claim, Claimed, now_ms};

/// How often a claim also looks for due runs of keys no longer configured.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Engine {
    pub(super) async fn claim_loop(self: Arc<Self>) {
        loop {
            if !self.shutdown.is_cancelled() {
                // The actions just submitted here first, by id: a single isolate does not wait
                // for the claim's pass over a fan-out's queued runs (7 ms at 10,000 runs on
                // SQLite). The pass over every due run follows, for the rest.
                let fresh = std::mem::take(&mut *lock(&self.fresh));
                if !fresh.is_empty() {
                    self.claim(Some(&fresh)).await;
                }
                self.claim(None).await;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.work.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Claims what the room in flight and the per-key caps allow, of `actions` or of every
    /// due run, and spawns a driver for each run claimed.
    async fn claim(self: &Arc<Self>, actions: Option<&[Uuid]>) {
        let live = self.live_runs();
        let in_flight = u32::try_from(live.len()).unwrap_or(u32::MAX);
        let room = self.opts.max_in_flight.saturating_sub(in_flight);
        if room == 0 {
            return;
        }
        let per_key = self.opts.max_in_flight_per_backend();
        let keys = self.claim_keys(per_key);
        let sweep = actions.is_none() && self.sweep_due();
        let claim = Claim {
            owner: &self.owner,
            lease: self.opts.lease,
            limit: room,
            per_key,
            live: &live,
            keys: &keys,
            sweep,
            actions,
        };
        match self.store.claim_runs(&claim).await {
            Ok(claimed) => {
                for run in claimed {
                    self.spawn_driver(run);
                }
            }
            Err(error) => tracing::error!(%error, "claiming runs failed"),
        }
    }

    /// Whether this claim also looks at the keys nobody named: every `SWEEP_EVERY`.
    fn sweep_due(&self) -> bool {
        let mut last = lock(&self.last_sweep);
        let due = last.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// The runs live drivers hold here: the only ones whose leases are renewed.
    fn live_runs(&self) -> Vec<Uuid> {
        lock(&self.local).keys().copied().collect()
    }

    /// The (tenant, backend) keys to claim for, with their caps: every configured backend,
    /// and each tenant's runs not resolved to a backend yet (`""`). A backend whose runs each
    /// hold a vendor session for their life takes no more runs than it has sessions (the rest
    /// stay rows in the store, costing no driver task), and one whose held budget (sessions,
    /// slots) already has runs of this process waiting (sessions shared with another backend
    /// or replica) takes none: a run claimed for it now would only wait in memory, holding a
    /// place in flight another backend's run could use. Runs waiting for a call rate do not
    /// stop claims: the rate would otherwise go unused while the pipeline behind it drains.
    fn claim_keys(&self, per_key: u32) -> Vec<(String, String, u32)> {
        let backends = self.backends();
        let mut keys: Vec<(String, String, u32)> = backends
            .all()
            .map(|(tenant, backend, adapter)| {
                let cap = if adapter.budgets().iter().any(|b| b.held && b.waiting > 0) {
                    0
                } else {
                    adapter
                        .runs_at_once()
                        .map_or(per_key, |n| u32::try_from(n).unwrap_or(u32::MAX).min(per_key))
                };
                (tenant.clone(), backend.clone(), cap)
            })
            .collect();
        let mut tenants: Vec<String> = keys.iter().map(|(t, _, _)| t.clone()).collect();
        tenants.sort();
        tenants.dedup();
        keys.extend(tenants.into_iter().map(|t| (t, String::new(), per_key)));
        keys
    }

    /// Feeds changes made by other replicas (PostgreSQL NOTIFY) to the long-polls waiting here
    /// and to the cache of answers. With SQLite there are none: the drivers' own announcements
    /// are every change. While not listening (before the first connection, and from a lost
    /// connection to the next `LISTEN`) another replica's change could go unnoticed: the cache
    /// of answers is uncertain then and checks every entry against the store.
    pub(super) async fn listen_loop(self: Arc<Self>) {
        let retry = Duration::from_secs(1);
        loop {
            self.snapshots.uncertain();
            let mut listener = loop {
                match self.store.change_listener().await {
                    Ok(Some(listener)) => break listener,
                    Ok(None) => {
                        self.snapshots.certain();
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot listen for changes; retrying"),
                }
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
            };
            // Listening: every change committed from now on is announced.
            self.snapshots.certain();
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
                        // The connection was lost: notices sent meanwhile are lost (long-polls
                        // end on time). Listen again on a new one.
                        Ok(None) => {
                            tracing::warn!("the change listener lost its connection; listening again");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "listening for changes failed; retrying");
                            self.snapshots.uncertain();
                            tokio::time::sleep(retry).await;
                            break;
                        }
                    },
                }
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
            // Only what a live driver holds: a lease left behind by a driver that failed (and
            // whose release failed too, say in a database outage) expires and is claimed again.
            let live = self.live_runs();
            if let Err(error) = self.store.renew_leases(&self.owner, &live, self.opts.lease).await {
                tracing::error!(%error, "renewing leases failed");
            }
        }
    }

    fn spawn_driver(self: &Arc<Self>, claimed: Claimed) {
        let engine = Arc::clone(self);
        let lease = claimed.lease;
        let run_id = lease.run_id;
        let stop = StopSignal::new();
        let wake = Arc::new(Notify::new());
        // Counted in flight and renewed from now on, before the task first runs.
        lock(&self.local).insert(
            run_id,
            LocalRun { action_id: claimed.action_id, stop: stop.clone(), wake: Arc::clone(&wake) },
        );
        lock(&self.tasks).spawn(async move {
            let drive = Arc::clone(&engine).drive(lease.clone(), stop, wake);
            let driven = AssertUnwindSafe(drive).catch_unwind().await;
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
            // A place in flight is free: runs waiting in the store need not wait for the tick.
            engine.work.notify_one();
            if failed {
                // Hand the run back after a pause rather than spinning on a persistent fault.
                // If this fails too, the lease (no longer renewed) expires and the run is
                // claimed again.
                if let Err(error) = engine.store.release(&lease, now_ms() + 5_000).await {
                    tracing::warn!(run_id = %run_id, %error, "cannot hand the run back; its lease will expire");
                }
            }
        });
    }
}
