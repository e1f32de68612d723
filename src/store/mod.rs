//! The durable store: actions, runs (with their leases and adapter checkpoints), file metadata
//! and the audit trail, in SQLite or PostgreSQL through sqlx (the configuration's `[store]`
//! picks: `url = "postgres://…"`, else the SQLite file at `path`).
//!
//! The store is the single source of truth for action state. One implementation serves both
//! databases: statements are written once where the dialects agree and side by side
//! ([`db::sql!`]) where they do not; rows decode into the same structs ([`db`]).
//!
//! - SQLite serves one gateway replica: leases still guard every write (so a restarted process
//!   never races the run it took over).
//! - PostgreSQL serves several: runs are claimed with `FOR UPDATE SKIP LOCKED`, every driver
//!   write is fenced by the lease, a dead replica's runs are claimed again once their leases
//!   expire, changes are announced with NOTIFY ([`Store::change_listener`]) and vendor budgets
//!   are rows ([`Store::shared_budget`]).

pub mod apikeys;
pub mod cb_commands;
pub mod cb_front_door;
pub(crate) mod db;
pub mod events;
mod files;
pub mod postgres;
pub mod retention;
mod runs;
mod sqlite;
pub mod webhooks;

use std::path::Path;
use std::time::Duration;

use edrgate_adapter::{
    Action, ActionRequest, ActionSummary, Command, CommandState, ErrorInfo, INLINE_RUNS, OnError,
    Run, Status, Target,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use db::Dialect;
pub(crate) use db::{Db, Tx, args, sql};
pub use runs::{Claim, Claimed, Saved};

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

/// Not `Debug`: a PostgreSQL pool's options hold the password.
#[derive(Clone)]
pub struct Store {
    db: Db,
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
    pub request: RunRequest,
    pub states: Vec<CommandState>,
    pub status: Status,
    pub error: Option<ErrorInfo>,
    pub checkpoint: Option<serde_json::Value>,
    pub deadline: i64,
    pub cancel_requested: bool,
}

/// What a run needs of its action's request: the commands and how to run them. Not the
/// action's targets: every run of a 1,000-target action holding all 1,000 of them made a
/// fan-out's memory (and each claim's parsing) grow with the square of its size. Read from the
/// action's `request_json`, whose other fields are skipped unparsed into values.
#[derive(Clone, Debug, Deserialize)]
pub struct RunRequest {
    pub commands: Vec<Command>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
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
    /// The commands (indexes into `states`) whose result this write stores; `None`: every
    /// result in `states` (a first write, tools and tests). Results are rows of their own,
    /// so a step writes only those that are new ([`Store::save_run`]).
    pub new_results: Option<&'a [usize]>,
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

    /// Exactly what [`Cursor::encode`] writes (the API declares it as
    /// `^[0-9]{1,18}\.[0-9a-f]{32}$`): no sign, no other spelling of the id.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (at, id) = s.split_once('.')?;
        let digits = (1..=18).contains(&at.len()) && at.bytes().all(|b| b.is_ascii_digit());
        let simple = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(digits && simple) {
            return None;
        }
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

/// RFC 3339 text of a time (event timestamps).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The NOTIFY channel of changed actions (payload: the action id), PostgreSQL only.
pub(crate) const CHANGES_CHANNEL: &str = "edrgate_actions";

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        Ok(Store { db: sqlite::open(path).await? })
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://…`) and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Ok(Store { db: postgres::connect(url, max_connections).await? })
    }

    /// The store `[store]` configures: PostgreSQL when `url` is set, else SQLite at `path`.
    pub async fn from_config(config: &crate::config::StoreConfig) -> Result<Store> {
        match &config.url {
            Some(url) => {
                use secrecy::ExposeSecret as _;
                Store::connect(url.expose_secret(), config.max_connections).await
            }
            None => Store::open(&config.path).await,
        }
    }

    /// Applies pending migrations (also done by `open` and `connect`); the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let (migrator, applied) = match &self.db {
            Db::Sqlite(p) => {
                let m = sqlite::migrator();
                m.run(p).await?;
                let applied: Vec<(i64,)> =
                    self.db.fetch_all("SELECT version FROM _sqlx_migrations", args![]).await?;
                (m, applied)
            }
            Db::Postgres(p) => {
                let m = postgres::migrator();
                m.run(p).await?;
                let applied: Vec<(i64,)> =
                    self.db.fetch_all("SELECT version FROM _sqlx_migrations", args![]).await?;
                (m, applied)
            }
        };
        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
        Ok(migrator.iter().map(|m| m.version).filter(|v| applied.contains(v)).collect())
    }

    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<()> {
        self.db.execute("SELECT 1", args![]).await?;
        Ok(())
    }

    /// The vendor budget the replicas share: rows in PostgreSQL (renewed while held, by a task
    /// that stops with `shutdown`), in memory with SQLite (one replica).
    pub fn shared_budget(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::sync::Arc<dyn edrgate_adapter::SharedBudget> {
        match &self.db {
            Db::Sqlite(_) => edrgate_adapter::LocalBudget::new(),
            Db::Postgres(p) => postgres::PgBudget::start(p.clone(), shutdown),
        }
    }

    /// Changes to actions made by any replica, as a stream of action ids (PostgreSQL's
    /// LISTEN/NOTIFY). `None` with SQLite, where the engine's own announcements are all there is.
    pub async fn change_listener(&self) -> Result<Option<postgres::ChangeListener>> {
        match &self.db {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(p) => Ok(Some(postgres::ChangeListener::connect(p).await?)),
        }
    }

    /// Within `tx`: tells the other replicas that `action_id` changed (and whether a cancel
    /// was requested: the replica driving its runs must stop them), on commit.
    async fn announce(&self, tx: &mut Tx, action_id: &str, cancel: bool) -> Result<()> {
        if self.db.dialect() == Dialect::Postgres {
            let payload = if cancel { format!("{action_id} cancel") } else { action_id.to_owned() };
            tx.execute("SELECT pg_notify($1, $2)", args![CHANGES_CHANNEL, payload]).await?;
        }
        Ok(())
    }

    pub async fn insert_action(&self, action: &NewAction) -> Result<Inserted> {
        // The callback URL has its own column: `request_json` is what answers show.
        let callback_url = action.request.callback_url.as_deref();
        let request = ActionRequest { callback_url: None, ..action.request.clone() };
        // Every run of a new action starts queued, with the same command states.
        let first: Vec<Status> = action
            .runs
            .first()
            .map(|r| r.commands.iter().map(|c| c.status).collect())
            .unwrap_or_default();
        let summary = ActionSummary::of(
            &request.commands,
            action.runs.iter().map(|_| (Status::Queued, first.as_slice())),
        );
        let mut tx = self.db.begin().await?;
        // A concurrent submission with the same key (another replica) makes this insert a
        // no-op once it commits; the existing action is read after it.
        let inserted = tx
            .execute(
                "INSERT INTO actions (id, tenant, request_json, status, created_at, updated_at,
                    deadline, idempotency_key, request_hash, request_id, subject, callback_url,
                    summary_json)
                 VALUES ($1, $2, $3, 'queued', $4, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL
                 DO NOTHING",
                args![
                    action.id.to_string(),
                    &action.tenant,
                    to_json(&request)?,
                    action.created_at,
                    action.deadline,
                    &action.idempotency_key,
                    &action.request_hash,
                    &action.request_id,
                    &action.subject,
                    callback_url,
                    to_json(&summary)?,
                ],
            )
            .await?;
        if inserted == 0 {
            let (id, request_hash): (String, String) = tx
                .fetch_one(
                    "SELECT id, request_hash FROM actions WHERE tenant = $1 AND idempotency_key = $2",
                    args![&action.tenant, &action.idempotency_key],
                )
                .await?;
            return Ok(Inserted::Existing { id: parse_uuid(&id)?, request_hash });
        }
        // Every run in one statement (a 1,000-target submission is one write, not a thousand):
        // the runs as one JSON array, each with what differs; what they share is bound once.
        let runs: Vec<serde_json::Value> = action
            .runs
            .iter()
            .map(|run| {
                // A hostname target is findable by its hostname (`?device=`) before it resolves.
                let hostname = match &run.target {
                    Target::Hostname { hostname } => Some(hostname.as_str()),
                    Target::Device { .. } => None,
                };
                serde_json::json!({
                    "id": run.id.to_string(),
                    "target": run.target,
                    "backend": run.backend,
                    "device_id": run.device_id,
                    "hostname": hostname,
                })
            })
            .collect();
        // All runs of a new action start with the same command states.
        let commands = action.runs.first().map(|r| r.commands.as_slice()).unwrap_or_default();
        tx.execute(
            sql!(self.db.dialect(),
                sqlite: "INSERT INTO runs (id, action_id, tenant, position, target_json, backend,
                        device_id, hostname, status, commands_json, next_step_at, updated_at,
                        command_statuses)
                    SELECT json_extract(r.value, '$.id'), $2, $3, CAST(r.key AS INTEGER),
                        json_extract(r.value, '$.target'), json_extract(r.value, '$.backend'),
                        json_extract(r.value, '$.device_id'), json_extract(r.value, '$.hostname'),
                        'queued', $4, $5, $5, $6
                    FROM json_each($1) r",
                postgres: "INSERT INTO runs (id, action_id, tenant, position, target_json, backend,
                        device_id, hostname, status, commands_json, next_step_at, updated_at,
                        command_statuses)
                    SELECT r.value->>'id', $2, $3, r.ord - 1, (r.value->'target')::text,
                        r.value->>'backend', r.value->>'device_id', r.value->>'hostname',
                        'queued', $4, $5, $5, $6
                    FROM json_array_elements($1::text::json) WITH ORDINALITY AS r(value, ord)"),
            args![
                to_json(&runs)?,
                action.id.to_string(),
                &action.tenant,
                to_json(commands)?,
                action.created_at,
                command_statuses(commands)?,
            ],
        )
        .await?;
        let id = action.id.to_string();
        let data = serde_json::json!({
            "action_id": &id,
            "status": Status::Queued.as_str(),
            "commands": action.request.commands.iter().map(|c| c.kind().as_str()).collect::<Vec<_>>(),
            "runs": action.runs.len(),
            "created_at": rfc3339(from_ms(action.created_at)),
        });
        self.append_event(&mut tx, &action.tenant, events::EventType::ActionCreated, &id, data)
            .await?;
        self.announce(&mut tx, &id, false).await?;
        tx.commit().await?;
        Ok(Inserted::Created)
    }

    /// The action with its runs and its change counter, if it belongs to `tenant`.
    pub async fn action(&self, tenant: &str, id: Uuid) -> Result<Option<(Action, i64)>> {
        let row: Option<ActionRow> = self
            .db
            .fetch_optional(
                "SELECT * FROM actions WHERE id = $1 AND tenant = $2",
                args![id.to_string(), tenant],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let version = row.version;
        let mut actions = self.assemble_all(vec![row]).await?;
        Ok(actions.pop().map(|a| (a, version)))
    }

    /// Actions as answers show them: each with its first [`INLINE_RUNS`] runs (in target
    /// order), the cursor of the rest, and the summary over all of them. One query reads the
    /// first runs of every action (a listing's page included); an action with more runs adds
    /// a query of its runs' statuses only, so a read costs the same whatever the number of
    /// targets.
    async fn assemble_all(&self, rows: Vec<ActionRow>) -> Result<Vec<Action>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids = to_json(&rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())?;
        let runs: Vec<RunRow> = self
            .db
            .fetch_all(
                sql!(self.db.dialect(),
                    sqlite: "SELECT * FROM runs WHERE action_id IN (SELECT value FROM json_each($1))
                               AND position <= $2 ORDER BY action_id, position",
                    postgres: "SELECT * FROM runs
                               WHERE action_id IN (SELECT json_array_elements_text($1::text::json))
                                 AND position <= $2 ORDER BY action_id, position"),
                args![ids, i64::try_from(INLINE_RUNS).unwrap_or(i64::MAX)],
            )
            .await?;
        let mut by_action: std::collections::HashMap<String, Vec<RunRow>> =
            std::collections::HashMap::new();
        for run in runs {
            by_action.entry(run.action_id.clone()).or_default().push(run);
        }
        let mut actions = Vec::with_capacity(rows.len());
        for row in rows {
            let runs = by_action.remove(&row.id).unwrap_or_default();
            actions.push(self.assemble(row, runs).await?);
        }
        Ok(actions)
    }

    /// The summary of an action stored before its summary was kept (migration 0021), counted
    /// from its runs' short status columns.
    pub(super) async fn count_summary(
        &self,
        action_id: &str,
        request: &ActionRequest,
    ) -> Result<ActionSummary> {
        let all: Vec<(String, String)> = self
            .db
            .fetch_all(
                "SELECT status, command_statuses FROM runs WHERE action_id = $1",
                args![action_id],
            )
            .await?;
        summary_of(request, &all)
    }

    /// One action from its row and its first runs (up to `INLINE_RUNS + 1`, by position).
    async fn assemble(&self, row: ActionRow, runs: Vec<RunRow>) -> Result<Action> {
        let request: ActionRequest = from_json(&row.request_json)?;
        let (runs, next) = if runs.len() <= INLINE_RUNS {
            (runs, None)
        } else {
            let mut runs = runs;
            runs.truncate(INLINE_RUNS);
            let next = runs.last().map(|r| r.position.to_string());
            (runs, next)
        };
        let summary = match &row.summary_json {
            Some(summary) => from_json(summary)?,
            None => self.count_summary(&row.id, &request).await?,
        };
        let runs = self.with_results(runs).await?;
        Ok(Action {
            id: parse_uuid(&row.id)?,
            status: parse_status(&row.status)?,
            comment: request.comment,
            on_error: request.on_error,
            commands: request.commands,
            runs,
            created_at: from_ms(row.created_at),
            updated_at: from_ms(row.updated_at),
            deadline: Some(from_ms(row.deadline)),
            cancel_requested: row.cancel_requested,
            request_id: row.request_id,
            summary,
            runs_next_cursor: next,
        })
    }

    /// A page of the tenant's action's runs in target order, after `after` (a position, the
    /// cursor of the previous page), optionally of one status; and the next page's cursor.
    /// `None` when the tenant has no such action.
    pub async fn runs_page(
        &self,
        tenant: &str,
        action_id: Uuid,
        status: Option<Status>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Option<(Vec<Run>, Option<String>)>> {
        let id = action_id.to_string();
        let exists: Option<(String,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM actions WHERE id = $1 AND tenant = $2",
                args![&id, tenant],
            )
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let limit = i64::from(limit.clamp(1, 500));
        let rows: Vec<RunRow> = self
            .db
            .fetch_all(
                sql!(self.db.dialect(),
                    sqlite: "SELECT * FROM runs WHERE action_id = $1 AND position > $2
                               AND ($3 IS NULL OR status = $3)
                             ORDER BY position LIMIT $4",
                    postgres: "SELECT * FROM runs WHERE action_id = $1 AND position > $2
                                 AND ($3::text IS NULL OR status = $3)
                               ORDER BY position LIMIT $4"),
                args![&id, after.unwrap_or(-1), status.map(Status::as_str), limit + 1],
            )
            .await?;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if rows.len() > page {
            rows.get(page - 1).map(|r| r.position.to_string())
        } else {
            None
        };
        let runs = self.with_results(rows.into_iter().take(page).collect()).await?;
        Ok(Some((runs, next)))
    }

    /// One run of the tenant's action.
    pub async fn run(&self, tenant: &str, action_id: Uuid, run_id: Uuid) -> Result<Option<Run>> {
        let row: Option<RunRow> = self
            .db
            .fetch_optional(
                "SELECT * FROM runs WHERE id = $1 AND action_id = $2 AND tenant = $3",
                args![run_id.to_string(), action_id.to_string(), tenant],
            )
            .await?;
        Ok(self.with_results(row.into_iter().collect()).await?.pop())
    }

    /// Runs from their rows, with their commands' results (`command_results`) in place: one
    /// query for all of them.
    async fn with_results(&self, rows: Vec<RunRow>) -> Result<Vec<Run>> {
        let mut runs = rows.into_iter().map(RunRow::into_run).collect::<Result<Vec<_>>>()?;
        if runs.is_empty() {
            return Ok(runs);
        }
        let ids = to_json(&runs.iter().map(|r| r.id.to_string()).collect::<Vec<_>>())?;
        let results: Vec<(String, i64, String)> = self
            .db
            .fetch_all(
                sql!(self.db.dialect(),
                    sqlite: "SELECT run_id, idx, result_json FROM command_results
                             WHERE run_id IN (SELECT value FROM json_each($1))",
                    postgres: "SELECT run_id, idx, result_json FROM command_results
                               WHERE run_id IN (SELECT json_array_elements_text($1::text::json))"),
                args![ids],
            )
            .await?;
        let mut by_run: std::collections::HashMap<String, Vec<(i64, String)>> =
            std::collections::HashMap::new();
        for (run_id, idx, result) in results {
            by_run.entry(run_id).or_default().push((idx, result));
        }
        for run in &mut runs {
            for (idx, result) in by_run.remove(&run.id.to_string()).unwrap_or_default() {
                let state = usize::try_from(idx).ok().and_then(|i| run.commands.get_mut(i));
                if let Some(state) = state {
                    state.result = Some(from_json(&result)?);
                }
            }
        }
        Ok(runs)
    }

    /// The change counter and status of an action (cheap; for long-polls).
    pub async fn action_version(&self, tenant: &str, id: Uuid) -> Result<Option<(i64, Status)>> {
        let row: Option<(i64, String)> = self
            .db
            .fetch_optional(
                "SELECT version, status FROM actions WHERE id = $1 AND tenant = $2",
                args![id.to_string(), tenant],
            )
            .await?;
        row.map(|(v, s)| Ok((v, parse_status(&s)?))).transpose()
    }

    /// How many of the tenant's actions still have work outstanding (a run queued, dispatched
    /// or running): the count under `tenants.<id>.limits.max_actions_in_flight`.
    pub async fn unfinished_actions(&self, tenant: &str) -> Result<u64> {
        // Through the partial index of unfinished runs: the work in flight, not the tenant's
        // whole history (SQLite's planner would otherwise pick `runs_by_device` and read it
        // all; PostgreSQL has `runs_unfinished_by_tenant`).
        let (count,): (i64,) = self
            .db
            .fetch_one(
                sql!(self.db.dialect(),
                    sqlite: "SELECT COUNT(DISTINCT action_id) FROM runs INDEXED BY runs_claimable
                             WHERE status IN ('queued', 'dispatched', 'running') AND tenant = $1",
                    postgres: "SELECT COUNT(DISTINCT action_id) FROM runs
                               WHERE status IN ('queued', 'dispatched', 'running') AND tenant = $1"),
                args![tenant],
            )
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Unfinished runs by status, across every replica (the `edrgate_runs` gauge).
    pub async fn unfinished_run_counts(&self) -> Result<Vec<(String, i64)>> {
        self.db
            .fetch_all(
                "SELECT status, COUNT(*) AS n FROM runs
                 WHERE status IN ('queued', 'dispatched', 'running') GROUP BY status",
                args![],
            )
            .await
    }

    /// A page of the tenant's actions, newest first, and the cursor of the next page.
    pub async fn list(&self, tenant: &str, q: &ListQuery) -> Result<(Vec<Action>, Option<Cursor>)> {
        let limit = i64::from(q.limit.clamp(1, 500));
        let statement = listing_statement(
            self.db.dialect(),
            q.status.is_some(),
            q.device.is_some(),
            q.cursor.is_some(),
        );
        let rows: Vec<ActionRow> = self
            .db
            .fetch_all(
                statement,
                args![
                    tenant,
                    q.status.map(Status::as_str),
                    q.since,
                    &q.device,
                    q.cursor.map(|c| c.created_at),
                    q.cursor.map(|c| c.id.to_string()),
                    limit + 1,
                ],
            )
            .await?;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > page;
        let rows: Vec<ActionRow> = rows.into_iter().take(page).collect();
        let actions = self.assemble_all(rows).await?;
        let next = if more {
            actions.last().map(|a: &Action| Cursor { created_at: to_ms(a.created_at), id: a.id })
        } else {
            None
        };
        Ok((actions, next))
    }

    /// Marks the action as cancel-requested. Returns the ids of its unfinished runs, or `None`
    /// when the tenant has no such action.
    pub async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<Option<Vec<Uuid>>> {
        let mut tx = self.db.begin().await?;
        // The action row first, then its runs: the order `save_run` locks them in.
        let updated = tx
            .execute(
                "UPDATE actions SET cancel_requested = TRUE, version = version + 1, updated_at = $3
                 WHERE id = $1 AND tenant = $2",
                args![id.to_string(), tenant, now_ms()],
            )
            .await?;
        if updated == 0 {
            return Ok(None);
        }
        // Runs that sleep until a far `next_step_at` must be looked at now.
        let rows: Vec<(String,)> = tx
            .fetch_all(
                "UPDATE runs SET next_step_at = $2 WHERE action_id = $1
                   AND status IN ('queued', 'dispatched', 'running') RETURNING id",
                args![id.to_string(), now_ms()],
            )
            .await?;
        self.announce(&mut tx, &id.to_string(), true).await?;
        tx.commit().await?;
        rows.iter().map(|(r,)| parse_uuid(r)).collect::<Result<_>>().map(Some)
    }
}

/// An `actions` row, as both databases return it.
#[derive(sqlx::FromRow)]
struct ActionRow {
    id: String,
    request_json: String,
    status: String,
    created_at: i64,
    updated_at: i64,
    deadline: i64,
    cancel_requested: bool,
    request_id: Option<String>,
    version: i64,
    /// The [`ActionSummary`] its runs' steps keep (NULL: stored before migration 0021).
    summary_json: Option<String>,
}

/// The columns of a `runs` row the model shows.
#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    action_id: String,
    position: i64,
    target_json: String,
    backend: Option<String>,
    device_id: Option<String>,
    hostname: Option<String>,
    status: String,
    error_json: Option<String>,
    commands_json: String,
}

/// A run with what the engine needs of its action.
#[derive(sqlx::FromRow)]
struct LoadedRunRow {
    #[sqlx(flatten)]
    run: RunRow,
    action_id: String,
    tenant: String,
    checkpoint_json: Option<String>,
    request_json: String,
    deadline: i64,
    cancel_requested: bool,
}

impl RunRow {
    fn into_run(self) -> Result<Run> {
        Ok(Run {
            id: parse_uuid(&self.id)?,
            target: from_json(&self.target_json)?,
            backend: self.backend,
            device_id: self.device_id,
            hostname: self.hostname,
            status: parse_status(&self.status)?,
            error: self.error_json.as_deref().map(from_json).transpose()?,
            commands: from_json(&self.commands_json)?,
        })
    }
}

/// The statement of [`Store::list`] for a listing with or without a status filter, a device
/// filter and a cursor, `$1`…`$7` bound as `list` binds them (public for the plans `benches/store_scale.rs`
/// prints).
pub fn listing_statement(
    dialect: Dialect,
    status: bool,
    device: bool,
    cursor: bool,
) -> &'static str {
    // One statement per combination of filters and a cursor, so each can use its index: the
    // tenant's listing (`actions_listing`) or status (`actions_by_status`) index walked from
    // the cursor on, or, with a device filter, the device's runs (`runs_by_device`,
    // `runs_by_hostname`) and then its actions by id. An `$n IS NULL OR …` term in their place
    // makes the planners start from the top of the tenant's actions.
    macro_rules! listing {
        ($status:literal, $cursor:literal, $sqlite_tenant:literal, $sqlite_device:literal,
         $pg_device:literal) => {
            sql!(dialect,
                sqlite: concat!("SELECT * FROM actions a WHERE ", $sqlite_tenant, " AND ", $status,
                    " AND ($3 IS NULL OR a.created_at >= $3) AND ", $sqlite_device, " AND ",
                    $cursor, " ORDER BY a.created_at DESC, a.id DESC LIMIT $7"),
                postgres: concat!("SELECT * FROM actions a WHERE a.tenant = $1 AND ", $status,
                    " AND ($3::bigint IS NULL OR a.created_at >= $3) AND ", $pg_device, " AND ",
                    $cursor, " ORDER BY a.created_at DESC, a.id DESC LIMIT $7"))
        };
        ($status:literal, $cursor:literal, device) => {
            // SQLite: the unary `+` keeps the tenant's listing index out of the plan, so the
            // device's few actions are looked up by id and sorted, not found by walking the
            // tenant's listing until a page of them turns up.
            listing!($status, $cursor, "+a.tenant = $1",
                "a.id IN (SELECT r.action_id FROM runs r WHERE r.tenant = $1 AND r.device_id = $4
                          UNION SELECT r.action_id FROM runs r
                          WHERE r.tenant = $1 AND r.hostname = $4 COLLATE NOCASE)",
                "a.id IN (SELECT r.action_id FROM runs r WHERE r.tenant = $1 AND r.device_id = $4
                          UNION SELECT r.action_id FROM runs r
                          WHERE r.tenant = $1 AND lower(r.hostname) = lower($4))")
        };
        ($status:literal, $cursor:literal) => {
            listing!($status, $cursor, "a.tenant = $1", "($4 || '') IS NULL", "($4 || '') IS NULL")
        };
    }
    match (status, device, cursor) {
        (false, false, false) => listing!("($2 || '') IS NULL", "($5 || $6) IS NULL"),
        (false, false, true) => listing!("($2 || '') IS NULL", "(a.created_at, a.id) < ($5, $6)"),
        (true, false, false) => listing!("a.status = $2", "($5 || $6) IS NULL"),
        (true, false, true) => listing!("a.status = $2", "(a.created_at, a.id) < ($5, $6)"),
        (false, true, false) => listing!("($2 || '') IS NULL", "($5 || $6) IS NULL", device),
        (false, true, true) => {
            listing!("($2 || '') IS NULL", "(a.created_at, a.id) < ($5, $6)", device)
        }
        (true, true, false) => listing!("a.status = $2", "($5 || $6) IS NULL", device),
        (true, true, true) => listing!("a.status = $2", "(a.created_at, a.id) < ($5, $6)", device),
    }
}

/// The summary of runs given as (`status`, `command_statuses`) columns.
pub(super) fn summary_of(
    request: &ActionRequest,
    runs: &[(String, String)],
) -> Result<ActionSummary> {
    let counted = runs
        .iter()
        .map(|(status, commands)| {
            let commands: Vec<String> = from_json(commands)?;
            Ok((
                parse_status(status)?,
                commands.iter().map(|c| parse_status(c)).collect::<Result<Vec<_>>>()?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ActionSummary::of(&request.commands, counted.iter().map(|(s, c)| (*s, c.as_slice()))))
}

/// `runs.commands_json`: the commands' states without their results, which are rows of
/// `command_results`.
pub(crate) fn commands_json(states: &[CommandState]) -> Result<String> {
    #[derive(Serialize)]
    struct Stored<'a> {
        index: usize,
        #[serde(rename = "type")]
        kind: edrgate_adapter::CommandKind,
        status: Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a ErrorInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vendor_ref: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vendor_status: Option<&'a str>,
    }
    let stored: Vec<Stored<'_>> = states
        .iter()
        .map(|s| Stored {
            index: s.index,
            kind: s.kind,
            status: s.status,
            error: s.error.as_ref(),
            vendor_ref: s.vendor_ref.as_deref(),
            vendor_status: s.vendor_status.as_deref(),
        })
        .collect();
    to_json(&stored)
}

/// `runs.command_statuses`: the commands' statuses, in order.
pub(crate) fn command_statuses(states: &[CommandState]) -> Result<String> {
    to_json(&states.iter().map(|c| c.status.as_str()).collect::<Vec<_>>())
}

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
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
