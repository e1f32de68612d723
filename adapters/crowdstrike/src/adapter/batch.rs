//! Fan-out through batch sessions (§7): the runs of one action that reach the same point
//! within `batch_window_ms` form a group; the first of them (the leader) makes one vendor
//! call for the whole group and hands every member its host's part.
//!
//! - Opening: one `batch-init-session` for the group's hosts (≤ `batch_host_limit`); each run
//!   keeps its host's `session_id` and the `batch_id` in its checkpoint.
//! - Each line: runs on the same batch sending the same line join again; the leader sends
//!   one `batch-*-command` (or `batch-get-command` for `get`) with `optional_hosts` = the
//!   group. Hosts that finished in time come back `complete` with their output; stragglers
//!   carry their `task_id` (= cloud request id, §7.3) and each run polls it alone through the
//!   single-host status route of the same tier.
//!
//! Every run journals its own intent before it joins (with its session's `logs[]` as they
//! were), and its checkpoint holds its session, batch and task ids: the groups here are only
//! a meeting point in memory. A run restarted elsewhere, or whose leader vanished (the
//! answer is then lost for the whole group), finishes alone from its checkpoint through the
//! single-host routes and reconciles through its session's logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{AdapterError, CommandUpdate, ErrorCode, RunContext};
use tokio::sync::oneshot;

use super::plan::{Role, Rtr};
use super::session::{missing_host, set_state};
use super::{Checkpoint, CrowdStrikeAdapter, LineState, Phase, SessionRef, now_ms};
use crate::mapping::{self, SESSION_GONE};
use crate::wire;

/// One host's part of a batch command: its result, `None` when the answer did not mention
/// it (§7.3: hosts can be missing from the map), or the failure of the whole call.
pub(super) type HostOutcome = Result<Option<wire::HostResult>, AdapterError>;

/// Groups being formed, by key. A group is sealed (removed) when its leader's window ends or
/// it is full; members that joined wait for the leader's answer on their channel.
pub(super) struct Coalescer<R> {
    groups: Mutex<HashMap<String, Arc<Mutex<Group<R>>>>>,
}

impl<R> Default for Coalescer<R> {
    fn default() -> Self {
        Coalescer { groups: Mutex::new(HashMap::new()) }
    }
}

struct Group<R> {
    /// The leader first (without a channel: it keeps its own result).
    members: Vec<(String, Option<oneshot::Sender<R>>)>,
}

pub(super) enum Joined<'a, R> {
    Leader(Lead<'a, R>),
    Follower(oneshot::Receiver<R>),
}

/// The leader's hold on its group; dropped unsealed (the step abandoned), it removes the
/// group, so its followers' channels close and they reconcile alone.
pub(super) struct Lead<'a, R> {
    coalescer: &'a Coalescer<R>,
    key: String,
    group: Arc<Mutex<Group<R>>>,
}

impl<R> Coalescer<R> {
    /// Joins the group forming under `key` for host `aid`, or starts one (at most `limit`
    /// hosts per group).
    pub(super) fn join(&self, key: &str, aid: &str, limit: usize) -> Joined<'_, R> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(group) = groups.get(key).cloned() {
            let mut g = group.lock().unwrap_or_else(|p| p.into_inner());
            let (tx, rx) = oneshot::channel();
            g.members.push((aid.to_owned(), Some(tx)));
            if g.members.len() >= limit {
                groups.remove(key);
            }
            return Joined::Follower(rx);
        }
        let group = Arc::new(Mutex::new(Group { members: vec![(aid.to_owned(), None)] }));
        if limit > 1 {
            groups.insert(key.to_owned(), Arc::clone(&group));
        }
        Joined::Leader(Lead { coalescer: self, key: key.to_owned(), group })
    }
}

