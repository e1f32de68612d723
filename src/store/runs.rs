//! What the engine's drivers do with runs: claim them fairly, renew the leases of the runs
//! that live drivers hold, write progress fenced by the lease, and hand runs back.

use std::time::Duration;

use edrgate_adapter::{ActionSummary, Run};
use uuid::Uuid;

use super::events::{self, EventType};
use super::{
    Lease, LoadedRunRow, Result, RunRecord, RunWrite, Status, Store, args, duration_ms, from_json,
    now_ms, parse_status, parse_uuid, sql, to_json,
};

/// What [`Store::claim_runs`] may take.
pub struct Claim<'a> {
    pub owner: &'a str,
    pub lease: Duration,
    /// Runs claimed at most.
    pub limit: u32,
    /// Runs of one (tenant, backend) this owner drives at most, those in `live` included: one
    /// tenant's fan-out cannot take every place in flight.
    pub per_key: u32,
    /// The runs this owner's drivers hold now: never claimed again, and counted against
    /// the caps. Runs this owner leases that are *not* here (their driver died and its
    /// release failed) are claimed again once their lease expires.
    pub live: &'a [Uuid],
    /// (tenant, backend, cap): the keys whose due runs are claimed, backend `""` for runs
    /// not resolved to one yet, each with its cap: at most `per_key`, fewer for a backend
    /// whose vendor lets only so many sessions run at once (a run claimed beyond that would
    /// only wait in memory), 0 for a key whose budget has runs waiting here already.
    pub keys: &'a [(String, String, u32)],
    /// Also the due runs of keys not in `keys` (a backend removed by a reload, whose runs
    /// the driver then fails): a pass over every due run, so only now and then.
    pub sweep: bool,
    /// Only runs of these actions (just submitted here), or those of `keys` when `None`.
    pub actions: Option<&'a [Uuid]>,
}

/// A claimed run: its lease and what the fairness accounting needs.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub lease: Lease,
    pub action_id: Uuid,
    pub tenant: String,
    pub backend: Option<String>,
}

/// What a visible write reads before it writes: whether a run or the action finishes with it.
struct Before {
    action_id: String,
    tenant: String,
    run_status: Status,
    /// The run's command statuses as counted in `summary`.
    command_statuses: Vec<Status>,
    action_status: Status,
    summary: ActionSummary,
    target_json: String,
}

/// A fenced write that went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Whether the run's action is cancel-requested as of this write: a driver that missed
    /// the cancel's announcement (a reconnecting listener) learns it here, at every step.
    pub cancel_requested: bool,
}

impl Store {
    /// Claims up to `limit` unfinished runs that are due and not leased by a live owner,
    /// without the fairness limits of [`Store::claim_runs`] (tests and tools).
    pub async fn claim(&self, owner: &str, lease: Duration, limit: u32) -> Result<Vec<Lease>> {
        let claim = Claim {
            owner,
            lease,
            limit,
            per_key: u32::MAX,
            live: &[],
            keys: &[],
            sweep: true,
            actions: None,
        };
        Ok(self.claim_runs(&claim).await?.into_iter().map(|c| c.lease).collect())
    }

