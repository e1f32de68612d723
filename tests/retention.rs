//! Retention of finished actions (`tenants.<id>.retention_days`,
//! `engine.action_retention_days`): old finished actions go with their runs, events and
//! deliveries, in batches; unfinished, recent and other tenants' actions stay. On SQLite
//! always, on PostgreSQL when `EDRGATE_TEST_POSTGRES_URL` is set.
//!
//! Actions are made "old" by writing `updated_at` (and the status) in the database directly.

use std::collections::BTreeMap;
use std::time::Duration;

use edrgate::store::retention::ActionRetention;
use edrgate::store::{Inserted, NewAction, NewRun, RunWrite, Store, now_ms};
use edrgate_adapter::{ActionRequest, Command, CommandState, Status, Target};
use edrgate_carbonblack_sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::{Backend, Gateway, spawn, token_as};

const DAY_MS: i64 = 86_400_000;

/// A store and a second, raw connection to its database.
struct TestStore {
    store: Store,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    /// Runs `sql` with `$1` = `text` and, when given, `$2` = `int`.
    async fn exec(&self, sql: &'static str, text: &str, int: Option<i64>) -> u64 {
        match self {
            Raw::Sqlite(p) => {
                let mut q = sqlx::query::<sqlx::Sqlite>(sql).bind(text.to_owned());
                if let Some(i) = int {
                    q = q.bind(i);
                }
                q.execute(p).await.unwrap().rows_affected()
            }
            Raw::Postgres(p) => {
                let mut q = sqlx::query::<sqlx::Postgres>(sql).bind(text.to_owned());
                if let Some(i) = int {
                    q = q.bind(i);
                }
                q.execute(p).await.unwrap().rows_affected()
            }
        }
    }

    /// `SELECT COUNT(*) …` with `$1` = `text`.
    async fn count(&self, sql: &'static str, text: &str) -> i64 {
        match self {
            Raw::Sqlite(p) => sqlx::query_scalar::<sqlx::Sqlite, i64>(sql)
                .bind(text.to_owned())
                .fetch_one(p)
                .await
                .unwrap(),
            Raw::Postgres(p) => sqlx::query_scalar::<sqlx::Postgres, i64>(sql)
                .bind(text.to_owned())
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }
}

async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edrgate.db");
    let store = Store::open(&path).await.unwrap();
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    TestStore { store, raw: Raw::Sqlite(raw), _dir: Some(dir) }
}

async fn postgres_store(test: &str) -> Option<TestStore> {
    let url = common::fresh_postgres_database(test).await?;
    let store = Store::connect(&url, 4).await.unwrap();
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    Some(TestStore { store, raw: Raw::Postgres(raw), _dir: None })
}

macro_rules! retention_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::sqlite_store().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(store) = super::postgres_store(stringify!($test)).await else {
                        return;
                    };
                    super::$test(store).await;
                }
            )*
        }
    };
}

retention_suite!(
    old_finished_actions_go_with_their_runs_events_and_deliveries,
    the_default_applies_where_a_tenant_sets_nothing,
    the_sweep_deletes_in_bounded_batches,
    an_action_stored_before_summaries_were_kept_is_counted_then_kept,
);

fn new_action(tenant: &str, targets: usize) -> NewAction {
    let request = ActionRequest {
        targets: (0..targets)
            .map(|i| Target::Device { backend: "cb".into(), device_id: format!("dev-{i}") })
            .collect(),
        commands: vec![Command::ProcessList],
        comment: Some("retention".into()),
        on_error: Default::default(),
        timeout_seconds: None,
        callback_url: None,
    };
    let runs = request
        .targets
        .iter()
        .map(|t| NewRun {
            id: Uuid::now_v7(),
            target: t.clone(),
            backend: Some("cb".into()),
            device_id: None,
            commands: vec![CommandState {
                index: 0,
                kind: request.commands[0].kind(),
                status: Status::Queued,
                result: None,
                error: None,
                vendor_ref: None,
                vendor_status: None,
            }],
        })
        .collect();
    let now = now_ms();
    NewAction {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        request,
        created_at: now,
        deadline: now + 3_600_000,
        idempotency_key: None,
        request_hash: "hash".into(),
        request_id: None,
        subject: Some("alice".into()),
        runs,
    }
}

