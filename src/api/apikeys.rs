//! Tenant API keys: long-lived opaque credentials for clients that send one static token
//! (cbapi's and CB SOAR's `X-Auth-Token`, front-doors.md §1), created and revoked through the
//! admin API (`/v1/api-keys`), with the permissions of JWT scopes.
//!
//! One way per door: `/v1` takes JWTs only (`Authorization: Bearer`); keys are accepted by
//! the static-token doors, which call [`authenticate`].
//!
//! A key is `edrg_` and 32 random bytes (base64url, no padding). With 256 bits of entropy no
//! guess or dictionary can find one, so a plain SHA-256 of the whole key is a sound lookup
//! hash: a slow KDF (as for passwords) would add cost per request and no protection. Only the
//! hash is stored; the key is in the creation answer only, and never logged or audited.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiState;
use super::audit;
use super::problem::{ApiError, Json, Path, Problem};
use super::request::RequestMeta;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::{Caller, Permission, Permissions};
use crate::store::apikeys::ApiKeyRow;
use crate::store::{from_ms, now_ms};

/// What every key starts with: tells a key from a JWT (which starts `eyJ`).
pub const KEY_PREFIX: &str = "edrg_";
/// Characters of the key kept to tell keys apart (`edrg_` and 7 of the random part).
const DISPLAY_PREFIX: usize = 12;
/// Unrevoked, unexpired keys a tenant may hold.
pub const MAX_KEYS: u64 = 100;
pub const MAX_NAME: usize = 100;
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;
/// A presented credential longer than this is refused unread (a key is 48 characters; JWTs
/// the bearer path takes are capped at 8 KiB, but static-token clients send short ones).
pub const MAX_PRESENTED: usize = 4096;
/// How long a key looked up stays cached. A revocation made on another replica takes effect
/// here within this bound; on this replica at once (the entry is invalidated).
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Keys looked up, by the SHA-256 hex of the key; `None`: no such key (cached too, so a flood
/// of unknown keys does not reach the database more than once each per TTL). Bounded.
/// Process-wide: the hash names one key whatever the gateway, and revocation invalidates it.
static CACHE: LazyLock<moka::future::Cache<String, Option<Arc<ApiKeyRow>>>> = LazyLock::new(|| {
    moka::future::Cache::builder().max_capacity(10_000).time_to_live(CACHE_TTL).build()
});

fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn refused() -> ApiError {
    ApiError::unauthenticated("the API key is unknown, revoked or expired", true)
}

/// The caller a static credential names: an edrgate API key (`edrg_…`), or else a JWT (the
/// Carbon Black front door accepts either in `X-Auth-Token`); then the tenant's request rate.
/// Unknown, revoked and expired keys are the same `401 unauthenticated` as a bad token.
pub(crate) async fn authenticate(state: &ApiState, presented: &str) -> Result<Caller, ApiError> {
    if presented.len() > MAX_PRESENTED {
        return Err(ApiError::unauthenticated("the token is too long", true));
    }
    let caller = if presented.starts_with(KEY_PREFIX) {
        key_caller(state, presented).await?
    } else {
        state.auth.authenticate(presented).await?
    };
    state.auth.check_rate(&caller.tenant)?;
    Ok(caller)
}

async fn key_caller(state: &ApiState, presented: &str) -> Result<Caller, ApiError> {
    let hash = sha256_hex(presented);
    let row = match CACHE.get(&hash).await {
        Some(row) => row,
        None => {
            let row = state.engine.store().api_key_by_hash(&hash).await.map_err(store_failure)?;
            let row = row.map(Arc::new);
            CACHE.insert(hash, row.clone()).await;
            row
        }
    };
    let Some(row) = row else { return Err(refused()) };
    let now = now_ms();
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|at| at <= now) {
        return Err(refused());
    }
    let mut caller =
        Caller::new(&row.tenant, Some(&format!("apikey:{}", row.id)), permissions_of(&row));
    caller.client_id = Some(row.name.clone());
    Ok(caller)
}

fn permission_named(name: &str) -> Option<Permission> {
    Permission::ALL.into_iter().find(|p| p.as_str() == name)
}

fn permissions_of(row: &ApiKeyRow) -> Permissions {
    serde_json::from_str::<Vec<String>>(&row.permissions)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| permission_named(p))
        .collect()
}

/// A permission a key can carry: the tenant's ones (never `operator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyPermission {
    Read,
    Write,
    Execute,
    Contain,
    Files,
    Admin,
}

