//! The Carbon Black front door's commands and session files (migration 0020): integer ids
//! for CB clients, each command tied to the edrgate action that runs it, each session file to
//! a file in edrgate's file store (src/frontdoor/cb/commands.rs, files.rs).

use super::{Result, Store, args, now_ms};

/// A CB command as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CbCommandRow {
    pub id: i64,
    pub tenant: String,
    pub session_id: i64,
    pub sensor_id: i64,
    pub name: String,
    pub object_json: String,
    pub username: String,
    /// The edrgate `ActionRequest` (JSON) that runs it; `None` for a refused request.
    pub request_json: Option<String>,
    pub action_id: Option<String>,
    pub file_id: Option<i64>,
    pub refusal_code: Option<String>,
    pub refusal_message: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What a new command row holds.
pub struct NewCbCommand<'a> {
    pub tenant: &'a str,
    pub session_id: i64,
    pub sensor_id: i64,
    pub name: &'a str,
    pub object_json: &'a str,
    pub username: &'a str,
    pub request_json: Option<&'a str>,
    pub refusal: Option<(&'a str, &'a str)>,
    /// `get file`: allocate a session file (named after the remote path) whose id the POST
    /// answer carries before the file exists.
    pub get_file_name: Option<&'a str>,
}

/// A file of a CB session as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CbSessionFileRow {
    pub id: i64,
    pub tenant: String,
    pub session_id: i64,
    /// The edrgate file; `None` while a `get file` has not stored it yet.
    pub file_id: Option<String>,
    pub command_id: Option<i64>,
    pub name: String,
    pub size: i64,
    pub created_at: i64,
}

/// Longest page of a session's commands or files.
pub const MAX_LIST: i64 = 1000;