impl<R> Lead<'_, R> {
    /// Waits for the group: until `expected` members joined, or nobody joined for `window`
    /// (runs of one batch drift apart by up to a poll interval), at most `cap` (and at least
    /// one `window`, which also bounds a group of unknown size).
    pub(super) async fn gather(&self, window: Duration, expected: usize, cap: Duration) {
        let started = Instant::now();
        let (mut seen, mut since) = (1, started);
        let tick = window.clamp(Duration::from_millis(1), Duration::from_millis(10));
        loop {
            let n = self.group.lock().unwrap_or_else(|p| p.into_inner()).members.len();
            if n >= expected {
                return;
            }
            if n != seen {
                (seen, since) = (n, Instant::now());
            }
            if since.elapsed() >= window || started.elapsed() >= cap.max(window) {
                return;
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Closes the group to newcomers and returns its members (the leader first).
    pub(super) fn seal(self) -> Vec<(String, Option<oneshot::Sender<R>>)> {
        self.unlist();
        std::mem::take(&mut self.group.lock().unwrap_or_else(|p| p.into_inner()).members)
    }

    fn unlist(&self) {
        let mut groups = self.coalescer.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.get(&self.key).is_some_and(|g| Arc::ptr_eq(g, &self.group)) {
            groups.remove(&self.key);
        }
    }
}

impl<R> Drop for Lead<'_, R> {
    fn drop(&mut self) {
        self.unlist();
    }
}

/// A follower's wait for its leader's answer, racing the stop (`None`: stopped; the run's
/// intent, if any, is reconciled or reported by the driver). A leader that vanished (its
/// step abandoned) closes the channel: a transient failure, reconciled on the next move.
pub(super) async fn follow<T>(
    ctx: &RunContext<'_>,
    rx: oneshot::Receiver<Result<T, AdapterError>>,
    what: &str,
) -> Option<Result<T, AdapterError>> {
    tokio::select! {
        r = rx => Some(r.unwrap_or_else(|_| {
            Err(AdapterError::transient(
                ErrorCode::VendorUnavailable,
                format!("the {what} of this run's group did not complete"),
            ))
        })),
        () = ctx.stop.stopped() => None,
    }
}

impl CrowdStrikeAdapter {
    /// One batch init for `hosts` (§7.2): each host's session, or its error.
    pub(super) async fn open_batch(
        &self,
        hosts: &[String],
    ) -> BTreeMap<String, Result<SessionRef, AdapterError>> {
        let init = match self.client.batch_init(hosts, self.cfg.queue_offline).await {
            Ok(init) => init,
            Err(e) => {
                return hosts.iter().map(|h| (h.to_ascii_lowercase(), Err(e.clone()))).collect();
            }
        };
        let top = mapping::first_error(init.errors.iter().map(|e| (e.code, e.message.as_str())));
        // The runs that will meet on this batch's lines.
        let opened = init
            .resources
            .values()
            .filter(|r| r.errors.is_empty() && !r.session_id.is_empty())
            .count();
        hosts
            .iter()
            .map(|aid| {
                let host = init
                    .resources
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(aid))
                    .map(|(_, r)| r);
                let result = match host {
                    Some(r)
                        if r.errors.is_empty()
                            && !r.session_id.is_empty()
                            && !init.batch_id.is_empty() =>
                    {
                        Ok(SessionRef {
                            id: r.session_id.clone(),
                            batch: Some(init.batch_id.clone()),
                            peers: opened,
                            queued: r.offline_queued,
                            used_ms: now_ms(),
                            cwd: None,
                        })
                    }
                    Some(r) if !r.errors.is_empty() => {
                        let e = &r.errors[0];
                        Err(mapping::into_adapter(mapping::api_error(e.code, &e.message)))
                    }
                    _ => Err(top.clone().map_or_else(missing_host, mapping::into_adapter)),
                };
                (aid.to_ascii_lowercase(), result)
            })
            .collect()
    }

    /// A line on the run's batch session (its intent journaled), sent with the other runs on
    /// the same batch doing the same line, as one batch call.
    pub(super) async fn send_batch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &SessionRef,
    ) -> Result<Drive, AdapterError> {
        let batch = session.batch.clone().unwrap_or_default();
        let key = format!(
            "line:{}:{}:{batch}:{:?}:{}",
            ctx.action_id, cp.cursor.index, line.tier, line.line
        );
        let outcome = match self.commands.join(&key, &cp.device, self.cfg.batch_host_limit) {
            Joined::Follower(rx) => match follow(ctx, rx, "batch command").await {
                Some(r) => r,
                None => return Ok(Drive::Continue),
            },
            Joined::Leader(lead) => {
                lead.gather(self.batch_window(), session.peers, self.cfg.poll_max()).await;
                let members = lead.seal();
                let hosts: Vec<String> = members.iter().map(|(aid, _)| aid.clone()).collect();
                let answer = match (line.role, &line.path) {
                    (Role::Get, Some(path)) => self.client.batch_get(&batch, &hosts, path).await,
                    _ => {
                        self.client
                            .batch_command(
                                line.tier,
                                &batch,
                                &hosts,
                                &line.line,
                                self.cfg.queue_offline,
                            )
                            .await
                    }
                };
                tracing::debug!(run = %ctx.run_id, hosts = hosts.len(), line = %line.line, ok = answer.is_ok(), "batch command sent");
                let mut own = None;
                for (aid, tx) in members {
                    let part = host_part(&answer, &aid);
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(part);
                        }
                        None => own = Some(part),
                    }
                }
                own.unwrap_or(Ok(None))
            }
        };
        self.batch_result(ctx, cp, updates, line, session, outcome)
    }

    /// The run's part of a batch call (§7.3).
    fn batch_result(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &SessionRef,
        outcome: HostOutcome,
    ) -> Result<Drive, AdapterError> {
        let result = match outcome {
            Err(e) => return self.refused(cp, e),
            // Not in the answer: a read is sent again; a side effect is looked up in the
            // session's logs on the next move (the state is still its intent).
            Ok(None) if line.effect => return Err(missing_host()),
            Ok(None) => {
                set_state(cp, LineState::Ready);
                return Ok(Drive::Recovered);
            }
            Ok(Some(r)) => r,
        };
        if let Some(e) = result.errors.first() {
            let info = mapping::api_error(e.code, &e.message);
            if e.code == SESSION_GONE {
                return self.refused(cp, mapping::into_adapter(info));
            }
            cp.cursor.sent = false;
            // `50401`: the host did not finish within the timeout (§12.2: `timed_out`).
            let update = if info.code == ErrorCode::Timeout {
                CommandUpdate::status(cp.cursor.index, edrgate_adapter::Status::TimedOut)
                    .with_error(info)
            } else {
                CommandUpdate::failed(cp.cursor.index, info)
            };
            return Ok(Drive::Finished(update));
        }
        let session_id = if result.session_id.is_empty() {
            session.id.clone()
        } else {
            result.session_id.clone()
        };
        if result.task_id.is_empty() {
            return Err(missing_host());
        }
        self.accepted(
            cp,
            updates,
            &session_id,
            result.task_id.clone(),
            result.offline_queued && !result.complete,
        );
        if result.complete {
            let cap = self.cfg.max_output_bytes;
            if let Phase::Rtr { state: LineState::Sent { stdout, stderr, .. }, cut, .. } =
                &mut cp.phase
            {
                // Noted like a polled line's (`session.rs`).
                *cut |= !mapping::append_capped(stdout, &result.stdout, cap)
                    | !mapping::append_capped(stderr, &result.stderr, cap);
            }
            return Ok(self.line_done(ctx, cp, line));
        }
        Ok(Drive::Continue)
    }
}

