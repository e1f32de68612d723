//! Session slots, live-response sessions, and what a run keeps in memory between steps.

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{CommandUpdate, ErrorInfo, RunContext, SharedSlot, SlotGuard, Status};
use uuid::Uuid;

use super::fetch::FetchWriter;
use super::reconcile::outcome_unknown;
use super::{
    CarbonBlackAdapter, Checkpoint, InfoExt as _, Phase, SessionState, now, phase_mismatch,
};
use crate::mapping::{self, CbError};
use crate::wire;

/// Per-run memory (slot, file writer) of runs whose steps stopped coming (engine gave up,
/// lease moved) is dropped after this long, so a lost run cannot pin a slot forever.
const STALE_RUN: Duration = Duration::from_secs(15 * 60);

/// What a run keeps in memory between steps (see the module doc).
pub(super) struct RunMemory {
    slot: Option<SlotGuard>,
    /// The run's slot in the replicas' shared budget, held with `slot`.
    shared_slot: Option<SharedSlot>,
    fetch: Option<FetchWriter>,
    touched: Instant,
}

pub(super) enum SessionReady {
    Active(u64),
    Wait(Duration),
    /// The stop signal fired while waiting for the slot.
    Stopped,
    Offline,
}

impl CarbonBlackAdapter {
    /// Takes the slot, then finds, opens or waits for the sensor's session.
    pub(super) async fn ensure_session(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<SessionReady, CbError> {
        if !self.holds_slot(ctx.run_id) {
            let key = cp.sensor_id.to_string();
            let action = ctx.action_id.to_string();
            let guard = tokio::select! {
                guard = self.slots.acquire(&key, ctx.tenant, &action) => guard,
                _ = ctx.stop.stopped() => {
                    return Ok(SessionReady::Stopped);
                }
            };
            self.keep_slot(ctx.run_id, guard, None);
        }
        // This process's fair share is granted; with other replicas, the server's slots must
        // also be free among them all (§10: the limit is the server's). A held key stays with
        // its run, so a run taken over from a dead replica gets its slot back at once. While the
        // replicas' budget is full the run keeps its local slot and asks again: the runs waiting
        // behind it here could not use the slot either, and they wait without stepping.
        if let Some(budget) = self.shared.get().filter(|b| b.is_shared())
            && !self.holds_shared_slot(ctx.run_id)
        {
            let holder = ctx.run_id.to_string();
            let key = cp.sensor_id.to_string();
            let taken = edrgate_adapter::shared::acquire_slot(
                budget,
                &self.scope,
                self.cfg.slot_limit,
                &key,
                &holder,
            )
            .await?;
            match taken {
                Some(slot) => self.keep_shared_slot(ctx.run_id, slot),
                None => {
                    let wait = self.cfg.poll_min().max(Duration::from_millis(500));
                    return Ok(SessionReady::Wait(wait));
                }
            }
        }
        if cp.session.is_none() {
            let sensor = cp.sensor_id;
            // Reuse a pending/active session of the sensor (cbapi §5.2), e.g. one handed over
            // by the previous run or left by another tool: it already holds a server slot.
            let live: Vec<wire::Session> = self
                .client
                .sessions()
                .await?
                .into_iter()
                .filter(|s| {
                    matches!(
                        mapping::session_status(&s.status),
                        Status::Dispatched | Status::Running
                    )
                })
                .collect();
            let existing = live.iter().find(|s| s.sensor_id == sensor).cloned();
            // A session this run opens has no commands yet; a taken-over one is read on its
            // first side effect (`last_cid`).
            let created = existing.is_none();
            let session = match existing {
                Some(s) => s,
                // §10: count the sessions already on the server, not only ours. After a restart
                // the sessions of resumed runs still hold server slots while those runs wait for
                // ours: a new session would sit pending behind them, holding the slot they need.
                // Give the slot back and try again shortly instead.
                None if live.len() >= self.cfg.slot_limit => {
                    self.release_slot(ctx.run_id);
                    return Ok(SessionReady::Wait(self.cfg.poll_max()));
                }
                None => self.client.create_session(sensor).await?,
            };
            let at = now();
            updates.push(CommandUpdate::status(cp.cursor.index, Status::Dispatched).with_vendor(
                Some(format!("session/{}", session.id)),
                Some(session.status.clone()),
            ));
            let active = mapping::session_status(&session.status) == Status::Running;
            cp.session = Some(SessionState {
                id: session.id,
                active,
                since: at,
                last_contact: at,
                supported: session.supported_commands.clone().filter(|l| active && !l.is_empty()),
                last_cid: created.then_some(0),
            });
        }
        let Some(session) = &mut cp.session else {
            return Err(phase_mismatch());
        };
        if session.active {
            return Ok(SessionReady::Active(session.id));
        }
        let (sid, since) = (session.id, session.since);
        let long_poll = self.long_poll();
        let started = Instant::now();
        let polled = tokio::select! {
            polled = self.client.session(sid, long_poll) => polled?,
            _ = ctx.stop.stopped() => return Ok(SessionReady::Wait(Duration::ZERO)),
        };
        // The long-poll released the borrow of `cp`; take the session again.
        let Some(session) = &mut cp.session else {
            return Err(phase_mismatch());
        };
        // `None`: our side of the long-poll ran out while the session was still pending.
        let status =
            polled.as_ref().map_or(Status::Dispatched, |p| mapping::session_status(&p.status));
        match status {
            Status::Running => {
                session.active = true;
                session.last_contact = now();
                session.supported = polled
                    .and_then(|p| p.supported_commands)
                    .filter(|l| !l.is_empty())
                    .or(session.supported.take());
                Ok(SessionReady::Active(sid))
            }
            Status::Dispatched => {
                if now() - since > self.cfg.session_checkin_timeout_secs as f64 {
                    // Close it: a pending session holds one of the server's slots (§8 #64).
                    cp.session = None;
                    if let Err(e) = self.client.close_session(sid).await {
                        tracing::debug!(run = %ctx.run_id, error = %e, "closing a session that never checked in failed");
                    }
                    return Ok(SessionReady::Offline);
                }
                Ok(SessionReady::Wait(match polled {
                    None => Duration::ZERO,
                    Some(_) => self.next_poll(long_poll, started, since),
                }))
            }
            other => Err(CbError::SessionLost(format!(
                "Session {sid} is {}",
                polled.map_or_else(|| other.as_str().to_owned(), |p| p.status)
            ))),
        }
    }

    /// A session died: forget it and decide what happens to the current command (ended, or
    /// driven again on a new session).
    pub(super) fn session_lost(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        text: String,
    ) -> Drive {
        tracing::info!(run = %ctx.run_id, vendor_message = %text, "live-response session lost");
        cp.session = None;
        cp.session_losses += 1;
        let index = cp.cursor.index;
        let kind = ctx.commands[index].kind();
        let update = match &mut cp.phase {
            // The command may have run before the session died; only the vendor could say,
            // and the session's command list is gone with it.
            Phase::Intent { name, .. } => Some(outcome_unknown(index, name)),
            Phase::Sent { .. } if kind.has_side_effect() => {
                Some(outcome_unknown(index, kind.as_str()))
            }
            Phase::Sent { .. } | Phase::Uploaded { .. } => {
                // Read-only, or only staged on the server: safe to start over.
                cp.phase = Phase::Ready;
                None
            }
            Phase::Fetch(fetch) => {
                fetch.cid = None;
                fetch.file_id = None;
                None
            }
            Phase::Cleanup { cid, .. } => {
                *cid = None;
                None
            }
            Phase::Ready | Phase::Contain { .. } => None,
        };
        let update = update.or_else(|| {
            (cp.session_losses > self.cfg.max_session_retries).then(|| {
                CommandUpdate::failed(
                    index,
                    ErrorInfo::from(CbError::SessionLost(text).into_adapter()).with_message(
                        format!("the live-response session ended {} times", cp.session_losses),
                    ),
                )
            })
        });
        match update {
            Some(update) => Drive::Finished(update),
            None => Drive::Recovered,
        }
    }

    pub(super) fn memory(&self) -> MutexGuard<'_, HashMap<Uuid, RunMemory>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn touch(&self, run: Uuid) {
        let mut runs = self.memory();
        // Drop what runs no longer stepped still hold (outside the lock, guards re-enter the
        // slot budget).
        let stale: Vec<Uuid> = runs
            .iter()
            .filter(|(id, m)| **id != run && m.touched.elapsed() > STALE_RUN)
            .map(|(id, _)| *id)
            .collect();
        let dropped: Vec<RunMemory> = stale.iter().filter_map(|id| runs.remove(id)).collect();
        if let Some(m) = runs.get_mut(&run) {
            m.touched = Instant::now();
        }
        drop(runs);
        if !dropped.is_empty() {
            tracing::warn!(
                runs = dropped.len(),
                "released the session slots of runs that stopped stepping"
            );
        }
    }

