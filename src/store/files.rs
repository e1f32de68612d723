//! Stored files' metadata and custody (`files`): the bytes live in the file store
//! (`crate::files`); this is the record callers and the purge go by.

use super::{
    FileMeta, FileOrigin, Result, Store, args, from_json, from_ms, now_ms, to_json, to_ms,
};

impl Store {
    pub async fn insert_file(&self, meta: &FileMeta) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO files (id, tenant, name, size, sha256, created_at, origin_json, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    &meta.id,
                    &meta.tenant,
                    &meta.name,
                    i64::try_from(meta.size).unwrap_or(i64::MAX),
                    &meta.sha256,
                    to_ms(meta.created_at),
                    to_json(&meta.origin)?,
                    meta.expires_at.map(to_ms),
                ],
            )
            .await?;
        Ok(())
    }

    /// A live file of `tenant`: neither deleted nor expired at `now` (unix ms).
    pub async fn file(&self, tenant: &str, id: &str, now: i64) -> Result<Option<FileMeta>> {
        let row: Option<FileRow> = self
            .db
            .fetch_optional(
                "SELECT * FROM files WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL
                   AND (expires_at IS NULL OR expires_at > $3)",
                args![id, tenant, now],
            )
            .await?;
        row.map(|r| {
            Ok(FileMeta {
                id: r.id,
                tenant: r.tenant,
                name: r.name,
                size: u64::try_from(r.size).unwrap_or(0),
                sha256: r.sha256,
                created_at: from_ms(r.created_at),
                expires_at: r.expires_at.map(from_ms),
                origin: from_json(&r.origin_json)?,
            })
        })
        .transpose()
    }

    /// Records the vendor's reference of the command a file is the result of, once known (a
    /// compare-and-set of the custody JSON, the same SQL on both databases).
    pub async fn set_file_vendor_ref(
        &self,
        tenant: &str,
        id: &str,
        vendor_ref: &str,
    ) -> Result<()> {
        let row: Option<FileRow> = self
            .db
            .fetch_optional("SELECT * FROM files WHERE id = $1 AND tenant = $2", args![id, tenant])
            .await?;
        let Some(row) = row else { return Ok(()) };
        let mut origin: FileOrigin = from_json(&row.origin_json)?;
        if origin.vendor_ref.is_some() {
            return Ok(());
        }
        origin.vendor_ref = Some(vendor_ref.to_owned());
        self.db
            .execute(
                "UPDATE files SET origin_json = $3 WHERE id = $1 AND tenant = $2 AND origin_json = $4",
                args![id, tenant, to_json(&origin)?, &row.origin_json],
            )
            .await?;
        Ok(())
    }

    /// Hides a file at once (its content is deleted next). `false` if there is no such live
    /// file.
    pub async fn mark_file_deleted(&self, tenant: &str, id: &str) -> Result<bool> {
        let n = self
            .db
            .execute(
                "UPDATE files SET deleted_at = $3 WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL",
                args![id, tenant, now_ms()],
            )
            .await?;
        Ok(n == 1)
    }

    /// `(tenant, id)` of up to `limit` files deleted or expired at `now`, whose content is to
    /// be purged.
    pub async fn files_to_purge(&self, now: i64, limit: u32) -> Result<Vec<(String, String)>> {
        self.db
            .fetch_all(
                "SELECT tenant, id FROM files WHERE deleted_at IS NOT NULL OR expires_at <= $1
                 ORDER BY id LIMIT $2",
                args![now, i64::from(limit)],
            )
            .await
    }

    /// Forgets a file whose content is gone.
    pub async fn purge_file(&self, id: &str) -> Result<()> {
        self.db.execute("DELETE FROM files WHERE id = $1", args![id]).await?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct FileRow {
    id: String,
    tenant: String,
    name: String,
    size: i64,
    sha256: String,
    created_at: i64,
    origin_json: String,
    expires_at: Option<i64>,
}