/// A new action of `tenant`, with an event (`action.created`) and a delivery of it.
async fn insert(t: &TestStore, tenant: &str, targets: usize) -> Uuid {
    let action = new_action(tenant, targets);
    assert!(matches!(t.store.insert_action(&action).await.unwrap(), Inserted::Created));
    let id = action.id.to_string();
    let n = t
        .raw
        .exec(
            "INSERT INTO deliveries (id, tenant, webhook_id, event_seq, status, next_attempt_at,
                created_at, updated_at)
             SELECT 'd-' || e.id, e.tenant, 'callback', e.seq, 'delivered', 0, 0, 0
             FROM events e WHERE e.action_id = $1",
            &id,
            None,
        )
        .await;
    assert_eq!(n, 1, "one event per new action");
    action.id
}

/// Makes the action (and its runs) `status`, last changed `age_days` ago.
async fn age(t: &TestStore, id: Uuid, status: &str, age_days: i64) {
    let at = now_ms() - age_days * DAY_MS;
    let id = id.to_string();
    t.raw.exec("UPDATE actions SET updated_at = $2 WHERE id = $1", &id, Some(at)).await;
    // The status as text bound second is awkward with one helper: two statements per status.
    let (a, r): (&'static str, &'static str) = match status {
        "succeeded" => (
            "UPDATE actions SET status = 'succeeded' WHERE id = $1",
            "UPDATE runs SET status = 'succeeded' WHERE action_id = $1",
        ),
        "failed" => (
            "UPDATE actions SET status = 'failed' WHERE id = $1",
            "UPDATE runs SET status = 'failed' WHERE action_id = $1",
        ),
        "queued" => return,
        other => panic!("no such test status {other}"),
    };
    t.raw.exec(a, &id, None).await;
    t.raw.exec(r, &id, None).await;
}

/// Rows of the action in each table: (actions, runs, events, deliveries).
async fn rows(t: &TestStore, id: Uuid) -> [i64; 4] {
    let id = id.to_string();
    [
        t.raw.count("SELECT COUNT(*) FROM actions WHERE id = $1", &id).await,
        t.raw.count("SELECT COUNT(*) FROM runs WHERE action_id = $1", &id).await,
        t.raw.count("SELECT COUNT(*) FROM events WHERE action_id = $1", &id).await,
        t.raw
            .count(
                "SELECT COUNT(*) FROM deliveries WHERE event_seq IN
                   (SELECT seq FROM events WHERE action_id = $1)",
                &id,
            )
            .await,
    ]
}

fn retention(default_days: Option<u32>, tenants: &[(&str, u32)]) -> ActionRetention {
    ActionRetention {
        default_days,
        tenants: tenants.iter().map(|(t, d)| ((*t).to_owned(), *d)).collect::<BTreeMap<_, _>>(),
    }
}

async fn old_finished_actions_go_with_their_runs_events_and_deliveries(t: TestStore) {
    let old_done = insert(&t, "acme", 2).await;
    let old_failed = insert(&t, "acme", 1).await;
    let old_unfinished = insert(&t, "acme", 1).await;
    let recent_done = insert(&t, "acme", 1).await;
    let others_old_done = insert(&t, "globex", 1).await;
    age(&t, old_done, "succeeded", 40).await;
    age(&t, old_failed, "failed", 31).await;
    age(&t, old_unfinished, "queued", 400).await;
    age(&t, recent_done, "succeeded", 29).await;
    age(&t, others_old_done, "succeeded", 400).await;
    assert_eq!(rows(&t, old_done).await, [1, 2, 1, 1]);

    let policy = retention(None, &[("acme", 30)]);
    let removed = t.store.sweep_actions(&policy, now_ms()).await.unwrap();
    assert_eq!(removed, vec![("acme".to_owned(), 2)]);

    for id in [old_done, old_failed] {
        assert_eq!(rows(&t, id).await, [0, 0, 0, 0], "{id} removed with everything it had");
        assert!(t.store.action("acme", id).await.unwrap().is_none());
    }
    for (tenant, id) in
        [("acme", old_unfinished), ("acme", recent_done), ("globex", others_old_done)]
    {
        assert_eq!(rows(&t, id).await, [1, 1, 1, 1], "{id} kept");
        assert!(t.store.action(tenant, id).await.unwrap().is_some());
    }
    // Nothing left to do: a second sweep removes nothing.
    assert!(t.store.sweep_actions(&policy, now_ms()).await.unwrap().is_empty());
}