/// One host's part of a batch answer (hosts are keyed by aid, compared ignoring case).
fn host_part(answer: &Result<wire::BatchCommand, AdapterError>, aid: &str) -> HostOutcome {
    let answer = answer.as_ref().map_err(Clone::clone)?;
    if let Some(r) =
        answer.combined.resources.iter().find(|(k, _)| k.eq_ignore_ascii_case(aid)).map(|(_, r)| r)
    {
        return Ok(Some(r.clone()));
    }
    match mapping::first_error(answer.errors.iter().map(|e| (e.code, e.message.as_str()))) {
        Some(e) => Err(mapping::into_adapter(e)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_meeting_under_one_key_form_one_group_and_an_abandoned_leader_releases_it() {
        let c: Coalescer<u32> = Coalescer::default();
        let Joined::Leader(lead) = c.join("k", "a", 10) else { panic!() };
        let Joined::Follower(rx) = c.join("k", "b", 10) else { panic!() };
        let members = lead.seal();
        assert_eq!(members.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        for (_, tx) in members {
            if let Some(tx) = tx {
                tx.send(7).unwrap();
            }
        }
        assert_eq!(rx.await.unwrap(), 7);
        // Sealed: a newcomer leads a new group.
        let Joined::Leader(lead) = c.join("k", "c", 10) else { panic!() };
        let Joined::Follower(rx) = c.join("k", "d", 10) else { panic!() };
        drop(lead);
        assert!(rx.await.is_err(), "the follower learns its leader is gone");
        assert!(matches!(c.join("k", "e", 10), Joined::Leader(_)));
        // A full group takes nobody else.
        let c: Coalescer<u32> = Coalescer::default();
        let _lead = c.join("k", "a", 2);
        let _f = c.join("k", "b", 2);
        assert!(matches!(c.join("k", "c", 2), Joined::Leader(_)));
    }
}
