//! Retention of finished actions: a tenant's actions that finished (every status but `queued`,
//! `dispatched` and `running`) and have not changed for longer than its retention are deleted
//! with their runs, their events and the events' webhook deliveries, in small batches (one
//! transaction each, so SQLite's write lock is never held for long).
//!
//! What stays: unfinished actions, always; the audit trail (append-only, migration 0003);
//! stored files, which have their own retention (`files.retention_days`).
//!
//! The retention of a tenant is `tenants.<id>.retention_days`, else
//! `engine.action_retention_days`, else forever.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Result, Store, args, sql};

/// Actions deleted per transaction.
pub const BATCH: u32 = 500;

/// How often the sweeper runs. Retention is counted in days: an hourly sweep deletes an action
/// at most an hour late, and costs one index probe per tenant when there is nothing to delete.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A pause between two batches, so other writers (the engine's run steps, submissions) take
/// SQLite's write lock in between while a large backlog is deleted.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

const DAY_MS: i64 = 86_400_000;

/// Who keeps their finished actions how long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionRetention {
    /// `engine.action_retention_days`: tenants without their own setting, including tenants
    /// no longer configured whose actions are still in the store.
    pub default_days: Option<u32>,
    /// `tenants.<id>.retention_days`, of the tenants that set it.
    pub tenants: BTreeMap<String, u32>,
}

impl ActionRetention {
    pub fn from_config(config: &crate::config::Config) -> ActionRetention {
        ActionRetention {
            default_days: config.engine.action_retention_days,
            tenants: config
                .tenants
                .iter()
                .filter_map(|(t, c)| c.retention_days.map(|d| (t.clone(), d)))
                .collect(),
        }
    }

    /// Whether no action is ever deleted.
    pub fn keeps_everything(&self) -> bool {
        self.default_days.is_none() && self.tenants.is_empty()
    }

    /// The tenant's retention in days, `None`: forever.
    pub fn days_of(&self, tenant: &str) -> Option<u32> {
        self.tenants.get(tenant).copied().or(self.default_days)
    }
}

