//! The audit trail: who asked for which response action, file transfer or reload, from where,
//! and what came of it. Rows are append-only (the schema's triggers refuse changes); the
//! outcome of an action is read live from the action itself, so it is known once it is.
//!
//! **Invariant:** nothing configured as a secret reaches this module: entries carry the
//! caller's identity claims, the request's targets and commands, ids and outcomes only.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{Store, StoreError, args, from_ms, now_ms, sql};

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
    #[serde(rename = "webhook.create")]
    WebhookCreate,
    #[serde(rename = "webhook.delete")]
    WebhookDelete,
    #[serde(rename = "webhook.rotate")]
    WebhookRotate,
    #[serde(rename = "webhook.redeliver")]
    WebhookRedeliver,
    #[serde(rename = "apikey.create")]
    ApiKeyCreate,
    #[serde(rename = "apikey.revoke")]
    ApiKeyRevoke,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 11] = [
        AuditEvent::ActionSubmit,
        AuditEvent::ActionCancel,
        AuditEvent::FileUpload,
        AuditEvent::FileDownload,
        AuditEvent::ConfigReload,
        AuditEvent::WebhookCreate,
        AuditEvent::WebhookDelete,
        AuditEvent::WebhookRotate,
        AuditEvent::WebhookRedeliver,
        AuditEvent::ApiKeyCreate,
        AuditEvent::ApiKeyRevoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::ActionSubmit => "action.submit",
            AuditEvent::ActionCancel => "action.cancel",
            AuditEvent::FileUpload => "file.upload",
            AuditEvent::FileDownload => "file.download",
            AuditEvent::ConfigReload => "config.reload",
            AuditEvent::WebhookCreate => "webhook.create",
            AuditEvent::WebhookDelete => "webhook.delete",
            AuditEvent::WebhookRotate => "webhook.rotate",
            AuditEvent::WebhookRedeliver => "webhook.redeliver",
            AuditEvent::ApiKeyCreate => "apikey.create",
            AuditEvent::ApiKeyRevoke => "apikey.revoke",
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
    /// The submission's `targets`, as sent.
    #[schema(value_type = Option<Vec<Object>>)]
    pub targets: Option<serde_json::Value>,
    /// The submission's `commands`, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
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
        self.db()
            .execute(
                "INSERT INTO audit (id, at, tenant, event, subject, client_id, request_id, source,
                                    action_id, file_id, targets_json, commands_json, outcome,
                                    http_status, error_code, detail_json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                args![
                    Uuid::now_v7().to_string(),
                    now_ms(),
                    &actor.tenant,
                    record.event.as_str(),
                    &actor.subject,
                    &actor.client_id,
                    &actor.request_id,
                    &actor.source,
                    record.action_id.map(|id| id.to_string()),
                    &record.file_id,
                    json(&record.targets),
                    json(&record.commands),
                    record.outcome,
                    i64::from(record.http_status),
                    &record.error_code,
                    json(&record.detail),
                ],
            )
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
        let rows: Vec<AuditRow> = self
            .db()
            .fetch_all(
                sql!(self.dialect(),
                    sqlite: "SELECT au.*, a.status AS action_status FROM audit au
                     LEFT JOIN actions a ON a.id = au.action_id AND a.tenant = au.tenant
                     WHERE au.tenant = $1
                       AND ($2 IS NULL OR au.event = $2)
                       AND ($3 IS NULL OR au.subject = $3)
                       AND ($4 IS NULL OR au.action_id = $4)
                       AND ($5 IS NULL OR au.at >= $5)
                       AND ($6 IS NULL OR au.at < $6)
                       AND ($7 IS NULL OR au.seq < $7)
                     ORDER BY au.seq DESC
                     LIMIT $8",
                    // The same with typed parameters: PostgreSQL cannot infer the type of a
                    // parameter that is only compared with NULL.
                    postgres: "SELECT au.*, a.status AS action_status FROM audit au
                     LEFT JOIN actions a ON a.id = au.action_id AND a.tenant = au.tenant
                     WHERE au.tenant = $1
                       AND ($2::text IS NULL OR au.event = $2)
                       AND ($3::text IS NULL OR au.subject = $3)
                       AND ($4::text IS NULL OR au.action_id = $4)
                       AND ($5::bigint IS NULL OR au.at >= $5)
                       AND ($6::bigint IS NULL OR au.at < $6)
                       AND ($7::bigint IS NULL OR au.seq < $7)
                     ORDER BY au.seq DESC
                     LIMIT $8"),
                args![
                    tenant,
                    q.event.map(AuditEvent::as_str),
                    &q.subject,
                    q.action_id.map(|id| id.to_string()),
                    q.since,
                    q.until,
                    q.before,
                    limit + 1,
                ],
            )
            .await?;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > page;
        let mut entries = Vec::with_capacity(rows.len().min(page));
        let mut last_seq = None;
        for row in rows.into_iter().take(page) {
            let json = |col: &str,
                        text: Option<String>|
             -> Result<Option<serde_json::Value>, StoreError> {
                text.map(|t| {
                    serde_json::from_str(&t)
                        .map_err(|e| StoreError::Corrupt(format!("audit.{col}: {e}")))
                })
                .transpose()
            };
            last_seq = Some(row.seq);
            entries.push(AuditEntry {
                id: row.id,
                at: from_ms(row.at),
                tenant: row.tenant,
                event: AuditEvent::parse(&row.event)
                    .ok_or_else(|| StoreError::Corrupt(format!("audit.event {:?}", row.event)))?,
                subject: row.subject,
                client_id: row.client_id,
                request_id: row.request_id,
                source: row.source,
                action_id: row.action_id,
                file_id: row.file_id,
                targets: json("targets_json", row.targets_json)?,
                commands: json("commands_json", row.commands_json)?,
                outcome: row.outcome,
                http_status: u16::try_from(row.http_status).unwrap_or(0),
                error_code: row.error_code,
                action_status: row.action_status,
                detail: json("detail_json", row.detail_json)?,
            });
        }
        Ok((entries, if more { last_seq } else { None }))
    }
}

/// An `audit` row with its action's status, as both databases return it.
#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    id: String,
    at: i64,
    tenant: String,
    event: String,
    subject: Option<String>,
    client_id: Option<String>,
    request_id: Option<String>,
    source: Option<String>,
    action_id: Option<String>,
    file_id: Option<String>,
    targets_json: Option<String>,
    commands_json: Option<String>,
    outcome: String,
    http_status: i64,
    error_code: Option<String>,
    detail_json: Option<String>,
    action_status: Option<String>,
}