    pub(super) fn holds_slot(&self, run: Uuid) -> bool {
        self.memory().get(&run).is_some_and(|m| m.slot.is_some())
    }

    pub(super) fn release_slot(&self, run: Uuid) {
        let slots = self.memory().get_mut(&run).map(|m| (m.slot.take(), m.shared_slot.take()));
        drop(slots);
    }

    pub(super) fn holds_shared_slot(&self, run: Uuid) -> bool {
        self.memory().get(&run).is_some_and(|m| m.shared_slot.is_some())
    }

    pub(super) fn keep_shared_slot(&self, run: Uuid, slot: SharedSlot) {
        self.memory().entry(run).or_insert_with(RunMemory::new).shared_slot = Some(slot);
    }

    pub(super) fn keep_slot(&self, run: Uuid, guard: SlotGuard, shared: Option<SharedSlot>) {
        let mut runs = self.memory();
        let m = runs.entry(run).or_insert_with(RunMemory::new);
        m.slot = Some(guard);
        m.shared_slot = shared;
    }

    pub(super) fn take_writer(&self, run: Uuid, index: usize) -> Option<FetchWriter> {
        let mut runs = self.memory();
        let m = runs.get_mut(&run)?;
        match &m.fetch {
            Some(f) if f.index == index => m.fetch.take(),
            _ => None,
        }
    }

    pub(super) fn put_writer(&self, run: Uuid, writer: FetchWriter) {
        self.memory().entry(run).or_insert_with(RunMemory::new).fetch = Some(writer);
    }

    pub(super) fn forget(&self, run: Uuid) {
        let memory = self.memory().remove(&run);
        drop(memory);
    }
}

impl RunMemory {
    pub(super) fn new() -> Self {
        RunMemory { slot: None, shared_slot: None, fetch: None, touched: Instant::now() }
    }
}
