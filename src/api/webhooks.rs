//! `/v1/webhooks`: the tenant's webhook subscriptions (the configuration's, read-only, and
//! those made here), their secrets (shown once, at creation and rotation), and their
//! deliveries, listed and re-deliverable. Tenant administration: the admin permission.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::audit;
use super::problem::{ApiError, Json, Path, Problem, Query};
use super::request::RequestMeta;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::Caller;
use crate::store::events::EventType;
use crate::store::webhooks::{CALLBACK, DeliveryRow, FAILED, PENDING, WebhookRow};
use crate::store::{Cursor, from_ms, now_ms};
use crate::webhooks::settings::check_header;
use crate::webhooks::sign::Secret;

/// Subscriptions a tenant may make through the API.
pub const MAX_WEBHOOKS: usize = 25;
pub const MAX_DESCRIPTION: usize = 256;

/// Where a subscription is managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookSource {
    /// `[tenants.<id>.webhooks.subscriptions.<name>]`: changed by editing the configuration.
    Config,
    /// Made through `POST /v1/webhooks`.
    Api,
}

/// A subscription, without its secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    /// `wh_…` for subscriptions made here; the name for the configuration's.
    pub id: String,
    pub url: String,
    /// Event types delivered; empty: all.
    pub events: Vec<EventType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub source: WebhookSource,
    /// The name of the static header sent with every delivery (its value is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    /// Until when the secret replaced by the last rotation still signs (a second signature).
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<OffsetDateTime>,
}

/// A subscription just made, or its secret just rotated: the only answers with the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret (`whsec_…`, Standard Webhooks): keep it; it is not shown again.
    pub secret: String,
}

/// A static header to send with every delivery, for receivers that can only check one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    #[schema(min_length = 1, max_length = 128, example = "X-Api-Key")]
    pub name: String,
    #[schema(min_length = 1, max_length = 4096)]
    pub value: String,
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where events are POSTed: https (unless the server allows http), not a loopback,
    /// link-local or cloud metadata address (unless the server allows it).
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://",
        example = "https://soar.example.com/hooks/edrgate"
    )]
    pub url: String,
    /// Event types to deliver; empty or absent: all.
    #[serde(default)]
    #[schema(max_items = 3)]
    pub events: Vec<EventType>,
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: Option<String>,
    #[serde(default)]
    pub header: Option<HeaderSpec>,
}

/// The tenant's subscriptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
}

/// One event to one destination.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    /// The message id (`webhook-id`), the same at every attempt.
    pub event_id: String,
    pub event_type: EventType,
    pub action_id: String,
    pub status: DeliveryStatus,
    /// Attempts made (counted afresh by a redelivery).
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The HTTP status of the last answer, if one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i64>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<OffsetDateTime>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet: being sent or waiting for its next attempt.
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Every retry failed (or the destination is refused or gone); kept, and re-deliverable.
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => PENDING,
            DeliveryStatus::Delivered => crate::store::webhooks::DELIVERED,
            DeliveryStatus::Failed => FAILED,
        }
    }
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<Delivery>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only deliveries with this status.
    pub status: Option<DeliveryStatus>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^([0-9]{1,18}\.[0-9a-f]{32})?$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

fn from_row(row: &WebhookRow) -> Webhook {
    Webhook {
        id: row.id.clone(),
        url: row.url.clone(),
        events: row.events(),
        description: row.description.clone(),
        source: WebhookSource::Api,
        header_name: row.header_name.clone(),
        previous_secret_expires_at: row
            .previous_expires_at
            .filter(|at| *at > now_ms())
            .map(from_ms),
        created_at: Some(from_ms(row.created_at)),
    }
}

fn delivery(row: DeliveryRow) -> Delivery {
    let status = match row.status.as_str() {
        PENDING => DeliveryStatus::Pending,
        FAILED => DeliveryStatus::Failed,
        _ => DeliveryStatus::Delivered,
    };
    Delivery {
        id: row.id,
        webhook_id: row.webhook_id,
        event_id: row.event_id,
        event_type: EventType::parse(&row.event_type).unwrap_or(EventType::ActionFinished),
        action_id: row.action_id,
        status,
        attempts: row.attempts,
        next_attempt_at: (status == DeliveryStatus::Pending).then(|| from_ms(row.next_attempt_at)),
        last_status_code: row.last_status,
        last_error: row.last_error,
        created_at: from_ms(row.created_at),
        delivered_at: row.delivered_at.map(from_ms),
    }
}