async fn the_default_applies_where_a_tenant_sets_nothing(t: TestStore) {
    let acme = insert(&t, "acme", 1).await;
    let globex = insert(&t, "globex", 1).await;
    // A tenant no longer configured: only the default reaches it.
    let gone = insert(&t, "gone", 1).await;
    for id in [acme, globex, gone] {
        age(&t, id, "succeeded", 60).await;
    }
    // acme's own setting (90 days) wins over the default (30 days).
    let policy = retention(Some(30), &[("acme", 90)]);
    let mut removed = t.store.sweep_actions(&policy, now_ms()).await.unwrap();
    removed.sort();
    assert_eq!(removed, vec![("globex".to_owned(), 1), ("gone".to_owned(), 1)]);
    assert_eq!(rows(&t, acme).await, [1, 1, 1, 1]);
    assert_eq!(rows(&t, globex).await, [0, 0, 0, 0]);
    assert_eq!(rows(&t, gone).await, [0, 0, 0, 0]);
    // Without any retention nothing is ever deleted.
    assert!(ActionRetention::default().keeps_everything());
    assert!(t.store.sweep_actions(&ActionRetention::default(), now_ms()).await.unwrap().is_empty());
}

async fn the_sweep_deletes_in_bounded_batches(t: TestStore) {
    let mut ids = Vec::new();
    for _ in 0..130 {
        ids.push(insert(&t, "bulk", 1).await);
    }
    let keep = insert(&t, "bulk", 1).await;
    t.raw
        .exec(
            "UPDATE actions SET status = 'succeeded', updated_at = $2 WHERE tenant = $1",
            "bulk",
            Some(now_ms() - 10 * DAY_MS),
        )
        .await;
    t.raw.exec("UPDATE runs SET status = 'succeeded' WHERE tenant = $1", "bulk", None).await;
    // One of them still has a run at work (the action's status says otherwise): it stays.
    t.raw
        .exec("UPDATE runs SET status = 'running' WHERE action_id = $1", &keep.to_string(), None)
        .await;
    let before = now_ms() - DAY_MS;
    // One batch deletes exactly its size, oldest first; the rest goes in more batches.
    assert_eq!(t.store.purge_actions_batch("bulk", before, 50).await.unwrap(), 50);
    assert_eq!(t.store.purge_actions("bulk", before, 50).await.unwrap(), 80);
    assert_eq!(t.store.purge_actions("bulk", before, 50).await.unwrap(), 0);
    for id in ids {
        assert_eq!(rows(&t, id).await, [0, 0, 0, 0]);
    }
    assert_eq!(rows(&t, keep).await, [1, 1, 1, 1]);
}

