//! The Carbon Black EDR front door's records (migration 0019): the durable integer alias of
//! every (tenant, backend, device) a CB client has seen as a sensor, and the virtual
//! live-response sessions. Ids are never reused (front-doors.md §1.10): SQLite
//! `AUTOINCREMENT`, PostgreSQL identity columns.

use super::{Result, Store, args, now_ms};

/// A sensor alias.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CbSensorRow {
    pub id: i64,
    pub tenant: String,
    pub backend: String,
    pub device_id: String,
    pub hostname: String,
    pub created_at: i64,
    /// Isolation as last requested through the door (`None`: never requested).
    pub isolation_requested: Option<bool>,
    pub isolation_seq: i64,
    /// The action that carries the last isolation request out.
    pub isolation_action_id: Option<String>,
}

/// A virtual live-response session.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CbSessionRow {
    pub id: i64,
    pub tenant: String,
    pub sensor_id: i64,
    /// [`SESSION_ACTIVE`] or [`SESSION_CLOSED`].
    pub status: String,
    pub hostname: String,
    pub os_type: i64,
    /// JSON array of CB command names.
    pub supported_json: String,
    pub session_timeout: i64,
    pub sensor_wait_timeout: i64,
    pub check_in_timeout: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_active_at: i64,
    pub closed_at: Option<i64>,
}

impl CbSessionRow {
    /// The CB command names the session supports.
    pub fn supported(&self) -> Vec<String> {
        serde_json::from_str(&self.supported_json).unwrap_or_default()
    }

    /// Still usable at `now` (ms): not closed and not idle past its `session_timeout`.
    pub fn is_open(&self, now: i64) -> bool {
        self.status == SESSION_ACTIVE
            && now.saturating_sub(self.last_active_at) <= self.session_timeout.saturating_mul(1000)
    }
}

/// What a new session is made of.
#[derive(Clone, Debug)]
pub struct NewCbSession {
    pub tenant: String,
    pub sensor_id: i64,
    pub hostname: String,
    pub os_type: i64,
    pub supported: Vec<String>,
    pub session_timeout: i64,
    pub sensor_wait_timeout: i64,
    pub check_in_timeout: i64,
}

pub const SESSION_ACTIVE: &str = "active";
pub const SESSION_CLOSED: &str = "close";

impl Store {
    /// The sensor id of (tenant, backend, device_id), made on first sight; `hostname` is kept
    /// as the device's last known name (written only when it changed).
    pub async fn cb_sensor_alias(
        &self,
        tenant: &str,
        backend: &str,
        device_id: &str,
        hostname: &str,
    ) -> Result<i64> {
        let known: Option<(i64, String)> = self
            .db()
            .fetch_optional(
                "SELECT id, hostname FROM cb_sensors
                 WHERE tenant = $1 AND backend = $2 AND device_id = $3",
                args![tenant, backend, device_id],
            )
            .await?;
        if let Some((id, known)) = &known
            && known == hostname
        {
            return Ok(*id);
        }
        // Both dialects: one statement, so two doors seeing a device at once agree on its id.
        let (id,): (i64,) = self
            .db()
            .fetch_one(
                "INSERT INTO cb_sensors (tenant, backend, device_id, hostname, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant, backend, device_id) DO UPDATE SET hostname = excluded.hostname
                 RETURNING id",
                args![tenant, backend, device_id, hostname, now_ms()],
            )
            .await?;
        Ok(id)
    }

    /// The tenant's sensor `id` (another tenant's is `None`).
    pub async fn cb_sensor(&self, tenant: &str, id: i64) -> Result<Option<CbSensorRow>> {
        self.db()
            .fetch_optional(
                "SELECT * FROM cb_sensors WHERE tenant = $1 AND id = $2",
                args![tenant, id],
            )
            .await
    }