impl Store {
    /// Deletes up to `batch` of the tenant's finished actions last changed before `before`
    /// (unix ms), oldest first, with their runs, events and deliveries, in one transaction.
    /// The number of actions deleted (fewer than `batch`: none are left).
    pub async fn purge_actions_batch(&self, tenant: &str, before: i64, batch: u32) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        // Finished: the action's status, and (in case a run were ever left behind) none of its
        // runs unfinished. PostgreSQL locks the rows, so a concurrent cancel request (which
        // touches `updated_at`) waits or is skipped, never half-applied to a deleted action.
        let ids: Vec<(String,)> = tx
            .fetch_all(
                sql!(self.db.dialect(),
                    sqlite: "SELECT a.id FROM actions a INDEXED BY actions_retention
                     WHERE a.tenant = $1 AND a.updated_at < $2
                       AND a.status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled',
                                        'timed_out', 'skipped')
                       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.action_id = a.id
                                AND r.status IN ('queued', 'dispatched', 'running'))
                     ORDER BY a.updated_at LIMIT $3",
                    postgres: "SELECT a.id FROM actions a
                     WHERE a.tenant = $1 AND a.updated_at < $2
                       AND a.status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled',
                                        'timed_out', 'skipped')
                       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.action_id = a.id
                                AND r.status IN ('queued', 'dispatched', 'running'))
                     ORDER BY a.updated_at LIMIT $3
                     FOR UPDATE OF a SKIP LOCKED"),
                args![tenant, before, i64::from(batch)],
            )
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        // The batch's ids as one JSON array parameter: the statements stay fixed text.
        let ids = serde_json::to_string(&ids.into_iter().map(|(id,)| id).collect::<Vec<_>>())
            .map_err(|e| super::StoreError::Corrupt(e.to_string()))?;
        let dialect = self.db.dialect();
        // Children first: deliveries reference events.
        tx.execute(
            sql!(dialect,
                sqlite: "DELETE FROM deliveries WHERE event_seq IN (SELECT e.seq FROM events e
                           WHERE e.action_id IN (SELECT value FROM json_each($1)))",
                postgres: "DELETE FROM deliveries WHERE event_seq IN (SELECT e.seq FROM events e
                           WHERE e.action_id IN (SELECT jsonb_array_elements_text($1::jsonb)))"),
            args![&ids],
        )
        .await?;
        tx.execute(
            sql!(dialect,
                sqlite: "DELETE FROM events WHERE action_id IN (SELECT value FROM json_each($1))",
                postgres: "DELETE FROM events
                           WHERE action_id IN (SELECT jsonb_array_elements_text($1::jsonb))"),
            args![&ids],
        )
        .await?;
        tx.execute(
            sql!(dialect,
                sqlite: "DELETE FROM command_results WHERE run_id IN (SELECT id FROM runs
                         WHERE action_id IN (SELECT value FROM json_each($1)))",
                postgres: "DELETE FROM command_results WHERE run_id IN (SELECT id FROM runs
                           WHERE action_id IN (SELECT jsonb_array_elements_text($1::jsonb)))"),
            args![&ids],
        )
        .await?;
        tx.execute(
            sql!(dialect,
                sqlite: "DELETE FROM runs WHERE action_id IN (SELECT value FROM json_each($1))",
                postgres: "DELETE FROM runs
                           WHERE action_id IN (SELECT jsonb_array_elements_text($1::jsonb))"),
            args![&ids],
        )
        .await?;
        let deleted = tx
            .execute(
                sql!(dialect,
                    sqlite: "DELETE FROM actions WHERE id IN (SELECT value FROM json_each($1))",
                    postgres: "DELETE FROM actions
                               WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb))"),
                args![&ids],
            )
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes every finished action of `tenant` last changed before `before` (unix ms), in
    /// transactions of `batch` actions; how many were deleted.
    pub async fn purge_actions(&self, tenant: &str, before: i64, batch: u32) -> Result<u64> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let n = self.purge_actions_batch(tenant, before, batch).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }

    /// The tenants with finished actions in the store.
    async fn tenants_with_finished_actions(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .db
            .fetch_all(
                "SELECT DISTINCT tenant FROM actions
                 WHERE status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled',
                                  'timed_out', 'skipped')",
                args![],
            )
            .await?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// One sweep at `now` (unix ms): every tenant's actions past its retention deleted; the
    /// number deleted per tenant (tenants with none left out).
    pub async fn sweep_actions(
        &self,
        retention: &ActionRetention,
        now: i64,
    ) -> Result<Vec<(String, u64)>> {
        let mut tenants: Vec<String> = retention.tenants.keys().cloned().collect();
        if retention.default_days.is_some() {
            for t in self.tenants_with_finished_actions().await? {
                if !retention.tenants.contains_key(&t) {
                    tenants.push(t);
                }
            }
        }
        let mut removed = Vec::new();
        for tenant in tenants {
            let Some(days) = retention.days_of(&tenant) else { continue };
            let before = now.saturating_sub(i64::from(days).saturating_mul(DAY_MS));
            let n = self.purge_actions(&tenant, before, BATCH).await?;
            if n > 0 {
                removed.push((tenant, n));
            }
        }
        Ok(removed)
    }

    /// Sweeps at start, then every [`SWEEP_INTERVAL`], until `stop` fires. Nothing is spawned
    /// when the retention keeps everything.
    pub fn spawn_action_sweeper(
        &self,
        retention: ActionRetention,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if retention.keeps_everything() {
            return None;
        }
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let sweep = store.sweep_actions(&retention, super::now_ms());
                tokio::select! {
                    () = stop.cancelled() => return,
                    result = sweep => match result {
                        Ok(removed) => {
                            for (tenant, n) in removed {
                                tracing::info!(%tenant, removed = n, "finished actions past their retention deleted");
                            }
                        }
                        Err(error) => tracing::error!(%error, "action retention sweep failed"),
                    },
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                }
            }
        }))
    }
}
