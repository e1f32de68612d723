//! The durable store: actions, runs (with their leases and adapter checkpoints) and file
//! metadata, in SQLite through sqlx.
//!
//! The store is the single source of truth for action state. The SQLite store serves one
//! gateway replica: leases still guard every write (so a restarted process never races the run
//! it took over), but cross-replica coordination needs the PostgreSQL store.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use edrgate_adapter::{Action, ActionRequest, CommandState, ErrorInfo, Run, Status, Target};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

/// A store failure. Details stay in logs; callers see `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// A new action with its runs, written in one transaction before the caller hears `202`.
pub struct NewAction {
    pub id: Uuid,
    pub tenant: String,
    pub request: ActionRequest,
    pub created_at: i64,
    pub deadline: i64,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub request_id: Option<String>,
    pub subject: Option<String>,
    pub runs: Vec<NewRun>,
}

pub struct NewRun {
    pub id: Uuid,
    pub target: Target,
    pub backend: Option<String>,
    pub device_id: Option<String>,
    pub commands: Vec<CommandState>,
}

pub enum Inserted {
    Created,
    /// An action with the same idempotency key exists: its id and request hash.
    Existing {
        id: Uuid,
        request_hash: String,
    },
}

/// A run as the engine drives it.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub id: Uuid,
    pub action_id: Uuid,
    pub tenant: String,
    pub target: Target,
    pub backend: Option<String>,
    pub device_id: Option<String>,
    pub hostname: Option<String>,
    pub request: ActionRequest,
    pub states: Vec<CommandState>,
    pub status: Status,
    pub error: Option<ErrorInfo>,
    pub checkpoint: Option<serde_json::Value>,
    pub deadline: i64,
    pub cancel_requested: bool,
}

/// The proof that this process owns a run: every write is fenced by it.
#[derive(Clone, Debug)]
pub struct Lease {
    pub run_id: Uuid,
    pub owner: String,
    pub version: i64,
}

/// What the engine writes back after a step.
pub struct RunWrite<'a> {
    pub backend: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub status: Status,
    pub error: Option<&'a ErrorInfo>,
    pub states: &'a [CommandState],
    pub checkpoint: Option<&'a serde_json::Value>,
    pub next_step_at: i64,
    pub lease_until: i64,
    /// Whether anything a caller sees changed (statuses, results, errors, device). Writes
    /// that only move the checkpoint leave the action's version alone, so long-polls do not
    /// wake for them.
    pub visible: bool,
}

/// Filters of `GET /v1/actions`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    /// A device id or hostname any of the action's runs targets.
    pub device: Option<String>,
    /// Unix ms: actions created at or after.
    pub since: Option<i64>,
    pub cursor: Option<Cursor>,
    pub limit: u32,
}

/// Position in the newest-first listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id.simple())
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (at, id) = s.split_once('.')?;
        Some(Cursor { created_at: at.parse().ok()?, id: Uuid::try_parse(id).ok()? })
    }
}

/// Metadata of a stored file, with where it came from.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileMeta {
    pub id: String,
    /// The tenant the file belongs to.
    pub tenant: String,
    /// A safe file name (`[A-Za-z0-9._-]`), used in `Content-Disposition`.
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content, computed while it was stored and checked again
    /// whenever the whole file is read.
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the tenant's retention deletes the file; absent: kept until deleted.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    pub origin: FileOrigin,
}

/// How a file entered the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileSource {
    /// Fetched from an endpoint by a command (`get_file`, `execute` output, `memory_dump`).
    #[default]
    Endpoint,
    /// Sent by a caller (`POST /v1/files`).
    Upload,
}

