//! Webhook subscriptions made through the API, and deliveries: one event to one destination,
//! made from the outbox ([`Store::dispatch_events`]), claimed with a lease by whichever
//! replica sends it ([`Store::claim_deliveries`]), then delivered, retried or failed.

use std::time::Duration;

use uuid::Uuid;

use super::events::EventType;
use super::{Cursor, Result, Store, args, duration_ms, now_ms, parse_uuid, sql};

/// The reserved `webhook_id` of deliveries to an action's own `callback_url`.
pub const CALLBACK: &str = crate::config::RESERVED_WEBHOOK_ID;

/// A subscription as stored (API-made ones; the configuration's live in the configuration).
#[derive(Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub tenant: String,
    pub url: String,
    /// JSON array of event types; empty: all.
    pub events_json: String,
    pub description: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires_at: Option<i64>,
    pub header_name: Option<String>,
    pub header_value: Option<String>,
    pub created_at: i64,
}

impl WebhookRow {
    /// The event types it takes (empty: every type).
    pub fn events(&self) -> Vec<EventType> {
        serde_json::from_str::<Vec<String>>(&self.events_json)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| EventType::parse(t))
            .collect()
    }

    pub fn takes(&self, kind: EventType) -> bool {
        let events = self.events();
        events.is_empty() || events.contains(&kind)
    }
}

/// A delivery as `GET /v1/webhooks/{id}/deliveries` shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
    pub event_id: String,
    pub event_type: String,
    pub action_id: String,
}

/// A delivery claimed for sending, with what is sent.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub id: String,
    pub tenant: String,
    pub webhook_id: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub event_id: String,
    pub body: String,
    pub created_at: i64,
    /// The action's callback URL (for [`CALLBACK`] deliveries).
    pub callback_url: Option<String>,
}

/// How one attempt ended.
#[derive(Clone, Debug)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Not delivered: retried at `retry_at`, or failed for good when `None`.
    NotDelivered { status: Option<u16>, error: String, retry_at: Option<i64> },
}

/// Delivery statuses.
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

/// The columns of a [`DeliveryRow`] (a macro, so `concat!` can build statements with it).
macro_rules! delivery_columns {
    () => {
        "d.id, d.webhook_id, d.status, d.attempts, d.next_attempt_at, d.last_status,
         d.last_error, d.created_at, d.updated_at, d.delivered_at,
         e.id AS event_id, e.type AS event_type, e.action_id"
    };
}