    /// Records that isolation `isolated` is requested for the sensor; the request's sequence
    /// number, which changes only when the requested state does (so a repeated request is
    /// the same request), or with `renew` (the last request's action ended without carrying
    /// it out). `None`: no such sensor for the tenant.
    pub async fn cb_request_isolation(
        &self,
        tenant: &str,
        id: i64,
        isolated: bool,
        renew: bool,
    ) -> Result<Option<i64>> {
        let seq: Option<(i64,)> = self
            .db()
            .fetch_optional(
                "UPDATE cb_sensors SET
                    isolation_seq = isolation_seq + CASE
                        WHEN $4 = FALSE AND isolation_requested IS NOT NULL
                            AND isolation_requested = $3 THEN 0
                        ELSE 1 END,
                    isolation_requested = $3
                 WHERE tenant = $1 AND id = $2
                 RETURNING isolation_seq",
                args![tenant, id, isolated, renew],
            )
            .await?;
        Ok(seq.map(|(s,)| s))
    }

    /// Names the action carrying out isolation request `seq` (a later request wins).
    pub async fn cb_set_isolation_action(
        &self,
        tenant: &str,
        id: i64,
        seq: i64,
        action_id: &str,
    ) -> Result<()> {
        self.db()
            .execute(
                "UPDATE cb_sensors SET isolation_action_id = $4
                 WHERE tenant = $1 AND id = $2 AND isolation_seq = $3",
                args![tenant, id, seq, action_id],
            )
            .await?;
        Ok(())
    }

    /// Stores a new session, active from now.
    pub async fn cb_create_session(&self, new: &NewCbSession) -> Result<CbSessionRow> {
        let now = now_ms();
        let supported = serde_json::to_string(&new.supported).unwrap_or_else(|_| "[]".into());
        self.db()
            .fetch_one(
                "INSERT INTO cb_sessions (tenant, sensor_id, status, hostname, os_type,
                    supported_json, session_timeout, sensor_wait_timeout, check_in_timeout,
                    created_at, last_active_at)
                 VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, $9, $9)
                 RETURNING id, tenant, sensor_id, status, hostname, os_type, supported_json,
                    session_timeout, sensor_wait_timeout, check_in_timeout, created_at,
                    last_active_at, closed_at",
                args![
                    &new.tenant,
                    new.sensor_id,
                    &new.hostname,
                    new.os_type,
                    supported,
                    new.session_timeout,
                    new.sensor_wait_timeout,
                    new.check_in_timeout,
                    now,
                ],
            )
            .await
    }

    /// The tenant's session `id`, whatever its status.
    pub async fn cb_session(&self, tenant: &str, id: i64) -> Result<Option<CbSessionRow>> {
        self.db()
            .fetch_optional(
                "SELECT id, tenant, sensor_id, status, hostname, os_type, supported_json,
                    session_timeout, sensor_wait_timeout, check_in_timeout, created_at,
                    last_active_at, closed_at
                 FROM cb_sessions WHERE tenant = $1 AND id = $2",
                args![tenant, id],
            )
            .await
    }

    /// The tenant's newest `limit` sessions (only those not closed with `active_only`),
    /// newest first.
    pub async fn cb_sessions(
        &self,
        tenant: &str,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<CbSessionRow>> {
        self.db()
            .fetch_all(
                "SELECT id, tenant, sensor_id, status, hostname, os_type, supported_json,
                    session_timeout, sensor_wait_timeout, check_in_timeout, created_at,
                    last_active_at, closed_at
                 FROM cb_sessions
                 WHERE tenant = $1 AND ($2 = FALSE OR status = 'active')
                 ORDER BY id DESC LIMIT $3",
                args![tenant, active_only, limit],
            )
            .await
    }

    /// Marks activity on an active session (a command, a keepalive); `false` if it is not
    /// active any more.
    pub async fn cb_touch_session(&self, tenant: &str, id: i64, now: i64) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "UPDATE cb_sessions SET last_active_at = $3
                 WHERE tenant = $1 AND id = $2 AND status = 'active'",
                args![tenant, id, now],
            )
            .await?;
        Ok(n == 1)
    }

    /// Closes a session (idempotent: a closed one keeps its close time); `false`: no such
    /// session for the tenant.
    pub async fn cb_close_session(&self, tenant: &str, id: i64, now: i64) -> Result<bool> {
        self.db()
            .execute(
                "UPDATE cb_sessions SET status = 'close', closed_at = $3
                 WHERE tenant = $1 AND id = $2 AND status = 'active'",
                args![tenant, id, now],
            )
            .await?;
        Ok(self.cb_session(tenant, id).await?.is_some())
    }
}
