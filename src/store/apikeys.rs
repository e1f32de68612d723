//! Tenant API keys as stored: the SHA-256 of each key, never the key ([`crate::api::apikeys`]).

use super::{Result, Store, args, now_ms};

/// A key as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// Lower-case hex SHA-256 of the whole key.
    pub key_sha256: String,
    /// The key's first 12 characters (`edrg_` and 7 more), shown in listings.
    pub prefix: String,
    /// JSON array of permission names.
    pub permissions: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The most keys a listing returns (the unrevoked ones are capped lower by the API).
pub const MAX_LISTED: i64 = 500;

impl Store {
    pub async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO api_keys (id, tenant, name, key_sha256, prefix, permissions,
                    created_at, created_by, expires_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                args![
                    &k.id,
                    &k.tenant,
                    &k.name,
                    &k.key_sha256,
                    &k.prefix,
                    &k.permissions,
                    k.created_at,
                    &k.created_by,
                    k.expires_at,
                    k.revoked_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// The tenant's keys, newest first, at most [`MAX_LISTED`].
    pub async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRow>> {
        self.db()
            .fetch_all(
                "SELECT * FROM api_keys WHERE tenant = $1
                 ORDER BY created_at DESC, id DESC LIMIT $2",
                args![tenant, MAX_LISTED],
            )
            .await
    }

    pub async fn api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRow>> {
        self.db()
            .fetch_optional(
                "SELECT * FROM api_keys WHERE tenant = $1 AND id = $2",
                args![tenant, id],
            )
            .await
    }

    /// The key whose SHA-256 is `sha256` (hex), whatever its tenant or state.
    pub async fn api_key_by_hash(&self, sha256: &str) -> Result<Option<ApiKeyRow>> {
        self.db()
            .fetch_optional("SELECT * FROM api_keys WHERE key_sha256 = $1", args![sha256])
            .await
    }

    /// The tenant's keys neither revoked nor expired at `now` (the cap counts these).
    pub async fn active_api_keys(&self, tenant: &str, now: i64) -> Result<u64> {
        let (n,): (i64,) = self
            .db()
            .fetch_one(
                "SELECT COUNT(*) FROM api_keys WHERE tenant = $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > $2)",
                args![tenant, now],
            )
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Revokes a key (a second revocation keeps the first time). The key as it is now; `None`
    /// when the tenant has no such key.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRow>> {
        self.db()
            .execute(
                "UPDATE api_keys SET revoked_at = $3
                 WHERE tenant = $1 AND id = $2 AND revoked_at IS NULL",
                args![tenant, id, now_ms()],
            )
            .await?;
        self.api_key(tenant, id).await
    }
}