/// A submission's `callback_url`: a URL the policy allows, of a tenant whose callbacks can be
/// signed (`tenants.<id>.webhooks.callback`).
pub(crate) fn check_callback(
    state: &ApiState,
    tenant: &str,
    url: Option<&str>,
) -> Result<(), ApiError> {
    let Some(url) = url else { return Ok(()) };
    if url.is_empty() || url.len() > 2048 {
        return Err(ApiError::invalid("callback_url: 1 to 2048 characters"));
    }
    let unprocessable = |detail: String| {
        ApiError::with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            edrgate_adapter::ErrorCode::InvalidRequest,
            detail,
        )
    };
    let settings = state.webhooks.settings();
    if settings.tenants.get(tenant).is_none_or(|t| t.callback.is_none()) {
        return Err(unprocessable(format!(
            "callback_url: callbacks are signed with the tenant's callback secret, and tenants.{tenant}.webhooks.callback is not configured"
        )));
    }
    settings.policy.check_url(url).map_err(|r| unprocessable(format!("callback_url: {r}")))?;
    Ok(())
}

fn store_failure(error: crate::store::StoreError) -> ApiError {
    tracing::error!(%error, "webhook store call failed");
    ApiError::internal()
}

/// The tenant's subscriptions: the configuration's, then the API's.
async fn all(state: &ApiState, tenant: &str) -> Result<Vec<Webhook>, ApiError> {
    let settings = state.webhooks.settings();
    let mut items: Vec<Webhook> = settings
        .tenants
        .get(tenant)
        .map(|t| {
            t.subscriptions
                .iter()
                .map(|(name, d)| Webhook {
                    id: name.clone(),
                    url: d.url.clone(),
                    events: d.events.clone(),
                    description: d.description.clone(),
                    source: WebhookSource::Config,
                    header_name: d.header.as_ref().map(|h| h.name.to_string()),
                    previous_secret_expires_at: None,
                    created_at: None,
                })
                .collect()
        })
        .unwrap_or_default();
    let stored = state.engine.store().webhooks(tenant).await.map_err(store_failure)?;
    items.extend(stored.iter().map(from_row));
    Ok(items)
}

/// A destination of the tenant that deliveries can be listed for: a subscription, or the
/// reserved `callback` (per-action callbacks).
async fn known(state: &ApiState, tenant: &str, id: &str) -> Result<(), ApiError> {
    if id == CALLBACK || all(state, tenant).await?.iter().any(|w| w.id == id) {
        return Ok(());
    }
    Err(ApiError::not_found("no such webhook"))
}

async fn audited(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    event: AuditEvent,
    status: u16,
    detail: serde_json::Value,
) {
    let mut entry = AuditRecord::new(event, "ok", status);
    entry.detail = Some(detail);
    audit::record(state, caller, meta, entry).await;
}