/// Custody: where a file came from. For endpoint results, the action, run and command it is
/// the result of, the device and backend, the vendor's reference and the remote path; for
/// uploads, the caller and the name they gave.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileOrigin {
    #[serde(default)]
    pub source: FileSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The vendor's reference of the command that produced the file (e.g. `session:command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_ref: Option<String>,
    /// The path on the endpoint, when the command named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_path: Option<String>,
    /// The caller (`sub`) who uploaded the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The name the uploader gave, as sent (it passed the upload name checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_name: Option<String>,
    /// The `X-Request-ID` of the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a crash of the process (what the engine's
            // restart guarantees need); only an OS crash may lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("schemas/migrations/sqlite").run(&pool).await?;
        Ok(Store { pool })
    }

    /// The pool, for the modules that keep their own tables here (audit).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn insert_action(&self, action: &NewAction) -> Result<Inserted> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(key) = &action.idempotency_key {
            let existing = sqlx::query(
                "SELECT id, request_hash FROM actions WHERE tenant = ?1 AND idempotency_key = ?2",
            )
            .bind(&action.tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                return Ok(Inserted::Existing {
                    id: parse_uuid(row.get("id"))?,
                    request_hash: row.get("request_hash"),
                });
            }
        }
        sqlx::query(
            "INSERT INTO actions (id, tenant, request_json, status, created_at, updated_at, deadline,
                idempotency_key, request_hash, request_id, subject)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(action.id.to_string())
        .bind(&action.tenant)
        .bind(to_json(&action.request)?)
        .bind(action.created_at)
        .bind(action.deadline)
        .bind(&action.idempotency_key)
        .bind(&action.request_hash)
        .bind(&action.request_id)
        .bind(&action.subject)
        .execute(&mut *tx)
        .await?;
        for (position, run) in action.runs.iter().enumerate() {
            sqlx::query(
                "INSERT INTO runs (id, action_id, tenant, position, target_json, backend, device_id,
                    status, commands_json, next_step_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?9)",
            )
            .bind(run.id.to_string())
            .bind(action.id.to_string())
            .bind(&action.tenant)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(to_json(&run.target)?)
            .bind(&run.backend)
            .bind(&run.device_id)
            .bind(to_json(&run.commands)?)
            .bind(action.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Inserted::Created)
    }

    /// The action with its runs and its change counter, if it belongs to `tenant`.
    pub async fn action(&self, tenant: &str, id: Uuid) -> Result<Option<(Action, i64)>> {
        let row = sqlx::query("SELECT * FROM actions WHERE id = ?1 AND tenant = ?2")
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let runs = sqlx::query("SELECT * FROM runs WHERE action_id = ?1 ORDER BY position")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        let version: i64 = row.get("version");
        Ok(Some((assemble(&row, &runs)?, version)))
    }

    /// The change counter and status of an action (cheap; for long-polls).
    pub async fn action_version(&self, tenant: &str, id: Uuid) -> Result<Option<(i64, Status)>> {
        let row = sqlx::query("SELECT version, status FROM actions WHERE id = ?1 AND tenant = ?2")
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.get("version"), parse_status(r.get("status"))?))).transpose()
    }

    /// How many of the tenant's actions still have work outstanding (a run queued, dispatched
    /// or running): the count under `tenants.<id>.limits.max_actions_in_flight`.
    pub async fn unfinished_actions(&self, tenant: &str) -> Result<u64> {
        // Through the partial index of unfinished runs: the work in flight, not the tenant's
        // whole history (the planner would otherwise pick `runs_by_device` and read it all).
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT action_id) FROM runs INDEXED BY runs_claimable
             WHERE status IN ('queued', 'dispatched', 'running') AND tenant = ?1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A page of the tenant's actions, newest first, and the cursor of the next page.
    pub async fn list(&self, tenant: &str, q: &ListQuery) -> Result<(Vec<Action>, Option<Cursor>)> {
        let limit = i64::from(q.limit.clamp(1, 500));
        let rows = sqlx::query(
            "SELECT * FROM actions a
             WHERE a.tenant = ?1
               AND (?2 IS NULL OR a.status = ?2)
               AND (?3 IS NULL OR a.created_at >= ?3)
               AND (?4 IS NULL OR EXISTS (SELECT 1 FROM runs r WHERE r.action_id = a.id
                        AND (r.device_id = ?4 OR r.hostname = ?4 COLLATE NOCASE
                             OR r.target_json LIKE '%' || ?4 || '%')))
               AND (?5 IS NULL OR (a.created_at, a.id) < (?5, ?6))
             ORDER BY a.created_at DESC, a.id DESC
             LIMIT ?7",
        )
        .bind(tenant)
        .bind(q.status.map(Status::as_str))
        .bind(q.since)
        .bind(&q.device)
        .bind(q.cursor.map(|c| c.created_at))
        .bind(q.cursor.map(|c| c.id.to_string()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let mut actions = Vec::with_capacity(rows.len());
        for row in rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            let id: String = row.get("id");
            let runs = sqlx::query("SELECT * FROM runs WHERE action_id = ?1 ORDER BY position")
                .bind(&id)
                .fetch_all(&self.pool)
                .await?;
            actions.push(assemble(row, &runs)?);
        }
        let next = if more {
            actions.last().map(|a: &Action| Cursor {
                created_at: i64::try_from(a.created_at.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(0),
                id: a.id,
            })
        } else {
            None
        };
        Ok((actions, next))
    }

    /// Marks the action as cancel-requested. Returns the ids of its unfinished runs, or `None`
    /// when the tenant has no such action.
    pub async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<Option<Vec<Uuid>>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE actions SET cancel_requested = 1, version = version + 1, updated_at = ?3
             WHERE id = ?1 AND tenant = ?2",
        )
        .bind(id.to_string())
        .bind(tenant)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        // Runs that sleep until a far `next_step_at` must be looked at now.
        let rows = sqlx::query(
            "UPDATE runs SET next_step_at = ?2 WHERE action_id = ?1
               AND status IN ('queued', 'dispatched', 'running') RETURNING id",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|r| parse_uuid(r.get("id"))).collect::<Result<_>>().map(Some)
    }

    /// Claims up to `limit` unfinished runs that are due and not leased by a live owner.
    pub async fn claim(&self, owner: &str, lease: Duration, limit: u32) -> Result<Vec<Lease>> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "UPDATE runs SET lease_owner = ?1, lease_expires_at = ?2, lease_version = lease_version + 1
             WHERE id IN (
                SELECT id FROM runs
                WHERE status IN ('queued', 'dispatched', 'running') AND next_step_at <= ?3
                  AND (lease_owner IS NULL OR lease_expires_at < ?3 OR lease_owner = ?1)
                ORDER BY next_step_at LIMIT ?4)
               AND (lease_owner IS NULL OR lease_owner <> ?1)
             RETURNING id, lease_version",
        )
        .bind(owner)
        .bind(now + duration_ms(lease))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    run_id: parse_uuid(r.get("id"))?,
                    owner: owner.to_owned(),
                    version: r.get("lease_version"),
                })
            })
            .collect()
    }

    /// Extends every lease `owner` holds on unfinished runs.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE runs SET lease_expires_at = ?2
             WHERE lease_owner = ?1 AND status IN ('queued', 'dispatched', 'running')",
        )
        .bind(owner)
        .bind(now_ms() + duration_ms(lease))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Gives up `owner`'s leases (graceful shutdown) so another process resumes at once.
    pub async fn release_leases(&self, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Releases one lease after its run finished or was handed back.
    pub async fn release(&self, lease: &Lease, next_step_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, next_step_at = ?4
             WHERE id = ?1 AND lease_owner = ?2 AND lease_version = ?3",
        )
        .bind(lease.run_id.to_string())
        .bind(&lease.owner)
        .bind(lease.version)
        .bind(next_step_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn load_run(&self, run_id: Uuid) -> Result<RunRecord> {
        let row = sqlx::query(
            "SELECT r.*, a.request_json, a.deadline, a.cancel_requested
             FROM runs r JOIN actions a ON a.id = r.action_id WHERE r.id = ?1",
        )
        .bind(run_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(RunRecord {
            id: run_id,
            action_id: parse_uuid(row.get("action_id"))?,
            tenant: row.get("tenant"),
            target: from_json(row.get("target_json"))?,
            backend: row.get("backend"),
            device_id: row.get("device_id"),
            hostname: row.get("hostname"),
            request: from_json(row.get("request_json"))?,
            states: from_json(row.get("commands_json"))?,
            status: parse_status(row.get("status"))?,
            error: row.get::<Option<String>, _>("error_json").map(|s| from_json(&s)).transpose()?,
            checkpoint: row
                .get::<Option<String>, _>("checkpoint_json")
                .map(|s| from_json(&s))
                .transpose()?,
            deadline: row.get("deadline"),
            cancel_requested: row.get::<i64, _>("cancel_requested") != 0,
        })
    }

    /// Whether the caller asked to cancel the run's action.
    pub async fn cancel_requested(&self, action_id: Uuid) -> Result<bool> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT cancel_requested FROM actions WHERE id = ?1")
                .bind(action_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(0) != 0)
    }

    /// Writes a run's progress, fenced by its lease, and refreshes the action's aggregate
    /// status. `false` means the lease was lost: the caller must stop driving the run.
    pub async fn save_run(&self, lease: &Lease, w: &RunWrite<'_>) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE runs SET backend = ?4, device_id = ?5, hostname = ?6, status = ?7, error_json = ?8,
                commands_json = ?9, checkpoint_json = ?10, next_step_at = ?11, lease_expires_at = ?12,
                updated_at = ?13
             WHERE id = ?1 AND lease_owner = ?2 AND lease_version = ?3",
        )
        .bind(lease.run_id.to_string())
        .bind(&lease.owner)
        .bind(lease.version)
        .bind(w.backend)
        .bind(w.device_id)
        .bind(w.hostname)
        .bind(w.status.as_str())
        .bind(w.error.map(to_json).transpose()?)
        .bind(to_json(w.states)?)
        .bind(w.checkpoint.map(to_json).transpose()?)
        .bind(w.next_step_at)
        .bind(w.lease_until)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        if !w.visible {
            tx.commit().await?;
            return Ok(true);
        }
        let action_id: String = sqlx::query_scalar("SELECT action_id FROM runs WHERE id = ?1")
            .bind(lease.run_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM runs WHERE action_id = ?1")
                .bind(&action_id)
                .fetch_all(&mut *tx)
                .await?;
        let statuses = statuses.iter().map(|s| parse_status(s)).collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "UPDATE actions SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
        )
        .bind(&action_id)
        .bind(Status::of_action(statuses).as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn insert_file(&self, meta: &FileMeta) -> Result<()> {
        sqlx::query(
            "INSERT INTO files (id, tenant, name, size, sha256, created_at, origin_json, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&meta.id)
        .bind(&meta.tenant)
        .bind(&meta.name)
        .bind(i64::try_from(meta.size).unwrap_or(i64::MAX))
        .bind(&meta.sha256)
        .bind(to_ms(meta.created_at))
        .bind(to_json(&meta.origin)?)
        .bind(meta.expires_at.map(to_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A live file of `tenant`: neither deleted nor expired at `now` (unix ms).
    pub async fn file(&self, tenant: &str, id: &str, now: i64) -> Result<Option<FileMeta>> {
        let row = sqlx::query(
            "SELECT * FROM files WHERE id = ?1 AND tenant = ?2 AND deleted_at IS NULL
               AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(id)
        .bind(tenant)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FileMeta {
                id: r.get("id"),
                tenant: r.get("tenant"),
                name: r.get("name"),
                size: u64::try_from(r.get::<i64, _>("size")).unwrap_or(0),
                sha256: r.get("sha256"),
                created_at: from_ms(r.get("created_at")),
                expires_at: r.get::<Option<i64>, _>("expires_at").map(from_ms),
                origin: from_json(r.get("origin_json"))?,
            })
        })
        .transpose()
    }

    /// Hides a file at once (its content is deleted next). `false` if there is no such live
    /// file.
    pub async fn mark_file_deleted(&self, tenant: &str, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE files SET deleted_at = ?3 WHERE id = ?1 AND tenant = ?2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(tenant)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// `(tenant, id)` of up to `limit` files deleted or expired at `now`, whose content is to
    /// be purged.
    pub async fn files_to_purge(&self, now: i64, limit: u32) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT tenant, id FROM files WHERE deleted_at IS NOT NULL OR expires_at <= ?1
             ORDER BY id LIMIT ?2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("tenant"), r.get("id"))).collect())
    }

    /// Forgets a file whose content is gone.
    pub async fn purge_file(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM files WHERE id = ?1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}

fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn assemble(row: &sqlx::sqlite::SqliteRow, runs: &[sqlx::sqlite::SqliteRow]) -> Result<Action> {
    let request: ActionRequest = from_json(row.get("request_json"))?;
    let runs = runs
        .iter()
        .map(|r| {
            Ok(Run {
                id: parse_uuid(r.get("id"))?,
                target: from_json(r.get("target_json"))?,
                backend: r.get("backend"),
                device_id: r.get("device_id"),
                hostname: r.get("hostname"),
                status: parse_status(r.get("status"))?,
                error: r
                    .get::<Option<String>, _>("error_json")
                    .map(|s| from_json(&s))
                    .transpose()?,
                commands: from_json(r.get("commands_json"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Action {
        id: parse_uuid(row.get("id"))?,
        status: parse_status(row.get("status"))?,
        comment: request.comment,
        on_error: request.on_error,
        commands: request.commands,
        runs,
        created_at: from_ms(row.get("created_at")),
        updated_at: from_ms(row.get("updated_at")),
        deadline: Some(from_ms(row.get("deadline"))),
        cancel_requested: row.get::<i64, _>("cancel_requested") != 0,
        request_id: row.get("request_id"),
    })
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::try_parse(s).map_err(|e| StoreError::Corrupt(format!("bad uuid {s:?}: {e}")))
}

fn parse_status(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad status {s:?}")))
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}