impl Store {
    /// Stores a command, and for `get file` its session file, in one transaction.
    pub async fn insert_cb_command(&self, new: &NewCbCommand<'_>) -> Result<CbCommandRow> {
        let now = now_ms();
        let mut tx = self.db().begin().await?;
        let file_id = match new.get_file_name {
            None => None,
            Some(name) => {
                let (id,): (i64,) = tx
                    .fetch_one(
                        "INSERT INTO cb_session_files (tenant, session_id, name, size, created_at)
                         VALUES ($1, $2, $3, 0, $4) RETURNING id",
                        args![new.tenant, new.session_id, name, now],
                    )
                    .await?;
                Some(id)
            }
        };
        let (refusal_code, refusal_message) = match new.refusal {
            Some((c, m)) => (Some(c), Some(m)),
            None => (None, None),
        };
        let row: CbCommandRow = tx
            .fetch_one(
                "INSERT INTO cb_commands (tenant, session_id, sensor_id, name, object_json,
                    username, request_json, file_id, refusal_code, refusal_message, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                args![
                    new.tenant,
                    new.session_id,
                    new.sensor_id,
                    new.name,
                    new.object_json,
                    new.username,
                    new.request_json,
                    file_id,
                    refusal_code,
                    refusal_message,
                    now,
                ],
            )
            .await?;
        if let Some(file_id) = file_id {
            tx.execute(
                "UPDATE cb_session_files SET command_id = $2 WHERE id = $1",
                args![file_id, row.id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Records the action that runs a command (set once: a second submission with the same
    /// Idempotency-Key names the same action).
    pub async fn set_cb_command_action(
        &self,
        tenant: &str,
        id: i64,
        action_id: &str,
    ) -> Result<()> {
        self.db()
            .execute(
                "UPDATE cb_commands SET action_id = $3 WHERE tenant = $1 AND id = $2",
                args![tenant, id, action_id],
            )
            .await?;
        Ok(())
    }

    /// Records why a command was not run (a refusal at submission: permission, admission, a
    /// backend's limits); the command then reads `error`.
    pub async fn refuse_cb_command(
        &self,
        tenant: &str,
        id: i64,
        code: &str,
        message: &str,
    ) -> Result<()> {
        self.db()
            .execute(
                "UPDATE cb_commands SET refusal_code = $3, refusal_message = $4
                 WHERE tenant = $1 AND id = $2 AND action_id IS NULL",
                args![tenant, id, code, message],
            )
            .await?;
        Ok(())
    }

    pub async fn cb_command(
        &self,
        tenant: &str,
        session_id: i64,
        id: i64,
    ) -> Result<Option<CbCommandRow>> {
        self.db()
            .fetch_optional(
                "SELECT * FROM cb_commands WHERE tenant = $1 AND session_id = $2 AND id = $3",
                args![tenant, session_id, id],
            )
            .await
    }

    /// A session's commands, oldest first, at most `limit` (capped at [`MAX_LIST`]).
    pub async fn cb_commands(
        &self,
        tenant: &str,
        session_id: i64,
        limit: i64,
    ) -> Result<Vec<CbCommandRow>> {
        self.db()
            .fetch_all(
                "SELECT * FROM cb_commands WHERE tenant = $1 AND session_id = $2
                 ORDER BY id LIMIT $3",
                args![tenant, session_id, limit.clamp(0, MAX_LIST)],
            )
            .await
    }

    /// Stores a session file for a file already in edrgate's store (an upload).
    pub async fn insert_cb_session_file(
        &self,
        tenant: &str,
        session_id: i64,
        file_id: &str,
        name: &str,
        size: i64,
    ) -> Result<CbSessionFileRow> {
        self.db()
            .fetch_one(
                "INSERT INTO cb_session_files (tenant, session_id, file_id, name, size, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                args![tenant, session_id, file_id, name, size, now_ms()],
            )
            .await
    }

    pub async fn cb_session_file(
        &self,
        tenant: &str,
        session_id: i64,
        id: i64,
    ) -> Result<Option<CbSessionFileRow>> {
        self.db()
            .fetch_optional(
                "SELECT * FROM cb_session_files WHERE tenant = $1 AND session_id = $2 AND id = $3",
                args![tenant, session_id, id],
            )
            .await
    }

    /// A session's files, oldest first (at most [`MAX_LIST`]).
    pub async fn cb_session_files(
        &self,
        tenant: &str,
        session_id: i64,
    ) -> Result<Vec<CbSessionFileRow>> {
        self.db()
            .fetch_all(
                "SELECT * FROM cb_session_files WHERE tenant = $1 AND session_id = $2
                 ORDER BY id LIMIT $3",
                args![tenant, session_id, MAX_LIST],
            )
            .await
    }

    /// Fills a `get file`'s session file once its action stored the file. Every poll of the
    /// finished command comes here: a read tells whether it is still empty, so only the first
    /// writes (an UPDATE that matches nothing still takes SQLite's write lock).
    pub async fn fill_cb_session_file(
        &self,
        tenant: &str,
        id: i64,
        file_id: &str,
        size: i64,
    ) -> Result<()> {
        let empty: Option<(i64,)> = self
            .db()
            .fetch_optional(
                "SELECT id FROM cb_session_files WHERE tenant = $1 AND id = $2 AND file_id IS NULL",
                args![tenant, id],
            )
            .await?;
        if empty.is_none() {
            return Ok(());
        }
        self.db()
            .execute(
                "UPDATE cb_session_files SET file_id = $3, size = $4
                 WHERE tenant = $1 AND id = $2 AND file_id IS NULL",
                args![tenant, id, file_id, size],
            )
            .await?;
        Ok(())
    }

    /// Forgets a session file (the edrgate file stays, under its own retention and custody).
    /// `false`: no such file.
    pub async fn delete_cb_session_file(
        &self,
        tenant: &str,
        session_id: i64,
        id: i64,
    ) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "DELETE FROM cb_session_files WHERE tenant = $1 AND session_id = $2 AND id = $3",
                args![tenant, session_id, id],
            )
            .await?;
        Ok(n == 1)
    }
}