impl KeyPermission {
    fn permission(self) -> Permission {
        match self {
            KeyPermission::Read => Permission::Read,
            KeyPermission::Write => Permission::Write,
            KeyPermission::Execute => Permission::Execute,
            KeyPermission::Contain => Permission::Contain,
            KeyPermission::Files => Permission::Files,
            KeyPermission::Admin => Permission::Admin,
        }
    }

    fn of(p: Permission) -> Option<KeyPermission> {
        Some(match p {
            Permission::Read => KeyPermission::Read,
            Permission::Write => KeyPermission::Write,
            Permission::Execute => KeyPermission::Execute,
            Permission::Contain => KeyPermission::Contain,
            Permission::Files => KeyPermission::Files,
            Permission::Admin => KeyPermission::Admin,
            Permission::Operator => return None,
        })
    }
}

/// A new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// What the key is for (shown in listings and as the audit trail's `client_id`).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        example = "cb-soar"
    )]
    pub name: String,
    /// What the key may do: permissions the creating caller holds, each once.
    #[schema(min_items = 1, max_items = 6)]
    pub permissions: Vec<KeyPermission>,
    /// Days until the key expires; absent: never.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// A key, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The key's first 12 characters (`edrg_…`), to tell keys apart.
    pub prefix: String,
    pub permissions: Vec<KeyPermission>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// The caller (`sub`) who made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key just made: the only answer with the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key (`edrg_…`), sent as `X-Auth-Token` to the static-token doors: keep it; it is
    /// not shown again.
    pub key: String,
}

/// The tenant's keys, newest first (at most 500).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKey>,
}

fn from_row(row: &ApiKeyRow) -> ApiKey {
    ApiKey {
        id: Uuid::try_parse(&row.id).unwrap_or_default(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        permissions: permissions_of(row).iter().filter_map(KeyPermission::of).collect(),
        created_at: from_ms(row.created_at),
        created_by: row.created_by.clone(),
        expires_at: row.expires_at.map(from_ms),
        revoked_at: row.revoked_at.map(from_ms),
    }
}

fn store_failure(error: crate::store::StoreError) -> ApiError {
    tracing::error!(%error, "API key store call failed");
    ApiError::internal()
}

fn unprocessable(detail: impl Into<String>) -> ApiError {
    ApiError::with_status(
        StatusCode::UNPROCESSABLE_ENTITY,
        edrgate_adapter::ErrorCode::InvalidRequest,
        detail,
    )
}

async fn audited(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    event: AuditEvent,
    status: u16,
    row: &ApiKeyRow,
) {
    // The id, name and permissions: never the key or its hash.
    let mut entry = AuditRecord::new(event, "ok", status);
    entry.detail = Some(serde_json::json!({
        "api_key_id": row.id,
        "name": row.name,
        "permissions": serde_json::from_str::<serde_json::Value>(&row.permissions).unwrap_or_default(),
    }));
    audit::record(state, caller, meta, entry).await;
}

/// Create API key
///
/// Makes a long-lived key for clients that send one static token (`X-Auth-Token`: cbapi, CB
/// SOAR) to the Carbon Black front door. The key carries the permissions given (a subset of
/// the caller's), is in this answer only (`key`), and works until revoked or expired. Keys are
/// not accepted on `/v1`, which takes JWTs.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    operation_id = "CreateApiKey",
    request_body(content = NewApiKey, example = json!({
        "name": "cb-soar",
        "permissions": ["read", "contain"],
        "expires_in_days": 365
    })),
    responses(
        (status = 201, description = "Created; the key is in this answer only", body = ApiKeyWithSecret),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission, or a permission the key is to carry", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant has the most keys allowed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, permissions or expiry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn create_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Json(new): Json<NewApiKey>,
) -> Result<Response, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::ApiKeyCreate)).await?;
    let name = new.name.trim();
    if name.is_empty() || new.name.chars().count() > MAX_NAME || name.contains('\0') {
        return Err(unprocessable(format!("name: 1 to {MAX_NAME} characters, not blank")));
    }
    let distinct: std::collections::BTreeSet<KeyPermission> =
        new.permissions.iter().copied().collect();
    if new.permissions.is_empty() || distinct.len() != new.permissions.len() {
        return Err(unprocessable("permissions: at least one, each once"));
    }
    if new.expires_in_days.is_some_and(|d| !(1..=MAX_EXPIRES_IN_DAYS).contains(&d)) {
        return Err(unprocessable(format!("expires_in_days: 1 to {MAX_EXPIRES_IN_DAYS}")));
    }
    let granted: Permissions = new.permissions.iter().map(|p| p.permission()).collect();
    // A caller cannot hand out more than it holds.
    if let Err(refusal) = caller.require_all(granted.iter()) {
        let error = ApiError::from(refusal);
        audit::record(&state, &caller, &meta, audit::refused(AuditEvent::ApiKeyCreate, &error))
            .await;
        return Err(error);
    }
    let store = state.engine.store();
    let now = now_ms();
    if store.active_api_keys(&caller.tenant, now).await.map_err(store_failure)? >= MAX_KEYS {
        return Err(ApiError::new(
            edrgate_adapter::ErrorCode::Conflict,
            format!("a tenant has at most {MAX_KEYS} API keys in force: revoke one first"),
        ));
    }
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let names: Vec<&str> = granted.iter().map(Permission::as_str).collect();
    let row = ApiKeyRow {
        id: Uuid::now_v7().to_string(),
        tenant: caller.tenant.clone(),
        name: name.to_owned(),
        key_sha256: sha256_hex(&key),
        prefix: key.chars().take(DISPLAY_PREFIX).collect(),
        permissions: serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_owned()),
        created_at: now,
        created_by: caller.subject.clone(),
        expires_at: new.expires_in_days.map(|d| now.saturating_add(i64::from(d) * 86_400_000)),
        revoked_at: None,
    };
    store.insert_api_key(&row).await.map_err(store_failure)?;
    // A `None` cached for this hash (someone tried the key before it existed) must not linger.
    CACHE.invalidate(&row.key_sha256).await;
    audited(&state, &caller, &meta, AuditEvent::ApiKeyCreate, 201, &row).await;
    tracing::info!(tenant = %caller.tenant, api_key_id = %row.id, "API key created");
    let mut response =
        (StatusCode::CREATED, Json(ApiKeyWithSecret { api_key: from_row(&row), key }))
            .into_response();
    if let Ok(link) = HeaderValue::from_str(&meta.link(&format!("/v1/api-keys/{}", row.id))) {
        response.headers_mut().insert(LOCATION, link);
    }
    Ok(response)
}

