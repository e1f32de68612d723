//! Opening the SQLite store.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Db, Result};

pub(super) fn migrator() -> Migrator {
    sqlx::migrate!("schemas/migrations/sqlite")
}

/// Opens (creating if needed) the database at `path` and applies migrations.
pub(super) async fn open(path: &Path) -> Result<Db> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL + NORMAL: a commit survives a crash of the process (what the engine's restart
        // guarantees need); only an OS crash may lose the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
    migrator().run(&pool).await?;
    Ok(Db::Sqlite(pool))
}