/// End to end: the gateway's sweeper (which runs when it starts) deletes an old finished
/// action of a tenant with `retention_days`, which then answers 404; another tenant's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sweeps_at_start_and_a_removed_action_is_not_found() {
    let (_sim, addr) = spawn(Simulator::new(SimConfig {
        sensors: 2,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }))
    .await;
    let mut gw = Gateway::builder()
        .backend("acme", "cb", &Backend::carbonblack(addr))
        .backend("globex", "cb", &Backend::carbonblack(addr))
        .config("tenants.acme.retention_days = 7")
        .start()
        .await;
    let body =
        json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]});
    let (acme, globex) = (token_as("acme", "alice"), token_as("globex", "alice"));
    let a = gw.run(&acme, &body).await;
    let g = gw.run(&globex, &body).await;
    assert_eq!(a["status"], "succeeded", "{a:#}");
    assert_eq!(g["status"], "succeeded", "{g:#}");
    let a_path = format!("/v1/actions/{}", a["id"].as_str().unwrap());
    let g_path = format!("/v1/actions/{}", g["id"].as_str().unwrap());
    assert_eq!(gw.get(&acme, &a_path).await.0, StatusCode::OK);

    // Both finished eight days ago.
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", gw.dir().join("edrgate.db").display()))
            .await
            .unwrap();
    sqlx::query::<sqlx::Sqlite>("UPDATE actions SET updated_at = $1")
        .bind(now_ms() - 8 * DAY_MS)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    gw.crash_and_restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = gw.get(&acme, &a_path).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "the sweep did not remove {a_path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, listed) = gw.get(&acme, "/v1/actions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "{listed:#}");
    // globex sets no retention (and there is no default): kept.
    let (status, kept) = gw.get(&globex, &g_path).await;
    assert_eq!(status, StatusCode::OK, "{kept:#}");
}

/// Not retention, but an upgrade of the same stored rows: an action stored before migration
/// 0021 has no kept summary; it is counted from its runs, and kept from its next step on.
async fn an_action_stored_before_summaries_were_kept_is_counted_then_kept(t: TestStore) {
    let id = insert(&t, "acme", 3).await;
    let key = id.to_string();
    t.raw
        .exec(
            "UPDATE runs SET status = 'succeeded', command_statuses = '[\"succeeded\"]'
             WHERE action_id = $1 AND position = 0",
            &key,
            None,
        )
        .await;
    t.raw.exec("UPDATE actions SET summary_json = NULL WHERE id = $1", &key, None).await;
    // And, from before migration 0023, a result inline in the run's commands.
    t.raw
        .exec(
            "UPDATE runs SET commands_json = '[{\"index\":0,\"type\":\"process_list\",
                \"status\":\"running\",\"result\":{\"type\":\"processes\",\"processes\":[]}}]'
             WHERE action_id = $1 AND position >= 1",
            &key,
            None,
        )
        .await;
    let (action, _) = t.store.action("acme", id).await.unwrap().unwrap();
    assert!(action.runs[1].commands[0].result.is_some(), "{:?}", action.runs[1]);
    let counts = action.summary.runs_by_status;
    assert_eq!((action.summary.runs, counts.queued, counts.succeeded), (3, 2, 1));
    let lease = t.store.claim("r1", Duration::from_secs(30), 1).await.unwrap().remove(0);
    let leased = action.runs.iter().find(|r| r.id == lease.run_id).unwrap();
    let mut states = leased.commands.clone();
    states[0].status = Status::Running;
    let now = now_ms();
    let write = RunWrite {
        backend: Some("cb"),
        device_id: Some("dev"),
        hostname: None,
        status: Status::Running,
        error: None,
        states: &states,
        checkpoint: None,
        next_step_at: now,
        lease_until: now + 30_000,
        new_results: None,
        visible: true,
    };
    t.store.save_run(&lease, &write).await.unwrap().unwrap();
    let kept = "SELECT COUNT(*) FROM actions WHERE id = $1 AND summary_json IS NOT NULL";
    assert_eq!(t.raw.count(kept, &key).await, 1);
    // The inline result moved to its own row with that write.
    let moved = "SELECT COUNT(*) FROM command_results r JOIN runs ON runs.id = r.run_id
                 WHERE runs.action_id = $1";
    assert_eq!(t.raw.count(moved, &key).await, 1);
    let (action, _) = t.store.action("acme", id).await.unwrap().unwrap();
    let counts = action.summary.runs_by_status;
    assert_eq!((counts.queued, counts.running, counts.succeeded), (1, 1, 1));
    assert_eq!(action.summary.commands[0].by_status.running, 1);
    assert_eq!(action.status, Status::Running);
}