    /// Claims due runs fairly: round-robin over (tenant, backend), the earliest due first
    /// within each, at most the key's cap in flight per key. So a
    /// 5,000-device fan-out queued first does not keep another tenant's single isolate waiting
    /// behind it. With PostgreSQL, replicas claiming at once skip each other's locked rows.
    pub async fn claim_runs(&self, c: &Claim<'_>) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let live = to_json(&c.live.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
        let keys = to_json(c.keys)?;
        let actions = c
            .actions
            .map(|ids| to_json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>()))
            .transpose()?;
        let mut tx = self.db.begin().await?;
        let rows: Vec<(String, i64, String, String, Option<String>)> = tx
            .fetch_all(
                sql!(self.db.dialect(),
                    sqlite: "WITH live AS (SELECT value AS id FROM json_each($5)),
                     keys AS (SELECT json_extract(value, '$[0]') AS tenant,
                                     json_extract(value, '$[1]') AS k,
                                     json_extract(value, '$[2]') AS cap FROM json_each($6)),
                     held AS (SELECT tenant, COALESCE(backend, '') AS k, COUNT(*) AS n FROM runs
                              WHERE id IN (SELECT id FROM live) GROUP BY 1, 2),
                     room AS (SELECT h.tenant, h.k, COALESCE(c.cap, $7) - h.n AS n
                              FROM held h LEFT JOIN keys c ON c.tenant = h.tenant AND c.k = h.k
                              UNION ALL
                              SELECT c.tenant, c.k, c.cap FROM keys c WHERE NOT EXISTS
                                (SELECT 1 FROM held h WHERE h.tenant = c.tenant AND h.k = c.k)),
                     due AS (
                        -- Each key with room: its earliest due runs, through
                        -- runs_claimable_by_key (SQLite's LIMIT cannot be the key's room).
                        SELECT x.id, x.tenant, x.backend, x.next_step_at
                        FROM room m JOIN runs x ON x.id IN (
                          SELECT y.id FROM runs y
                          WHERE y.tenant = m.tenant AND COALESCE(y.backend, '') = m.k
                            AND y.status IN ('queued', 'dispatched', 'running')
                            AND y.next_step_at <= $3
                            AND (y.lease_owner IS NULL OR y.lease_expires_at < $3)
                            AND y.id NOT IN (SELECT id FROM live)
                          ORDER BY y.next_step_at LIMIT $7)
                        WHERE $8 IS NULL AND m.n > 0
                        UNION ALL
                        -- Now and then, the keys nobody named (a backend a reload removed).
                        SELECT x.id, x.tenant, x.backend, x.next_step_at FROM runs x
                        WHERE $9 AND $8 IS NULL AND x.status IN ('queued', 'dispatched', 'running')
                          AND x.next_step_at <= $3
                          AND (x.lease_owner IS NULL OR x.lease_expires_at < $3)
                          AND x.id NOT IN (SELECT id FROM live)
                          AND NOT EXISTS (SELECT 1 FROM room m
                                WHERE m.tenant = x.tenant AND m.k = COALESCE(x.backend, ''))
                        UNION ALL
                        -- The actions just submitted here, through runs_by_action.
                        SELECT x.id, x.tenant, x.backend, x.next_step_at FROM runs x
                        WHERE x.action_id IN (SELECT value FROM json_each($8))
                          AND x.status IN ('queued', 'dispatched', 'running')
                          AND x.next_step_at <= $3
                          AND (x.lease_owner IS NULL OR x.lease_expires_at < $3)
                          AND x.id NOT IN (SELECT id FROM live)),
                     ranked AS (
                        SELECT d.id, d.next_step_at, COALESCE(m.n, $7) AS room,
                          ROW_NUMBER() OVER (PARTITION BY d.tenant, COALESCE(d.backend, '')
                                             ORDER BY d.next_step_at, d.id) AS turn
                        FROM due d LEFT JOIN room m
                          ON m.tenant = d.tenant AND m.k = COALESCE(d.backend, ''))
                     UPDATE runs SET lease_owner = $1, lease_expires_at = $2,
                        lease_version = lease_version + 1
                     WHERE id IN (SELECT id FROM ranked WHERE turn <= room
                                  ORDER BY turn, next_step_at LIMIT $4)
                     RETURNING id, lease_version, action_id, tenant, backend",
                    postgres: "WITH live AS (SELECT json_array_elements_text($5::text::json) AS id),
                     keys AS (SELECT f->>0 AS tenant, f->>1 AS k, (f->>2)::bigint AS cap
                              FROM json_array_elements($6::text::json) f),
                     held AS (SELECT tenant, COALESCE(backend, '') AS k, COUNT(*) AS n FROM runs
                              WHERE id IN (SELECT id FROM live) GROUP BY 1, 2),
                     room AS (SELECT h.tenant, h.k, COALESCE(c.cap, $7) - h.n AS n
                              FROM held h LEFT JOIN keys c ON c.tenant = h.tenant AND c.k = h.k
                              UNION ALL
                              SELECT c.tenant, c.k, c.cap FROM keys c WHERE NOT EXISTS
                                (SELECT 1 FROM held h WHERE h.tenant = c.tenant AND h.k = c.k)),
                     due AS (
                        SELECT x.id, x.tenant, x.backend, x.next_step_at
                        FROM room m CROSS JOIN LATERAL (
                          SELECT y.id, y.tenant, y.backend, y.next_step_at FROM runs y
                          WHERE y.tenant = m.tenant AND COALESCE(y.backend, '') = m.k
                            AND y.status IN ('queued', 'dispatched', 'running')
                            AND y.next_step_at <= $3
                            AND (y.lease_owner IS NULL OR y.lease_expires_at < $3)
                            AND y.id NOT IN (SELECT id FROM live)
                          ORDER BY y.next_step_at LIMIT m.n) x
                        WHERE $8::text IS NULL AND m.n > 0
                        UNION ALL
                        SELECT x.id, x.tenant, x.backend, x.next_step_at FROM runs x
                        WHERE $9::boolean AND $8::text IS NULL
                          AND x.status IN ('queued', 'dispatched', 'running')
                          AND x.next_step_at <= $3
                          AND (x.lease_owner IS NULL OR x.lease_expires_at < $3)
                          AND x.id NOT IN (SELECT id FROM live)
                          AND NOT EXISTS (SELECT 1 FROM room m
                                WHERE m.tenant = x.tenant AND m.k = COALESCE(x.backend, ''))
                        UNION ALL
                        SELECT x.id, x.tenant, x.backend, x.next_step_at FROM runs x
                        WHERE x.action_id IN (SELECT json_array_elements_text($8::text::json))
                          AND x.status IN ('queued', 'dispatched', 'running')
                          AND x.next_step_at <= $3
                          AND (x.lease_owner IS NULL OR x.lease_expires_at < $3)
                          AND x.id NOT IN (SELECT id FROM live)),
                     ranked AS (
                        SELECT d.id, d.next_step_at, COALESCE(m.n, $7) AS room,
                          ROW_NUMBER() OVER (PARTITION BY d.tenant, COALESCE(d.backend, '')
                                             ORDER BY d.next_step_at, d.id) AS turn
                        FROM due d LEFT JOIN room m
                          ON m.tenant = d.tenant AND m.k = COALESCE(d.backend, '')),
                     picked AS (SELECT id FROM ranked WHERE turn <= room
                                ORDER BY turn, next_step_at LIMIT $4)
                     UPDATE runs SET lease_owner = $1, lease_expires_at = $2,
                        lease_version = lease_version + 1
                     WHERE id IN (
                        -- Window functions and FOR UPDATE do not mix: the rows picked are
                        -- locked (and checked again) here.
                        SELECT id FROM runs WHERE id IN (SELECT id FROM picked)
                          AND status IN ('queued', 'dispatched', 'running')
                          AND (lease_owner IS NULL OR lease_expires_at < $3)
                        FOR UPDATE SKIP LOCKED)
                     RETURNING id, lease_version, action_id, tenant, backend"),
                args![
                    c.owner,
                    now + duration_ms(c.lease),
                    now,
                    i64::from(c.limit),
                    live,
                    keys,
                    i64::from(c.per_key),
                    actions,
                    c.sweep,
                ],
            )
            .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(id, version, action_id, tenant, backend)| {
                Ok(Claimed {
                    lease: Lease { run_id: parse_uuid(&id)?, owner: c.owner.to_owned(), version },
                    action_id: parse_uuid(&action_id)?,
                    tenant,
                    backend,
                })
            })
            .collect()
    }

    /// Extends the leases of `live`, the runs `owner`'s drivers hold. A run the owner leases
    /// without a driver (its driver failed and so did the release) is not renewed: its lease
    /// expires and it is claimed again, instead of staying `running` until a restart.
    pub async fn renew_leases(&self, owner: &str, live: &[Uuid], lease: Duration) -> Result<u64> {
        if live.is_empty() {
            return Ok(0);
        }
        let live = to_json(&live.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
        self.db
            .execute(
                sql!(self.db.dialect(),
                    sqlite: "UPDATE runs SET lease_expires_at = $2
                     WHERE lease_owner = $1 AND status IN ('queued', 'dispatched', 'running')
                       AND id IN (SELECT value FROM json_each($3))",
                    postgres: "UPDATE runs SET lease_expires_at = $2
                     WHERE lease_owner = $1 AND status IN ('queued', 'dispatched', 'running')
                       AND id IN (SELECT json_array_elements_text($3::text::json))"),
                args![owner, now_ms() + duration_ms(lease), live],
            )
            .await
    }

    /// Gives up `owner`'s leases (graceful shutdown) so another process resumes at once.
    pub async fn release_leases(&self, owner: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1",
                args![owner],
            )
            .await?;
        Ok(())
    }

    /// Releases one lease after its run finished or was handed back.
    pub async fn release(&self, lease: &Lease, next_step_at: i64) -> Result<()> {
        self.db
            .execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, next_step_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND lease_version = $3",
                args![lease.run_id.to_string(), &lease.owner, lease.version, next_step_at],
            )
            .await?;
        Ok(())
    }

    pub async fn load_run(&self, run_id: Uuid) -> Result<RunRecord> {
        let row: LoadedRunRow = self
            .db
            .fetch_one(
                "SELECT r.*, a.request_json, a.deadline, a.cancel_requested
                 FROM runs r JOIN actions a ON a.id = r.action_id WHERE r.id = $1",
                args![run_id.to_string()],
            )
            .await?;
        let Some(run) = self.with_results(vec![row.run]).await?.pop() else {
            return Err(super::StoreError::Corrupt(format!("run {run_id} vanished while read")));
        };
        Ok(RunRecord {
            id: run_id,
            action_id: parse_uuid(&row.action_id)?,
            tenant: row.tenant,
            target: run.target,
            backend: run.backend,
            device_id: run.device_id,
            hostname: run.hostname,
            request: from_json(&row.request_json)?,
            states: run.commands,
            status: run.status,
            error: run.error,
            checkpoint: row.checkpoint_json.as_deref().map(from_json).transpose()?,
            deadline: row.deadline,
            cancel_requested: row.cancel_requested,
        })
    }

    /// Whether the caller asked to cancel the run's action.
    pub async fn cancel_requested(&self, action_id: Uuid) -> Result<bool> {
        let v: Option<(bool,)> = self
            .db
            .fetch_optional(
                "SELECT cancel_requested FROM actions WHERE id = $1",
                args![action_id.to_string()],
            )
            .await?;
        Ok(v.is_some_and(|(c,)| c))
    }

    /// Writes a run's progress, fenced by its lease, and refreshes the action's aggregate
    /// status. `None` means the lease was lost: the caller must stop driving the run.
    pub async fn save_run(&self, lease: &Lease, w: &RunWrite<'_>) -> Result<Option<Saved>> {
        let now = now_ms();
        let run_id = lease.run_id.to_string();
        let mut tx = self.db.begin().await?;
        // The run as its last write left it: the action's summary counts these statuses.
        let (action_id, run_status, target_json, command_statuses): (
            String,
            String,
            String,
            String,
        ) = tx
            .fetch_one(
                "SELECT action_id, status, target_json, command_statuses FROM runs WHERE id = $1",
                args![&run_id],
            )
            .await?;
        let run_status = parse_status(&run_status)?;
        let command_statuses: Vec<String> = from_json(&command_statuses)?;
        let command_statuses =
            command_statuses.iter().map(|c| parse_status(c)).collect::<Result<Vec<_>>>()?;
        // A write that moves a status updates the action even if the caller did not call it
        // visible: the summary must count every run where it is.
        let moved = run_status != w.status
            || !command_statuses.iter().copied().eq(w.states.iter().map(|c| c.status));
        let before = if w.visible || moved {
            // PostgreSQL: replicas saving runs of one action take its row first, so each
            // moves the summary the others committed, and in the order `request_cancel` takes
            // them (action, then runs), so they cannot deadlock. SQLite's `BEGIN IMMEDIATE`
            // already serializes writers.
            let (action_status, tenant, summary): (String, String, Option<String>) = tx
                .fetch_one(
                    sql!(self.db.dialect(),
                        sqlite: "SELECT status, tenant, summary_json FROM actions WHERE id = $1",
                        postgres: "SELECT status, tenant, summary_json FROM actions WHERE id = $1
                                   FOR UPDATE"),
                    args![&action_id],
                )
                .await?;
            let summary = match summary {
                Some(summary) => from_json(&summary)?,
                // Stored before summaries were kept: counted once, kept from now on.
                None => {
                    let (request,): (String,) = tx
                        .fetch_one(
                            "SELECT request_json FROM actions WHERE id = $1",
                            args![&action_id],
                        )
                        .await?;
                    let runs: Vec<(String, String)> = tx
                        .fetch_all(
                            "SELECT status, command_statuses FROM runs WHERE action_id = $1",
                            args![&action_id],
                        )
                        .await?;
                    super::summary_of(&from_json(&request)?, &runs)?
                }
            };
            Some(Before {
                action_id,
                tenant,
                run_status,
                command_statuses,
                action_status: parse_status(&action_status)?,
                summary,
                target_json,
            })
        } else {
            None
        };
        // The cancel flag comes back with the write (no extra round trip per step).
        let updated: Vec<(bool,)> = tx
            .fetch_all(
                "UPDATE runs SET backend = $4, device_id = $5, hostname = $6, status = $7,
                    error_json = $8, commands_json = $9, checkpoint_json = $10, next_step_at = $11,
                    lease_expires_at = $12, updated_at = $13, command_statuses = $14
                 WHERE id = $1 AND lease_owner = $2 AND lease_version = $3
                 RETURNING (SELECT cancel_requested FROM actions WHERE actions.id = runs.action_id)",
                args![
                    &run_id,
                    &lease.owner,
                    lease.version,
                    w.backend,
                    w.device_id,
                    w.hostname,
                    w.status.as_str(),
                    w.error.map(to_json).transpose()?,
                    super::commands_json(w.states)?,
                    w.checkpoint.map(to_json).transpose()?,
                    w.next_step_at,
                    w.lease_until,
                    now,
                    super::command_statuses(w.states)?,
                ],
            )
            .await?;
        let [(cancel_requested,)] = updated[..] else {
            return Ok(None);
        };
        let saved = Saved { cancel_requested };
        // The new results, after the fenced write: a stale owner writes none.
        let new_results = w.states.iter().filter(|state| {
            state.result.is_some() && w.new_results.is_none_or(|new| new.contains(&state.index))
        });
        for state in new_results {
            tx.execute(
                "INSERT INTO command_results (run_id, idx, result_json) VALUES ($1, $2, $3)
                 ON CONFLICT (run_id, idx) DO UPDATE SET result_json = excluded.result_json",
                args![
                    &run_id,
                    i64::try_from(state.index).unwrap_or(i64::MAX),
                    to_json(&state.result)?
                ],
            )
            .await?;
        }
        let Some(mut before) = before else {
            tx.commit().await?;
            return Ok(Some(saved));
        };
        let action_id = &before.action_id;
        // This run moves from its old statuses to its new ones; the others are as counted.
        let mut summary = std::mem::take(&mut before.summary);
        summary.remove_run(before.run_status, &before.command_statuses);
        let states: Vec<Status> = w.states.iter().map(|c| c.status).collect();
        summary.add_run(w.status, &states);
        let status = Status::of_counts(&summary.runs_by_status);
        tx.execute(
            "UPDATE actions SET status = $2, updated_at = $3, version = version + 1,
                summary_json = $4
             WHERE id = $1",
            args![action_id, status.as_str(), now, to_json(&summary)?],
        )
        .await?;
        // The events last: they take the tenant's event lock (held to the commit).
        if w.status.is_terminal() && !before.run_status.is_terminal() {
            let run = Run {
                id: lease.run_id,
                target: from_json(&before.target_json)?,
                backend: w.backend.map(str::to_owned),
                device_id: w.device_id.map(str::to_owned),
                hostname: w.hostname.map(str::to_owned),
                status: w.status,
                error: w.error.cloned(),
                commands: w.states.to_vec(),
            };
            let data = events::run_data(action_id, &run);
            self.append_event(&mut tx, &before.tenant, EventType::RunFinished, action_id, data)
                .await?;
        }
        if status.is_terminal() && !before.action_status.is_terminal() {
            let data = serde_json::json!({
                "action_id": action_id,
                "status": status.as_str(),
                "summary": events::run_summary(&summary),
                "finished_at": super::rfc3339(super::from_ms(now)),
            });
            self.append_event(&mut tx, &before.tenant, EventType::ActionFinished, action_id, data)
                .await?;
        }
        self.announce(&mut tx, action_id, false).await?;
        tx.commit().await?;
        Ok(Some(saved))
    }
}
