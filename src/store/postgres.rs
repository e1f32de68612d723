//! The PostgreSQL side of the store: connecting, the change listener (LISTEN/NOTIFY) and the
//! vendor budget the replicas share.

use std::collections::HashSet;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edrgate_adapter::{AdapterError, SharedBudget};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{CHANGES_CHANNEL, Db, Result, args};

pub(super) fn migrator() -> Migrator {
    sqlx::migrate!("schemas/migrations/postgres")
}

/// Connects to `url` and applies migrations. sqlx's migrator takes an advisory lock, so
/// replicas starting together apply them once.
pub(super) async fn connect(url: &str, max_connections: u32) -> Result<Db> {
    let options = PgConnectOptions::from_str(url)?.application_name("edrgate");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    migrator().run(&pool).await?;
    Ok(Db::Postgres(pool))
}

/// A change to an action made by some replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub action_id: Uuid,
    /// A cancel was requested: whoever drives the action's runs stops them.
    pub cancel: bool,
}

/// Changes to actions made by any replica (this one included), from NOTIFY.
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    pub(super) async fn connect(pool: &PgPool) -> Result<ChangeListener> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(ChangeListener { listener })
    }

    /// The next changed action. `Ok(None)`: the connection was lost and is being re-established
    /// (notifications sent meanwhile are lost; long-polls still end at their deadline).
    pub async fn next(&mut self) -> Result<Option<Change>> {
        loop {
            let Some(n) = self.listener.try_recv().await? else { return Ok(None) };
            let (id, cancel) = match n.payload().split_once(' ') {
                Some((id, "cancel")) => (id, true),
                _ => (n.payload(), false),
            };
            match Uuid::try_parse(id) {
                Ok(action_id) => return Ok(Some(Change { action_id, cancel })),
                Err(_) => tracing::warn!(payload = n.payload(), "unexpected change notice"),
            }
        }
    }
}

/// How long a budget slot stays held without renewal: a replica that dies frees its slots
/// after this (its runs' slots are taken over sooner, with the runs).
const SLOT_TTL: Duration = Duration::from_secs(60);

/// The vendor budget in PostgreSQL rows (`budget_slots`, `budget_calls`). Each check-and-take is
/// one call of a server-side function (migration 0007) holding a transaction-level advisory
/// lock on the scope while it runs, so replicas asking at once are served one at a time and
/// never both take the last slot or call, and nobody waits on a lock across a round trip.
pub struct PgBudget {
    pool: PgPool,
    /// (scope, key, token) of the slots this process holds, renewed every third of the TTL,
    /// until their row is deleted (a release is queued, then done by the budget's task).
    held: Arc<Mutex<HashSet<(String, String, String)>>>,
    releases: mpsc::UnboundedSender<(String, String, String)>,
}