/// List API keys
///
/// The tenant's keys, newest first (at most 500), revoked ones included; never the keys
/// themselves, only their first characters (`prefix`).
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    operation_id = "ListApiKeys",
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn list_api_keys(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
) -> Result<Json<ApiKeyList>, ApiError> {
    audit::require_admin(&state, &caller, &meta, None).await?;
    let rows = state.engine.store().api_keys(&caller.tenant).await.map_err(store_failure)?;
    // A revoked key is gone from the API (its revocation stays in the audit trail).
    let live = rows.iter().filter(|row| row.revoked_at.is_none());
    Ok(Json(ApiKeyList { items: live.map(from_row).collect() }))
}

/// Get API key
#[utoipa::path(
    get,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    operation_id = "GetApiKey",
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, without its secret", body = ApiKey),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn get_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Json<ApiKey>, ApiError> {
    audit::require_admin(&state, &caller, &meta, None).await?;
    let row = state
        .engine
        .store()
        .api_key(&caller.tenant, &id.to_string())
        .await
        .map_err(store_failure)?
        .filter(|row| row.revoked_at.is_none())
        .ok_or_else(|| ApiError::not_found("no such API key"))?;
    Ok(Json(from_row(&row)))
}

/// Revoke API key
///
/// The key stops working at once on this replica and within 5 seconds on the others (their
/// cache of looked-up keys); it is then gone from the list and `404` (its revocation stays in
/// the audit trail, `apikey.revoke`). Revoking again changes
/// nothing and answers `204` too.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    operation_id = "RevokeApiKey",
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn revoke_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    audit::require_admin(&state, &caller, &meta, Some(AuditEvent::ApiKeyRevoke)).await?;
    let row = state
        .engine
        .store()
        .revoke_api_key(&caller.tenant, &id.to_string())
        .await
        .map_err(store_failure)?
        .ok_or_else(|| ApiError::not_found("no such API key"))?;
    CACHE.invalidate(&row.key_sha256).await;
    audited(&state, &caller, &meta, AuditEvent::ApiKeyRevoke, 204, &row).await;
    tracing::info!(tenant = %caller.tenant, api_key_id = %row.id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