impl Store {
    pub async fn insert_webhook(&self, w: &WebhookRow) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO webhooks (id, tenant, url, events_json, description, secret,
                    header_name, header_value, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                args![
                    &w.id,
                    &w.tenant,
                    &w.url,
                    &w.events_json,
                    &w.description,
                    &w.secret,
                    &w.header_name,
                    &w.header_value,
                    w.created_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// The tenant's API-made subscriptions, oldest first.
    pub async fn webhooks(&self, tenant: &str) -> Result<Vec<WebhookRow>> {
        self.db()
            .fetch_all(
                "SELECT * FROM webhooks WHERE tenant = $1 ORDER BY created_at, id",
                args![tenant],
            )
            .await
    }

    pub async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookRow>> {
        self.db()
            .fetch_optional(
                "SELECT * FROM webhooks WHERE tenant = $1 AND id = $2",
                args![tenant, id],
            )
            .await
    }

    /// Deletes a subscription; its pending deliveries fail (kept, visible). `false`: no such.
    pub async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<bool> {
        let mut tx = self.db().begin().await?;
        let n = tx
            .execute("DELETE FROM webhooks WHERE tenant = $1 AND id = $2", args![tenant, id])
            .await?;
        if n == 1 {
            tx.execute(
                "UPDATE deliveries SET status = 'failed', last_error = 'the subscription was deleted',
                    updated_at = $3, lease_owner = NULL, lease_expires_at = NULL
                 WHERE tenant = $1 AND webhook_id = $2 AND status = 'pending'",
                args![tenant, id, now_ms()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Makes `secret` the subscription's secret; the one it replaces still signs until
    /// `previous_expires_at` (receivers switch over meanwhile). `false`: no such subscription.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &str,
        previous_expires_at: i64,
    ) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "UPDATE webhooks SET previous_secret = secret, previous_expires_at = $4, secret = $3
                 WHERE tenant = $1 AND id = $2",
                args![tenant, id, secret, previous_expires_at],
            )
            .await?;
        Ok(n == 1)
    }

    /// Turns up to `limit` undispatched events into deliveries, one per destination:
    /// `configured(tenant, type)` names the configuration's subscriptions that take the event,
    /// the store adds the API-made ones and, for `action.finished`, the action's callback. In
    /// one transaction, so an event is dispatched exactly once, by one replica (PostgreSQL
    /// skips the rows another replica is dispatching). The number of events dispatched.
    pub async fn dispatch_events(
        &self,
        limit: u32,
        configured: &(dyn Fn(&str, EventType) -> Vec<String> + Sync),
    ) -> Result<usize> {
        // A read first: most passes find nothing, and on SQLite the transaction below takes
        // the write lock the engine's writes need.
        let any: Option<(i64,)> = self
            .db()
            .fetch_optional(
                sql!(self.dialect(),
                    sqlite: "SELECT seq FROM events WHERE dispatched = 0 LIMIT 1",
                    postgres: "SELECT seq FROM events WHERE NOT dispatched LIMIT 1"),
                args![],
            )
            .await?;
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = self.db().begin().await?;
        let events: Vec<(i64, String, String, String)> = tx
            .fetch_all(
                sql!(self.dialect(),
                    sqlite: "SELECT seq, tenant, type, action_id FROM events
                             WHERE dispatched = 0 ORDER BY seq LIMIT $1",
                    postgres: "SELECT seq, tenant, type, action_id FROM events
                               WHERE NOT dispatched ORDER BY seq LIMIT $1
                               FOR UPDATE SKIP LOCKED"),
                args![i64::from(limit)],
            )
            .await?;
        let now = now_ms();
        let mut subscriptions: std::collections::HashMap<String, Vec<WebhookRow>> =
            std::collections::HashMap::new();
        for (seq, tenant, kind, action_id) in &events {
            let Some(kind) = EventType::parse(kind) else { continue };
            let mut targets = configured(tenant, kind);
            if !subscriptions.contains_key(tenant) {
                let rows: Vec<WebhookRow> =
                    tx.fetch_all("SELECT * FROM webhooks WHERE tenant = $1", args![tenant]).await?;
                subscriptions.insert(tenant.clone(), rows);
            }
            let stored = subscriptions.get(tenant).map(Vec::as_slice).unwrap_or_default();
            targets.extend(stored.iter().filter(|w| w.takes(kind)).map(|w| w.id.clone()));
            if kind == EventType::ActionFinished {
                let (callback,): (Option<String>,) = tx
                    .fetch_one("SELECT callback_url FROM actions WHERE id = $1", args![action_id])
                    .await?;
                if callback.is_some() {
                    targets.push(CALLBACK.to_owned());
                }
            }
            for webhook_id in targets {
                tx.execute(
                    "INSERT INTO deliveries (id, tenant, webhook_id, event_seq, status,
                        next_attempt_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'pending', $5, $5, $5)",
                    args![Uuid::now_v7().to_string(), tenant, webhook_id, *seq, now],
                )
                .await?;
            }
            tx.execute("UPDATE events SET dispatched = TRUE WHERE seq = $1", args![*seq]).await?;
        }
        tx.commit().await?;
        Ok(events.len())
    }

    /// Claims up to `limit` due deliveries for `owner`, leased for `lease` (a sender that dies
    /// leaves them to be claimed again when it runs out: at least once, the same message id).
    /// Deliveries of the subscriptions in `busy` (at their in-flight cap here) are left alone,
    /// so one slow receiver cannot take every sender.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
        busy: &[String],
    ) -> Result<Vec<ClaimedDelivery>> {
        let now = now_ms();
        // A read first, as in `dispatch_events`: no write lock for a pass with nothing due.
        let due: Option<(String,)> = self
            .db()
            .fetch_optional(
                "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1 LIMIT 1",
                args![now],
            )
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".to_owned());
        let mut tx = self.db().begin().await?;
        let ids: Vec<(String,)> = tx
            .fetch_all(
                sql!(self.dialect(),
                    sqlite: "UPDATE deliveries SET lease_owner = $1, lease_expires_at = $2,
                        attempts = attempts + 1, updated_at = $3
                     WHERE id IN (SELECT id FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= $3
                          AND (lease_owner IS NULL OR lease_expires_at < $3)
                          AND webhook_id NOT IN (SELECT value FROM json_each($5))
                        ORDER BY next_attempt_at LIMIT $4)
                     RETURNING id",
                    postgres: "UPDATE deliveries SET lease_owner = $1, lease_expires_at = $2,
                        attempts = attempts + 1, updated_at = $3
                     WHERE id IN (SELECT id FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= $3
                          AND (lease_owner IS NULL OR lease_expires_at < $3)
                          AND webhook_id NOT IN (SELECT json_array_elements_text($5::text::json))
                        ORDER BY next_attempt_at LIMIT $4
                        FOR UPDATE SKIP LOCKED)
                     RETURNING id"),
                args![owner, now + duration_ms(lease), now, i64::from(limit), busy],
            )
            .await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for (id,) in ids {
            let row: ClaimedDelivery = tx
                .fetch_one(
                    "SELECT d.id, d.tenant, d.webhook_id, d.attempts, e.id AS event_id, e.body,
                        e.created_at, a.callback_url
                     FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     LEFT JOIN actions a ON a.id = e.action_id
                     WHERE d.id = $1",
                    args![id],
                )
                .await?;
            claimed.push(row);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records an attempt, fenced by the lease (a sender whose lease ran out and was taken over
    /// writes nothing). `false`: the lease was lost.
    pub async fn finish_delivery(&self, id: &str, owner: &str, attempt: &Attempt) -> Result<bool> {
        let now = now_ms();
        let n = match attempt {
            Attempt::Delivered { status } => {
                self.db()
                    .execute(
                        "UPDATE deliveries SET status = 'delivered', delivered_at = $3,
                            updated_at = $3, last_status = $4, last_error = NULL,
                            lease_owner = NULL, lease_expires_at = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                        args![id, owner, now, i64::from(*status)],
                    )
                    .await?
            }
            Attempt::NotDelivered { status, error, retry_at } => {
                let (next, state) = match retry_at {
                    Some(at) => (*at, PENDING),
                    None => (now, FAILED),
                };
                self.db()
                    .execute(
                        "UPDATE deliveries SET status = $3, next_attempt_at = $4, updated_at = $5,
                            last_status = $6, last_error = $7,
                            lease_owner = NULL, lease_expires_at = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                        args![id, owner, state, next, now, status.map(i64::from), error],
                    )
                    .await?
            }
        };
        Ok(n == 1)
    }

    /// A page of a destination's deliveries, newest first, optionally of one status.
    pub async fn deliveries(
        &self,
        tenant: &str,
        webhook_id: &str,
        status: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<DeliveryRow>, Option<Cursor>)> {
        let limit = i64::from(limit.clamp(1, 500));
        let rows: Vec<DeliveryRow> = self
            .db()
            .fetch_all(
                sql!(self.dialect(),
                    sqlite: concat!("SELECT ", delivery_columns!(),
                        " FROM deliveries d JOIN events e ON e.seq = d.event_seq
                         WHERE d.tenant = $1 AND d.webhook_id = $2 AND ($3 IS NULL OR d.status = $3)
                           AND ($4 IS NULL OR (d.created_at, d.id) < ($4, $5))
                         ORDER BY d.created_at DESC, d.id DESC LIMIT $6"),
                    postgres: concat!("SELECT ", delivery_columns!(),
                        " FROM deliveries d JOIN events e ON e.seq = d.event_seq
                         WHERE d.tenant = $1 AND d.webhook_id = $2
                           AND ($3::text IS NULL OR d.status = $3)
                           AND ($4::bigint IS NULL OR (d.created_at, d.id) < ($4, $5))
                         ORDER BY d.created_at DESC, d.id DESC LIMIT $6")),
                args![
                    tenant,
                    webhook_id,
                    status,
                    cursor.map(|c| c.created_at),
                    cursor.map(|c| c.id.to_string()),
                    limit + 1,
                ],
            )
            .await?;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if rows.len() > page {
            rows.get(page - 1)
                .map(|r| {
                    Ok::<_, super::StoreError>(Cursor {
                        created_at: r.created_at,
                        id: parse_uuid(&r.id)?,
                    })
                })
                .transpose()?
        } else {
            None
        };
        Ok((rows.into_iter().take(page).collect(), next))
    }

    /// Sends a delivery again (any status): pending now, its attempts counted afresh. `None`
    /// when the destination has no such delivery.
    pub async fn redeliver(
        &self,
        tenant: &str,
        webhook_id: &str,
        id: &str,
    ) -> Result<Option<DeliveryRow>> {
        let now = now_ms();
        let n = self
            .db()
            .execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $4,
                    updated_at = $4, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL
                 WHERE tenant = $1 AND webhook_id = $2 AND id = $3",
                args![tenant, webhook_id, id, now],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        self.db()
            .fetch_optional(
                concat!(
                    "SELECT ",
                    delivery_columns!(),
                    " FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id = $1"
                ),
                args![id],
            )
            .await
    }

    /// Forgets events and deliveries older than `before` (unix ms) whose work is over:
    /// deliveries delivered or failed, events dispatched with no pending delivery. Batches of
    /// `limit`; the rows removed.
    pub async fn purge_events(&self, before: i64, limit: u32) -> Result<u64> {
        let limit = i64::from(limit);
        let deliveries = self
            .db()
            .execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries
                    WHERE status <> 'pending' AND updated_at < $1 LIMIT $2)",
                args![before, limit],
            )
            .await?;
        let events = self
            .db()
            .execute(
                sql!(self.dialect(),
                    sqlite: "DELETE FROM events WHERE seq IN (SELECT seq FROM events e
                        WHERE e.created_at < $1 AND e.dispatched = 1
                          AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq)
                        LIMIT $2)",
                    postgres: "DELETE FROM events WHERE seq IN (SELECT seq FROM events e
                        WHERE e.created_at < $1 AND e.dispatched
                          AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq)
                        LIMIT $2)"),
                args![before, limit],
            )
            .await?;
        Ok(deliveries + events)
    }
}
