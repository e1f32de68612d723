//! The audit trail: who asked for which response action, file transfer or reload, from where,
//! and what came of it. Rows are append-only (the schema's triggers refuse changes); the
//! outcome of an action is read live from the action itself, so it is known once it is.
//!
//! **Invariant:** nothing configured as a secret reaches this module: entries carry the
//! caller's identity claims, the request's targets and commands, ids and outcomes only.

use serde::Serialize;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{Store, StoreError, from_ms, now_ms};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum AuditEvent {
    #[serde(rename = "action.submit")]
    ActionSubmit,
    #[serde(rename = "action.cancel")]
    ActionCancel,
    #[serde(rename = "file.upload")]
    FileUpload,
    #[serde(rename = "file.download")]
    FileDownload,
    #[serde(rename = "config.reload")]
    ConfigReload,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 5] = [
        AuditEvent::ActionSubmit,
        AuditEvent::ActionCancel,
        AuditEvent::FileUpload,
        AuditEvent::FileDownload,
        AuditEvent::ConfigReload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::ActionSubmit => "action.submit",
            AuditEvent::ActionCancel => "action.cancel",
            AuditEvent::FileUpload => "file.upload",
            AuditEvent::FileDownload => "file.download",
            AuditEvent::ConfigReload => "config.reload",
        }
    }

    pub fn parse(s: &str) -> Option<AuditEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Who asked, and through which request.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    pub tenant: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub request_id: Option<String>,
    pub source: Option<String>,
}

/// One entry to append.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub event: AuditEvent,
    pub action_id: Option<Uuid>,
    pub file_id: Option<String>,
    pub targets: Option<serde_json::Value>,
    pub commands: Option<serde_json::Value>,
    /// `accepted`, `replayed`, `refused` or `ok`.
    pub outcome: &'static str,
    pub http_status: u16,
    pub error_code: Option<String>,
    pub detail: Option<serde_json::Value>,
}

impl AuditRecord {
    pub fn new(event: AuditEvent, outcome: &'static str, http_status: u16) -> AuditRecord {
        AuditRecord {
            event,
            action_id: None,
            file_id: None,
            targets: None,
            commands: None,
            outcome,
            http_status,
            error_code: None,
            detail: None,
        }
    }

    pub fn for_action(mut self, id: Uuid) -> AuditRecord {
        self.action_id = Some(id);
        self
    }
}

/// An entry as `GET /v1/audit` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub tenant: String,
    pub event: AuditEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub targets: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub commands: Option<serde_json::Value>,
    pub outcome: String,
    pub http_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The action's current status, for submissions and cancels: the outcome once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// Filters of `GET /v1/audit`.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub event: Option<AuditEvent>,
    pub subject: Option<String>,
    pub action_id: Option<Uuid>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
    /// Entries older than this sequence number (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

pub const MAX_PAGE: u32 = 1000;

impl Store {
    /// Appends one entry.
    pub async fn append_audit(
        &self,
        actor: &Actor,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(serde_json::Value::to_string);
        sqlx::query(
            "INSERT INTO audit (id, at, tenant, event, subject, client_id, request_id, source,
                                action_id, file_id, targets_json, commands_json, outcome,
                                http_status, error_code, detail_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(now_ms())
        .bind(&actor.tenant)
        .bind(record.event.as_str())
        .bind(&actor.subject)
        .bind(&actor.client_id)
        .bind(&actor.request_id)
        .bind(&actor.source)
        .bind(record.action_id.map(|id| id.to_string()))
        .bind(&record.file_id)
        .bind(json(&record.targets))
        .bind(json(&record.commands))
        .bind(record.outcome)
        .bind(i64::from(record.http_status))
        .bind(&record.error_code)
        .bind(json(&record.detail))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A page of the tenant's entries, newest first, and the cursor of the next page.
    pub async fn audit(
        &self,
        tenant: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEntry>, Option<i64>), StoreError> {
        let limit = i64::from(q.limit.clamp(1, MAX_PAGE));
        let rows = sqlx::query(
            "SELECT au.*, a.status AS action_status FROM audit au
             LEFT JOIN actions a ON a.id = au.action_id AND a.tenant = au.tenant
             WHERE au.tenant = ?1
               AND (?2 IS NULL OR au.event = ?2)
               AND (?3 IS NULL OR au.subject = ?3)
               AND (?4 IS NULL OR au.action_id = ?4)
               AND (?5 IS NULL OR au.at >= ?5)
               AND (?6 IS NULL OR au.at < ?6)
               AND (?7 IS NULL OR au.seq < ?7)
             ORDER BY au.seq DESC
             LIMIT ?8",
        )
        .bind(tenant)
        .bind(q.event.map(AuditEvent::as_str))
        .bind(&q.subject)
        .bind(q.action_id.map(|id| id.to_string()))
        .bind(q.since)
        .bind(q.until)
        .bind(q.before)
        .bind(limit + 1)
        .fetch_all(self.pool())
        .await?;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > page;
        let mut entries = Vec::with_capacity(rows.len().min(page));
        let mut last_seq = None;
        for row in rows.iter().take(page) {
            let json = |col: &str| -> Result<Option<serde_json::Value>, StoreError> {
                let text: Option<String> = row.get(col);
                text.map(|t| {
                    serde_json::from_str(&t)
                        .map_err(|e| StoreError::Corrupt(format!("audit.{col}: {e}")))
                })
                .transpose()
            };
            let event: String = row.get("event");
            let http_status: i64 = row.get("http_status");
            last_seq = Some(row.get::<i64, _>("seq"));
            entries.push(AuditEntry {
                id: row.get("id"),
                at: from_ms(row.get("at")),
                tenant: row.get("tenant"),
                event: AuditEvent::parse(&event)
                    .ok_or_else(|| StoreError::Corrupt(format!("audit.event {event:?}")))?,
                subject: row.get("subject"),
                client_id: row.get("client_id"),
                request_id: row.get("request_id"),
                source: row.get("source"),
                action_id: row.get("action_id"),
                file_id: row.get("file_id"),
                targets: json("targets_json")?,
                commands: json("commands_json")?,
                outcome: row.get("outcome"),
                http_status: u16::try_from(http_status).unwrap_or(0),
                error_code: row.get("error_code"),
                action_status: row.get("action_status"),
                detail: json("detail_json")?,
            });
        }
        Ok((entries, if more { last_seq } else { None }))
    }
}