impl PgBudget {
    pub(super) fn start(pool: PgPool, shutdown: CancellationToken) -> Arc<PgBudget> {
        let (releases, mut queue) = mpsc::unbounded_channel::<(String, String, String)>();
        let budget =
            Arc::new(PgBudget { pool, held: Arc::new(Mutex::new(HashSet::new())), releases });
        let weak = Arc::downgrade(&budget);
        tokio::spawn(async move {
            let mut renew = tokio::time::interval(SLOT_TTL / 3);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = renew.tick() => {
                        let Some(budget) = weak.upgrade() else { return };
                        if let Err(error) = budget.renew().await {
                            tracing::warn!(%error, "renewing shared budget slots failed");
                        }
                    }
                    release = queue.recv() => {
                        let Some((scope, key, token)) = release else { return };
                        let Some(budget) = weak.upgrade() else { return };
                        delete(&budget.pool, &budget.held, (scope, key, token)).await;
                    }
                }
            }
        });
        budget
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String, String)>> {
        lock_held(&self.held)
    }

    async fn renew(&self) -> Result<()> {
        let held: Vec<_> = self.held().iter().cloned().collect();
        let db = self.db();
        for (scope, key, token) in held {
            db.execute(
                "UPDATE budget_slots SET expires_at = edrgate_budget_now() + $4
                 WHERE scope = $1 AND key = $2 AND token = $3",
                args![scope, key, token, ms(SLOT_TTL)],
            )
            .await?;
        }
        Ok(())
    }

    async fn take_slot(
        &self,
        scope: &str,
        capacity: usize,
        key: &str,
        holder: &str,
    ) -> Result<Option<String>> {
        let token = Uuid::now_v7().simple().to_string();
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
        let (taken,): (bool,) = self
            .db()
            .fetch_one(
                "SELECT edrgate_take_slot($1, $2, $3, $4, $5, $6)",
                args![scope, capacity, key, holder, &token, ms(SLOT_TTL)],
            )
            .await?;
        if !taken {
            return Ok(None);
        }
        self.held().insert((scope.to_owned(), key.to_owned(), token.clone()));
        Ok(Some(token))
    }

    async fn call(&self, scope: &str, limit: u32, window: Duration) -> Result<Option<Duration>> {
        // Calls are counted from when they were taken, a little before the vendor sees them, so
        // the window is widened by a margin: the vendor must never count more than `limit` in
        // any window of its own. The one margin for every vendor (adapters pass the vendor's
        // window): what lies between the take and the vendor is the request's own way there
        // (connection, TLS), since intents are journaled before the take. A twentieth of the
        // window, at least 250 ms, at most 2 s (3% of Defender's minute).
        let window = ms(window) + (ms(window) / 20).clamp(250, 2_000);
        let (wait,): (i64,) = self
            .db()
            .fetch_one(
                "SELECT edrgate_take_call($1, $2, $3)",
                args![scope, i64::from(limit), window],
            )
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(u64::try_from(wait).unwrap_or(1))))
    }

    fn db(&self) -> Db {
        Db::Postgres(self.pool.clone())
    }
}

#[async_trait]
impl SharedBudget for PgBudget {
    fn is_shared(&self) -> bool {
        true
    }

    async fn try_take_slot(
        &self,
        scope: &str,
        capacity: usize,
        key: &str,
        holder: &str,
    ) -> std::result::Result<Option<String>, AdapterError> {
        self.take_slot(scope, capacity, key, holder).await.map_err(budget_error)
    }

    fn release_slot(&self, scope: &str, key: &str, token: &str) {
        // Called from `Drop`: the delete runs on a task of its own at once (a slot freed late
        // keeps the replicas' budget full for nothing), or on the budget's task without a
        // runtime at hand.
        let id = (scope.to_owned(), key.to_owned(), token.to_owned());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (pool, held) = (self.pool.clone(), Arc::clone(&self.held));
                runtime.spawn(async move { delete(&pool, &held, id).await });
            }
            Err(_) => {
                let _ = self.releases.send(id);
            }
        }
    }

    async fn release_all(&self) {
        let held: Vec<_> = self.held().iter().cloned().collect();
        for id in held {
            delete(&self.pool, &self.held, id).await;
        }
    }

    async fn take_call(
        &self,
        scope: &str,
        limit: u32,
        window: Duration,
    ) -> std::result::Result<Option<Duration>, AdapterError> {
        self.call(scope, limit, window).await.map_err(budget_error)
    }
}

type Held = Mutex<HashSet<(String, String, String)>>;

fn lock_held(held: &Held) -> std::sync::MutexGuard<'_, HashSet<(String, String, String)>> {
    // A set of ids: a poisoned lock still holds a consistent set.
    held.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees slot `(scope, key, token)` and stops renewing it.
async fn delete(pool: &PgPool, held: &Held, id: (String, String, String)) {
    let (scope, key, token) = &id;
    let deleted = Db::Postgres(pool.clone())
        .execute(
            "DELETE FROM budget_slots WHERE scope = $1 AND key = $2 AND token = $3",
            args![scope, key, token],
        )
        .await;
    match deleted {
        Ok(_) => {
            lock_held(held).remove(&id);
        }
        // Still renewed, so freed by `release_all` at shutdown at the latest; after a crash the
        // row expires on its own.
        Err(error) => tracing::warn!(%error, "freeing a shared budget slot failed"),
    }
}

fn budget_error(error: super::StoreError) -> AdapterError {
    tracing::error!(%error, "shared budget");
    // Retryable: the engine backs off and steps again; no vendor call was made.
    AdapterError::transient(
        edrgate_adapter::ErrorCode::Internal,
        "the vendor budget shared by the replicas is unavailable (database)",
    )
    .with_retry_after(Some(Duration::from_secs(1)))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