/// Create webhook
///
/// Subscribes `url` to the tenant's events. Deliveries follow Standard Webhooks: a JSON body
/// (`id`, `type`, `timestamp`, `data`) with the headers `webhook-id` (the same at every
/// attempt: deduplicate on it), `webhook-timestamp` and `webhook-signature` (HMAC-SHA256 with
/// the secret in this answer, which is not shown again). Delivered at least once, retried with
/// back-off, then kept as `failed` and re-deliverable.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "CreateWebhook",
    request_body(content = NewWebhook, example = json!({
        "url": "https://soar.example.com/hooks/edrgate",
        "events": ["action.finished"],
        "description": "SOAR playbook trigger"
    })),
    responses(
        (status = 201, description = "Created; the secret is in this answer only", body = WebhookWithSecret),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant has the most subscriptions allowed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The destination is refused (not a URL, scheme, address) or the header is not allowed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn create_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Json(new): Json<NewWebhook>,
) -> Result<Response, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::WebhookCreate)).await?;
    let unprocessable = |detail: String| {
        ApiError::with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            edrgate_adapter::ErrorCode::InvalidRequest,
            detail,
        )
    };
    if new.description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(ApiError::invalid(format!(
            "description: at most {MAX_DESCRIPTION} characters"
        )));
    }
    if new.events.len() > EventType::ALL.len() {
        return Err(ApiError::invalid(format!("events: at most {} types", EventType::ALL.len())));
    }
    if new.url.len() > 2048 || new.url.is_empty() {
        return Err(ApiError::invalid("url: 1 to 2048 characters"));
    }
    let settings = state.webhooks.settings();
    settings.policy.check_url(&new.url).map_err(|r| unprocessable(format!("url: {r}")))?;
    let header = match &new.header {
        Some(h)
            if h.name.is_empty()
                || h.name.len() > 128
                || h.value.is_empty()
                || h.value.len() > 4096 =>
        {
            return Err(ApiError::invalid(
                "header: a name of 1 to 128 and a value of 1 to 4096 characters",
            ));
        }
        Some(h) => {
            check_header(&h.name, &h.value).map_err(|p| unprocessable(format!("header: {p}")))?;
            Some(h)
        }
        None => None,
    };
    let mut events = new.events.clone();
    events.sort_by_key(|e| e.as_str());
    events.dedup();
    let store = state.engine.store();
    if store.webhooks(&caller.tenant).await.map_err(store_failure)?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::new(
            edrgate_adapter::ErrorCode::Conflict,
            format!("a tenant has at most {MAX_WEBHOOKS} subscriptions made through the API"),
        ));
    }
    let secret = Secret::generate();
    let row = WebhookRow {
        id: format!("wh_{}", Uuid::now_v7().simple()),
        tenant: caller.tenant.clone(),
        url: new.url.clone(),
        events_json: serde_json::to_string(&events.iter().map(|e| e.as_str()).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".to_owned()),
        description: new.description.clone(),
        secret: secret.expose(),
        previous_secret: None,
        previous_expires_at: None,
        header_name: header.map(|h| h.name.clone()),
        header_value: header.map(|h| h.value.clone()),
        created_at: now_ms(),
    };
    store.insert_webhook(&row).await.map_err(store_failure)?;
    audited(
        &state,
        &caller,
        &meta,
        AuditEvent::WebhookCreate,
        201,
        serde_json::json!({ "webhook_id": row.id }),
    )
    .await;
    let created = WebhookWithSecret { webhook: from_row(&row), secret: secret.expose() };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// List webhooks
///
/// The tenant's subscriptions: the configuration's (`source: config`) and those made through
/// the API. Secrets and header values are never shown.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "ListWebhooks",
    responses(
        (status = 200, description = "The subscriptions", body = WebhookList),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn list_webhooks(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
) -> Result<Json<WebhookList>, ApiError> {
    audit::require_admin(&state, &caller, &meta, None).await?;
    Ok(Json(WebhookList { items: all(&state, &caller.tenant).await? }))
}

/// Get webhook
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "GetWebhook",
    params(("id" = String, Path, description = "Subscription id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The subscription", body = Webhook),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn get_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    audit::require_admin(&state, &caller, &meta, None).await?;
    all(&state, &caller.tenant)
        .await?
        .into_iter()
        .find(|w| w.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such webhook"))
}

/// Delete webhook
///
/// Deletes a subscription made through the API; its pending deliveries become `failed`. The
/// configuration's subscriptions are changed in the configuration (`409`).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "DeleteWebhook",
    params(("id" = String, Path, description = "Subscription id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription in the caller's tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is the configuration's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn delete_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::WebhookDelete)).await?;
    configured_conflict(&state, &caller.tenant, &id)?;
    if !state.engine.store().delete_webhook(&caller.tenant, &id).await.map_err(store_failure)? {
        return Err(ApiError::not_found("no such webhook"));
    }
    audited(
        &state,
        &caller,
        &meta,
        AuditEvent::WebhookDelete,
        204,
        serde_json::json!({ "webhook_id": id }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn configured_conflict(state: &ApiState, tenant: &str, id: &str) -> Result<(), ApiError> {
    let settings = state.webhooks.settings();
    if settings.tenants.get(tenant).is_some_and(|t| t.subscriptions.contains_key(id)) {
        return Err(ApiError::new(
            edrgate_adapter::ErrorCode::Conflict,
            format!(
                "webhook {id:?} is managed by the configuration (tenants.{tenant}.webhooks.subscriptions)"
            ),
        ));
    }
    Ok(())
}

/// Rotate webhook secret
///
/// Replaces the signing secret; the new one is in this answer only. The replaced secret keeps
/// signing (a second signature in `webhook-signature`) until `previous_secret_expires_at`
/// (`webhooks.rotation_overlap_seconds`, a day by default), so receivers can switch over.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "RotateWebhookSecret",
    params(("id" = String, Path, description = "Subscription id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "Rotated; the new secret is in this answer only", body = WebhookWithSecret),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription in the caller's tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is the configuration's (rotate in the configuration)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn rotate_secret(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::WebhookRotate)).await?;
    configured_conflict(&state, &caller.tenant, &id)?;
    let overlap = state.webhooks.settings().rotation_overlap;
    let until = now_ms() + i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX / 2);
    let secret = Secret::generate();
    let store = state.engine.store();
    let rotated = store
        .rotate_webhook_secret(&caller.tenant, &id, &secret.expose(), until)
        .await
        .map_err(store_failure)?;
    let row = match store.webhook(&caller.tenant, &id).await.map_err(store_failure)? {
        Some(row) if rotated => row,
        _ => return Err(ApiError::not_found("no such webhook")),
    };
    audited(
        &state,
        &caller,
        &meta,
        AuditEvent::WebhookRotate,
        200,
        serde_json::json!({ "webhook_id": id }),
    )
    .await;
    Ok(Json(WebhookWithSecret { webhook: from_row(&row), secret: secret.expose() }))
}

/// List webhook deliveries
///
/// A subscription's deliveries, newest first: pending (with the next attempt), delivered, and
/// failed ones, which stay listed until the retention (`webhooks.retention_hours`) and can be
/// re-delivered. `callback` lists the deliveries to submissions' own `callback_url`s.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "ListWebhookDeliveries",
    params(
        ("id" = String, Path, description = "Subscription id, or `callback`", pattern = "^[A-Za-z0-9_-]{1,64}$"),
        DeliveryParams,
    ),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = DeliveryList),
        (status = 400, description = "Bad filter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn list_deliveries(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<String>,
    Query(params): Query<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    audit::require_admin(&state, &caller, &meta, None).await?;
    known(&state, &caller.tenant, &id).await?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit: between 1 and 500"));
    }
    let cursor = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor of this listing"))?,
        ),
    };
    let (rows, next) = state
        .engine
        .store()
        .deliveries(&caller.tenant, &id, params.status.map(DeliveryStatus::as_str), cursor, limit)
        .await
        .map_err(store_failure)?;
    Ok(Json(DeliveryList {
        items: rows.into_iter().map(delivery).collect(),
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Redeliver
///
/// Sends a delivery again, whatever its status, with the same `webhook-id` (receivers that
/// saw it already deduplicate); its attempts are counted afresh.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    operation_id = "RedeliverWebhook",
    params(
        ("id" = String, Path, description = "Subscription id, or `callback`", pattern = "^[A-Za-z0-9_-]{1,64}$"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Pending again", body = Delivery),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery of this subscription in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn redeliver(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path((id, delivery_id)): Path<(String, Uuid)>,
) -> Result<Response, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::WebhookRedeliver)).await?;
    let row = state
        .engine
        .store()
        .redeliver(&caller.tenant, &id, &delivery_id.to_string())
        .await
        .map_err(store_failure)?
        .ok_or_else(|| ApiError::not_found("no such delivery"))?;
    state.webhooks.wake();
    audited(
        &state,
        &caller,
        &meta,
        AuditEvent::WebhookRedeliver,
        202,
        serde_json::json!({ "webhook_id": id, "delivery_id": delivery_id }),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(delivery(row))).into_response())
}
