//! One way to run a statement on either database, so the store's logic is written once.
//!
//! Statements use `$N` placeholders, which both SQLite and PostgreSQL understand; arguments are
//! the few types the schema uses ([`Arg`]); rows come back as `#[derive(FromRow)]` structs whose
//! field types decode from both (TEXT → `String`, BIGINT/INTEGER → `i64`, BOOLEAN/INTEGER →
//! `bool`). No `Any` driver: each arm is the real driver with its real types.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, PgPool, Postgres, Sqlite, SqlitePool};

use super::Result;

/// Which SQL dialect a statement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound value.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::Int(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Arg {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// `args![a, b, c]`: the arguments of a statement, in placeholder order.
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($crate::store::db::Arg::from($a)),*] };
}
pub(crate) use args;

/// A row type both drivers can decode.
pub(crate) trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

fn sqlite_query(
    sql: &'static str,
    args: Vec<Arg>,
) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut q = sqlx::query::<Sqlite>(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

fn pg_query(
    sql: &'static str,
    args: Vec<Arg>,
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query::<Postgres>(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

fn sqlite_query_as<T: Record>(
    sql: &'static str,
    args: Vec<Arg>,
) -> sqlx::query::QueryAs<'static, Sqlite, T, sqlx::sqlite::SqliteArguments> {
    let mut q = sqlx::query_as::<Sqlite, T>(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

fn pg_query_as<T: Record>(
    sql: &'static str,
    args: Vec<Arg>,
) -> sqlx::query::QueryAs<'static, Postgres, T, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query_as::<Postgres, T>(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

/// A connection pool of either kind. Not `Debug`: PostgreSQL's options hold the password.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction of either kind. Dropped without `commit`, it rolls back.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Db {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A writing transaction. SQLite's takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// deferred one that reads first fails with `SQLITE_BUSY` when it upgrades.
    pub(crate) async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query(sql, args).execute(p).await?.rows_affected(),
            Db::Postgres(p) => pg_query(sql, args).execute(p).await?.rows_affected(),
        })
    }

    pub(crate) async fn fetch_all<T: Record>(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<T>> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query_as(sql, args).fetch_all(p).await?,
            Db::Postgres(p) => pg_query_as(sql, args).fetch_all(p).await?,
        })
    }

    pub(crate) async fn fetch_optional<T: Record>(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Option<T>> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query_as(sql, args).fetch_optional(p).await?,
            Db::Postgres(p) => pg_query_as(sql, args).fetch_optional(p).await?,
        })
    }

    pub(crate) async fn fetch_one<T: Record>(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<T> {
        Ok(match self {
            Db::Sqlite(p) => sqlite_query_as(sql, args).fetch_one(p).await?,
            Db::Postgres(p) => pg_query_as(sql, args).fetch_one(p).await?,
        })
    }
}

impl Tx {
    pub(crate) async fn execute(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(t) => sqlite_query(sql, args).execute(&mut **t).await?.rows_affected(),
            Tx::Postgres(t) => pg_query(sql, args).execute(&mut **t).await?.rows_affected(),
        })
    }

    pub(crate) async fn fetch_all<T: Record>(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<T>> {
        Ok(match self {
            Tx::Sqlite(t) => sqlite_query_as(sql, args).fetch_all(&mut **t).await?,
            Tx::Postgres(t) => pg_query_as(sql, args).fetch_all(&mut **t).await?,
        })
    }

    pub(crate) async fn fetch_one<T: Record>(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<T> {
        Ok(match self {
            Tx::Sqlite(t) => sqlite_query_as(sql, args).fetch_one(&mut **t).await?,
            Tx::Postgres(t) => pg_query_as(sql, args).fetch_one(&mut **t).await?,
        })
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// Picks the statement for the database at hand: `sql!(db, sqlite: "…", postgres: "…")`.
/// Both texts stay side by side where the dialects differ.
macro_rules! sql {
    ($dialect:expr, sqlite: $s:expr, postgres: $p:expr $(,)?) => {
        match $dialect {
            $crate::store::db::Dialect::Sqlite => $s,
            $crate::store::db::Dialect::Postgres => $p,
        }
    };
}
pub(crate) use sql;
