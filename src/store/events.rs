//! The outbox: events about actions and runs, written in the transaction of the change they
//! report, then turned into deliveries (webhook subscriptions, per-action callbacks) and read
//! by event streams (`GET /v1/events`).
//!
//! A tenant's events are ordered by `seq`, gaplessly as readers see them (see the migration:
//! SQLite's single writer, PostgreSQL's per-tenant advisory lock held from the insert to the
//! commit), so a stream resumed after a `seq` misses nothing.

use edrgate_adapter::{ActionSummary, Run, Status};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Dialect, Result, Store, StoreError, Tx, args, from_ms, now_ms, sql};

/// What happened to an action or a run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
pub enum EventType {
    /// Accepted (`202`), with its runs queued.
    #[serde(rename = "action.created")]
    ActionCreated,
    /// One run reached a final status.
    #[serde(rename = "run.finished")]
    RunFinished,
    /// Every run reached a final status: the action's final status and summary.
    #[serde(rename = "action.finished")]
    ActionFinished,
}

impl EventType {
    pub const ALL: [EventType; 3] =
        [EventType::ActionCreated, EventType::RunFinished, EventType::ActionFinished];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ActionCreated => "action.created",
            EventType::RunFinished => "run.finished",
            EventType::ActionFinished => "action.finished",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A stored event.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Event {
    /// Position in the tenant's stream (`id:` of Server-Sent Events, `Last-Event-ID`).
    pub seq: i64,
    /// The message id (`webhook-id`), the same for every delivery of the event.
    pub id: String,
    pub tenant: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub action_id: String,
    pub created_at: i64,
    /// The JSON document delivered and streamed.
    pub body: String,
}

/// The document of an event: Standard Webhooks' recommended envelope (`type`, `timestamp`,
/// `data`), with the message id repeated inside so a stream consumer sees it too.
fn envelope(id: &str, kind: EventType, at: i64, data: Value) -> Value {
    json!({
        "id": id,
        "type": kind.as_str(),
        "timestamp": super::rfc3339(from_ms(at)),
        "data": data,
    })
}

/// What an `action.finished` event says of the runs: how many ended in each status.
pub(crate) fn run_summary(summary: &ActionSummary) -> Value {
    let counts: serde_json::Map<String, Value> = Status::ALL
        .iter()
        .map(|s| (*s, summary.runs_by_status.get(*s)))
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.as_str().to_owned(), Value::from(n)))
        .collect();
    json!({ "total": summary.runs, "by_status": counts })
}

/// A finished run as `run.finished` shows it: statuses, errors and vendor references of its
/// commands, not their results (a process list can be megabytes; the action has them).
pub(crate) fn run_data(action_id: &str, run: &Run) -> Value {
    let commands: Vec<Value> = run
        .commands
        .iter()
        .map(|c| {
            json!({
                "index": c.index,
                "type": c.kind.as_str(),
                "status": c.status.as_str(),
                "error": c.error,
            })
        })
        .collect();
    json!({
        "action_id": action_id,
        "run_id": run.id,
        "target": run.target,
        "backend": run.backend,
        "device_id": run.device_id,
        "hostname": run.hostname,
        "status": run.status.as_str(),
        "error": run.error,
        "commands": commands,
    })
}

impl Store {
    /// Within `tx`, as the last write before its commit: appends an event to the tenant's
    /// stream. On PostgreSQL the tenant's event lock is taken here and held to the commit, so
    /// the tenant's `seq` values commit in order; it is the last lock the transaction takes,
    /// so it cannot close a cycle with the row locks taken before it.
    pub(crate) async fn append_event(
        &self,
        tx: &mut Tx,
        tenant: &str,
        kind: EventType,
        action_id: &str,
        data: Value,
    ) -> Result<()> {
        if self.dialect() == Dialect::Postgres {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('edrgate_events'), hashtext($1))",
                args![tenant],
            )
            .await?;
        }
        let id = format!("msg_{}", Uuid::now_v7().simple());
        let at = now_ms();
        let body = serde_json::to_string(&envelope(&id, kind, at, data))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO events (id, tenant, type, action_id, created_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![id, tenant, kind.as_str(), action_id, at, body],
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` of the tenant's events after `after` (a `seq`), oldest first, optionally
    /// of one action only.
    pub async fn events_after(
        &self,
        tenant: &str,
        after: i64,
        action_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.db()
            .fetch_all(
                sql!(self.dialect(),
                    sqlite: "SELECT seq, id, tenant, type, action_id, created_at, body FROM events
                             WHERE tenant = $1 AND seq > $2 AND ($3 IS NULL OR action_id = $3)
                             ORDER BY seq LIMIT $4",
                    postgres: "SELECT seq, id, tenant, type, action_id, created_at, body FROM events
                               WHERE tenant = $1 AND seq > $2
                                 AND ($3::text IS NULL OR action_id = $3)
                               ORDER BY seq LIMIT $4"),
                args![tenant, after, action_id.map(|a| a.to_string()), i64::from(limit)],
            )
            .await
    }

    /// The `seq` of the tenant's latest event (0 for none): where a stream that asks for no
    /// history starts.
    pub async fn last_event_seq(&self, tenant: &str) -> Result<i64> {
        let (seq,): (Option<i64>,) = self
            .db()
            .fetch_one("SELECT MAX(seq) FROM events WHERE tenant = $1", args![tenant])
            .await?;
        Ok(seq.unwrap_or(0))
    }
}
