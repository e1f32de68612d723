//! A million stored actions (issue 14, point 6): `Store::action` and `Store::list` latency at
//! 1,000,000 actions (10 tenants, one run each, a finished process list's JSON), against the
//! same queries at 10,000 (the alternative: how cost grows), on SQLite and, with
//! `EDRGATE_TEST_POSTGRES_URL` or `--postgres URL`, on PostgreSQL; and one retention sweep
//! removing 100,000 old actions (total time, longest batch = longest write-lock hold).
//!
//! `CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench store_scale [-- --postgres URL]
//! [--actions N] [--small N]`
//!
//! Every result is checked (a get finds its action, and not under another tenant; a page has
//! exactly the expected actions, in order; filters return only matches); any failure exits 1.

use std::path::Path;
use std::time::{Duration, Instant};

use edrgate::store::retention::BATCH;
use edrgate::store::{Cursor, Dialect, ListQuery, Store};
use edrgate_adapter::{
    ActionRequest, Command, CommandKind, CommandResult, CommandState, ProcessInfo, Status, Target,
};
use rand::Rng as _;
use sqlx::Connection as _;
use uuid::Uuid;

const TENANTS: u64 = 10;
const DEVICES: u64 = 5_000;
const BASE_MS: i64 = 1_700_000_000_000;
const CHUNK: u64 = 100_000;
const GETS: usize = 2_000;
const LISTS: usize = 500;
const MIN_LISTS: usize = 20;
const LIST_BUDGET: Duration = Duration::from_secs(45);
const LIMIT: u32 = 50;
const SWEPT: u64 = 100_000;

fn action_id(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-7000-8000-{n:012x}")).unwrap()
}
fn tenant(n: u64) -> String {
    format!("t{}", n % TENANTS)
}
fn created(n: u64) -> i64 {
    BASE_MS + i64::try_from(n).unwrap() * 1000
}
/// The fill's status of action `n` (and of its run).
fn status(n: u64) -> &'static str {
    // By n / 10, so every tenant (n % 10) has the same mix.
    if (n / 10) % 50 == 7 {
        "running"
    } else if (n / 10) % 20 == 3 {
        "failed"
    } else {
        "succeeded"
    }
}

/// A finished process list's commands (what a run's `commands_json` holds).
fn commands_json() -> String {
    let processes = (0..14u64)
        .map(|i| ProcessInfo {
            pid: 400 + i * 37,
            parent_pid: Some(4),
            name: format!("svchost{i}.exe"),
            path: Some(format!("C:\\Windows\\System32\\svchost{i}.exe")),
            command_line: Some(format!(
                "C:\\Windows\\system32\\svchost{i}.exe -k netsvcs -p -s Schedule"
            )),
            username: Some("NT AUTHORITY\\SYSTEM".into()),
            sid: Some("S-1-5-18".into()),
            started_at: Some(1_700_000_000 + i64::try_from(i).unwrap()),
            vendor_id: Some(format!("7DESJ9GN-0047a6b9-00000{i:03}-00000000-1d9f1e9f4e1c2b3")),
        })
        .collect();
    let states = vec![CommandState {
        index: 0,
        kind: CommandKind::ProcessList,
        status: Status::Succeeded,
        result: Some(CommandResult::Processes { processes }),
        error: None,
        vendor_ref: Some("session-1:command-7".into()),
        vendor_status: Some("complete".into()),
    }];
    serde_json::to_string(&states).unwrap()
}

fn request_json() -> String {
    serde_json::to_string(&ActionRequest {
        targets: vec![Target::Hostname { hostname: "WIN-00001".into() }],
        commands: vec![Command::ProcessList],
        comment: Some("scheduled triage".into()),
        on_error: Default::default(),
        timeout_seconds: None,
        callback_url: None,
    })
    .unwrap()
}

const SQLITE_FILL: [&str; 3] = [
    "WITH RECURSIVE g(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < $2)
     INSERT INTO actions (id, tenant, request_json, status, created_at, updated_at, deadline,
        request_hash, request_id, subject, version)
     SELECT printf('00000000-0000-7000-8000-%012x', n), 't' || (n % 10), $3,
        CASE WHEN (n / 10) % 50 = 7 THEN 'running' WHEN (n / 10) % 20 = 3 THEN 'failed' ELSE 'succeeded' END,
        $4 + n * 1000, $4 + n * 1000 + 60000, $4 + n * 1000 + 3600000, 'hash', 'req-' || n,
        'alice', 3 FROM g",
    "WITH RECURSIVE g(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < $2)
     INSERT INTO runs (id, action_id, tenant, position, target_json, backend, device_id, hostname,
        status, commands_json, next_step_at, updated_at, lease_version)
     SELECT printf('00000000-0000-7000-9000-%012x', n), printf('00000000-0000-7000-8000-%012x', n),
        't' || (n % 10), 0, printf('{\"backend\":\"cb\",\"device_id\":\"dev-%05d\"}', n % 5000),
        'cb', printf('dev-%05d', n % 5000), printf('WIN-%05d', n % 5000),
        CASE WHEN (n / 10) % 50 = 7 THEN 'running' WHEN (n / 10) % 20 = 3 THEN 'failed' ELSE 'succeeded' END,
        $3, $4 + n * 1000, $4 + n * 1000 + 60000, 4 FROM g",
    "WITH RECURSIVE g(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < $2),
       k(t) AS (VALUES ('action.created'), ('action.finished'))
     INSERT INTO events (id, tenant, type, action_id, created_at, body, dispatched)
     SELECT printf('ev-%d-', n) || k.t, 't' || (n % 10), k.t,
        printf('00000000-0000-7000-8000-%012x', n), $4 + n * 1000, $3, 1
     FROM g, k WHERE k.t = 'action.created' OR (n / 10) % 50 != 7",
];

const PG_FILL: [&str; 3] = [
    "INSERT INTO actions (id, tenant, request_json, status, created_at, updated_at, deadline,
        request_hash, request_id, subject, version)
     SELECT '00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'), 't' || (n % 10), $3,
        CASE WHEN (n / 10) % 50 = 7 THEN 'running' WHEN (n / 10) % 20 = 3 THEN 'failed' ELSE 'succeeded' END,
        $4 + n * 1000, $4 + n * 1000 + 60000, $4 + n * 1000 + 3600000, 'hash', 'req-' || n,
        'alice', 3 FROM generate_series($1::bigint, $2::bigint - 1) n",
    "INSERT INTO runs (id, action_id, tenant, position, target_json, backend, device_id, hostname,
        status, commands_json, next_step_at, updated_at, lease_version)
     SELECT '00000000-0000-7000-9000-' || lpad(to_hex(n), 12, '0'),
        '00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'),
        't' || (n % 10), 0, '{\"backend\":\"cb\",\"device_id\":\"dev-' || lpad((n % 5000)::text, 5, '0') || '\"}',
        'cb', 'dev-' || lpad((n % 5000)::text, 5, '0'), 'WIN-' || lpad((n % 5000)::text, 5, '0'),
        CASE WHEN (n / 10) % 50 = 7 THEN 'running' WHEN (n / 10) % 20 = 3 THEN 'failed' ELSE 'succeeded' END,
        $3, $4 + n * 1000, $4 + n * 1000 + 60000, 4 FROM generate_series($1::bigint, $2::bigint - 1) n",
    "INSERT INTO events (id, tenant, type, action_id, created_at, body, dispatched)
     SELECT 'ev-' || n || '-' || k.t, 't' || (n % 10), k.t,
        '00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'), $4 + n * 1000, $3, TRUE
     FROM generate_series($1::bigint, $2::bigint - 1) n,
          (VALUES ('action.created'), ('action.finished')) k(t)
     WHERE k.t = 'action.created' OR (n / 10) % 50 != 7",
];

/// One delivery per tenth finished event.
const DELIVERIES: &str =
    "INSERT INTO deliveries (id, tenant, webhook_id, event_seq, status, attempts,
        next_attempt_at, created_at, updated_at, delivered_at)
     SELECT 'dl-' || e.seq, e.tenant, 'callback', e.seq, 'delivered', 1, 0, e.created_at,
        e.created_at, e.created_at
     FROM events e WHERE e.type = 'action.finished' AND e.seq % 10 = 0";

/// The retention sweep's selection, as `src/store/retention.rs` writes it, for its plan.
const SQLITE_PURGE: &str = "SELECT a.id FROM actions a INDEXED BY actions_retention
     WHERE a.tenant = $1 AND a.updated_at < $2
       AND a.status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled', 'timed_out', 'skipped')
       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.action_id = a.id
                AND r.status IN ('queued', 'dispatched', 'running'))
     ORDER BY a.updated_at LIMIT 500";
const PG_PURGE: &str = "SELECT a.id FROM actions a
     WHERE a.tenant = $1 AND a.updated_at < $2
       AND a.status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled', 'timed_out', 'skipped')
       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.action_id = a.id
                AND r.status IN ('queued', 'dispatched', 'running'))
     ORDER BY a.updated_at LIMIT 500";

/// A raw connection to the bench's database, for filling it and reading plans.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    async fn fill(&self, size: u64) {
        let (commands, request) = (commands_json(), request_json());
        let event = r#"{"id":"ev","type":"action.finished","timestamp":"2023-11-14T22:13:20Z","data":{"action_id":"00000000-0000-7000-8000-000000000000","status":"succeeded","runs":1,"summary":{"succeeded":1}}}"#;
        let mut start = 0;
        while start < size {
            let end = (start + CHUNK).min(size);
            let (s, e) = (i64::try_from(start).unwrap(), i64::try_from(end).unwrap());
            match self {
                Raw::Sqlite(p) => {
                    let mut tx = p.begin().await.unwrap();
                    for (sql, text) in
                        SQLITE_FILL.iter().zip([&request, &commands, &event.to_owned()])
                    {
                        sqlx::query::<sqlx::Sqlite>(*sql)
                            .bind(s)
                            .bind(e)
                            .bind(text.as_str())
                            .bind(BASE_MS)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
                Raw::Postgres(p) => {
                    let mut tx = p.begin().await.unwrap();
                    for (sql, text) in PG_FILL.iter().zip([&request, &commands, &event.to_owned()])
                    {
                        sqlx::query::<sqlx::Postgres>(*sql)
                            .bind(s)
                            .bind(e)
                            .bind(text.as_str())
                            .bind(BASE_MS)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            }
            start = end;
        }
        match self {
            Raw::Sqlite(p) => {
                sqlx::query::<sqlx::Sqlite>(DELIVERIES).execute(p).await.unwrap();
            }
            Raw::Postgres(p) => {
                sqlx::query::<sqlx::Postgres>(DELIVERIES).execute(p).await.unwrap();
                // What autovacuum does in production after a fill this size.
                sqlx::raw_sql("VACUUM ANALYZE").execute(p).await.unwrap();
            }
        }
    }

    async fn size_bytes(&self, path: Option<&Path>) -> u64 {
        match self {
            Raw::Sqlite(_) => {
                let path = path.unwrap();
                let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                len(path) + len(&path.with_extension("db-wal"))
            }
            Raw::Postgres(p) => {
                let (n,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
                    .fetch_one(p)
                    .await
                    .unwrap();
                u64::try_from(n).unwrap()
            }
        }
    }

    /// The plan of one of the store's statements (`sqlite`, `postgres`) with `binds`.
    async fn plan(&self, label: &str, sqlite: &str, postgres: &str, binds: &[Bind]) {
        println!("  plan of {label}:");
        match self {
            Raw::Sqlite(p) => {
                let text = format!("EXPLAIN QUERY PLAN {sqlite}");
                let mut query = sqlx::query_as::<sqlx::Sqlite, (i64, i64, i64, String)>(
                    sqlx::AssertSqlSafe(text),
                );
                for b in binds {
                    query = match b {
                        Bind::Text(v) => query.bind(v.clone()),
                        Bind::Int(v) => query.bind(*v),
                    };
                }
                for (_, _, _, detail) in query.fetch_all(p).await.unwrap() {
                    println!("    {detail}");
                }
            }
            Raw::Postgres(p) => {
                let text = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {postgres}");
                let mut query =
                    sqlx::query_as::<sqlx::Postgres, (String,)>(sqlx::AssertSqlSafe(text));
                for b in binds {
                    query = match b {
                        Bind::Text(v) => query.bind(v.clone()),
                        Bind::Int(v) => query.bind(*v),
                    };
                }
                for (line,) in query.fetch_all(p).await.unwrap() {
                    println!("    {line}");
                }
            }
        }
    }
}

enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
}

/// The binds of the list query (`src/store/mod.rs`, `Store::list`).
fn list_binds(
    tenant: &str,
    status: Option<&str>,
    device: Option<&str>,
    cursor: Option<u64>,
) -> Vec<Bind> {
    vec![
        Bind::Text(Some(tenant.to_owned())),
        Bind::Text(status.map(str::to_owned)),
        Bind::Int(None),
        Bind::Text(device.map(str::to_owned)),
        Bind::Int(cursor.map(created)),
        Bind::Text(cursor.map(|n| action_id(n).to_string())),
        Bind::Int(Some(i64::from(LIMIT) + 1)),
    ]
}

const GET_ACTION: &str = "SELECT * FROM actions WHERE id = $1 AND tenant = $2";
const GET_RUNS: &str =
    "SELECT * FROM runs WHERE action_id = $1 AND position <= 100 ORDER BY action_id, position";

/// Prints the plan of every measured statement, at `size` actions.
async fn plans(raw: &Raw, size: u64) {
    let n = size / 2 + 3;
    let (t, id) = (tenant(n), action_id(n).to_string());
    raw.plan(
        "get: the action",
        GET_ACTION,
        GET_ACTION,
        &[Bind::Text(Some(id.clone())), Bind::Text(Some(t.clone()))],
    )
    .await;
    raw.plan("get / list: its runs", GET_RUNS, GET_RUNS, &[Bind::Text(Some(id))]).await;
    for (label, status, device, cursor) in [
        ("list first page", None, None, None),
        ("list deep page", None, None, Some(n)),
        ("list status=failed first page", Some("failed"), None, None),
        ("list status=failed deep page", Some("failed"), None, Some(n)),
        ("list device first page", None, Some("dev-00013"), None),
        ("list device deep page", None, Some("dev-00013"), Some(n)),
    ] {
        // The store's own statements, so the plans are of what runs.
        use edrgate::store::{Dialect, listing_statement};
        let (with_status, with_device, with_cursor) =
            (status.is_some(), device.is_some(), cursor.is_some());
        raw.plan(
            label,
            listing_statement(Dialect::Sqlite, with_status, with_device, with_cursor),
            listing_statement(Dialect::Postgres, with_status, with_device, with_cursor),
            &list_binds(&t, status, device, cursor),
        )
        .await;
    }
    raw.plan(
        "retention: a batch's selection",
        SQLITE_PURGE,
        PG_PURGE,
        &[Bind::Text(Some(t)), Bind::Int(Some(created(SWEPT) + 60_000))],
    )
    .await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    Status,
    Device,
}

fn matches(filter: Filter, n: u64, device: u64) -> bool {
    match filter {
        Filter::None => true,
        Filter::Status => status(n) == "failed",
        Filter::Device => n % DEVICES == device,
    }
}

struct Stats {
    label: String,
    samples: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1;
        s[i].as_secs_f64() * 1000.0
    }
}

struct Outcome {
    stats: Vec<Stats>,
    failures: Vec<String>,
}

/// N random gets and N lists of each kind, every answer checked.
async fn measure(store: &Store, size: u64) -> Outcome {
    let mut rng = rand::rng();
    let mut failures = Vec::new();
    let mut gets = Vec::with_capacity(GETS);
    for i in 0..GETS {
        let n = rng.random_range(0..size);
        let started = Instant::now();
        let found = store.action(&tenant(n), action_id(n)).await.unwrap();
        gets.push(started.elapsed());
        match found {
            Some((a, _))
                if a.id == action_id(n) && a.runs.len() == 1 && a.status.as_str() == status(n) => {}
            other => failures.push(format!("get {n}: {:?}", other.map(|(a, _)| a.id))),
        }
        // Never under another tenant.
        if i % 10 == 0 && store.action(&tenant(n + 1), action_id(n)).await.unwrap().is_some() {
            failures.push(format!("get {n} answered for another tenant"));
        }
    }
    let mut stats = vec![Stats { label: "get".into(), samples: gets }];
    for (filter, deep) in [
        (Filter::None, false),
        (Filter::None, true),
        (Filter::Status, false),
        (Filter::Status, true),
        (Filter::Device, false),
        (Filter::Device, true),
    ] {
        let mut samples = Vec::with_capacity(LISTS);
        let budget = Instant::now();
        for _ in 0..LISTS {
            // A slow variant stops after LIST_BUDGET (with at least MIN_LISTS samples); its
            // sample count is printed.
            if samples.len() >= MIN_LISTS && budget.elapsed() > LIST_BUDGET {
                break;
            }
            let t = rng.random_range(0..TENANTS);
            // A device of tenant t (n % 10 == device % 10).
            let device = rng.random_range(0..DEVICES / TENANTS) * TENANTS + t;
            // The page starts below action `below` (exclusive).
            let below = if deep {
                let k = rng.random_range(size / TENANTS / 4..size / TENANTS * 3 / 4);
                k * TENANTS + t
            } else {
                size
            };
            let q = ListQuery {
                status: (filter == Filter::Status).then_some(Status::Failed),
                device: (filter == Filter::Device).then(|| format!("dev-{device:05}")),
                since: None,
                cursor: deep.then(|| Cursor { created_at: created(below), id: action_id(below) }),
                limit: LIMIT,
            };
            let started = Instant::now();
            let (page, next) = store.list(&format!("t{t}"), &q).await.unwrap();
            samples.push(started.elapsed());
            // The expected page: the newest matches of the tenant below `below` (exclusive),
            // newest first, walking down the tenant's actions (n ≡ t mod 10) or the device's
            // (n ≡ device mod 5000).
            let mut expected = Vec::new();
            let (step, residue) =
                if filter == Filter::Device { (DEVICES, device) } else { (TENANTS, t) };
            let mut n = if below > residue {
                (below - 1 - residue) / step * step + residue
            } else {
                u64::MAX
            };
            while n < size && expected.len() < LIMIT as usize + 1 {
                if n % TENANTS == t && matches(filter, n, device) {
                    expected.push(action_id(n));
                }
                if n < step {
                    break;
                }
                n -= step;
            }
            let got: Vec<Uuid> = page.iter().map(|a| a.id).collect();
            let more = expected.len() > LIMIT as usize;
            expected.truncate(LIMIT as usize);
            if got != expected || next.is_some() != more {
                failures.push(format!(
                    "list {filter:?} deep={deep} t{t}: {} items, expected {} (next {:?})",
                    got.len(),
                    expected.len(),
                    next
                ));
            }
            let ordered =
                page.windows(2).all(|w| (w[0].created_at, w[0].id) > (w[1].created_at, w[1].id));
            let filtered = page.iter().all(|a| match filter {
                Filter::None => true,
                Filter::Status => a.status == Status::Failed,
                Filter::Device => a
                    .runs
                    .iter()
                    .any(|r| r.device_id.as_deref() == Some(&format!("dev-{device:05}"))),
            });
            if !ordered || !filtered {
                failures.push(format!(
                    "list {filter:?} deep={deep}: ordered {ordered}, filtered {filtered}"
                ));
            }
            if size >= 100_000 && got.len() != LIMIT as usize {
                failures
                    .push(format!("list {filter:?} deep={deep}: {} items, not {LIMIT}", got.len()));
            }
        }
        let label = format!(
            "list {}{}",
            match filter {
                Filter::None => "",
                Filter::Status => "status=failed ",
                Filter::Device => "device ",
            },
            if deep { "deep page" } else { "first page" }
        );
        stats.push(Stats { label, samples });
    }
    Outcome { stats, failures }
}

/// Ages 100,000 actions (n < SWEPT) and sweeps them in batches of [`BATCH`]: total time,
/// batches, the longest batch; checks exactly the finished ones went.
async fn sweep(store: &Store, raw: &Raw, size: u64, failures: &mut Vec<String>) {
    // Actions changed a minute after their creation: exactly those with n < SWEPT are older.
    let before = created(SWEPT.min(size)) + 60_000;
    let expected: u64 = (0..SWEPT.min(size)).filter(|&n| status(n) != "running").count() as u64;
    let mut longest = Duration::ZERO;
    let mut batches = 0;
    let mut removed = 0;
    let started = Instant::now();
    for t in 0..TENANTS {
        loop {
            let b = Instant::now();
            let n = store.purge_actions_batch(&format!("t{t}"), before, BATCH).await.unwrap();
            longest = longest.max(b.elapsed());
            batches += 1;
            removed += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
    }
    let total = started.elapsed();
    println!(
        "  sweep: {removed} actions removed (expected {expected}) in {batches} batches of ≤{BATCH}, total {:.2} s, longest batch {:.1} ms",
        total.as_secs_f64(),
        longest.as_secs_f64() * 1000.0
    );
    if removed != expected {
        failures.push(format!("sweep removed {removed}, expected {expected}"));
    }
    // The unfinished ones stay; nothing old and finished is left; the rest is untouched.
    for n in [70, 575, 99_578] {
        if n < size && store.action(&tenant(n), action_id(n)).await.unwrap().is_none() {
            failures.push(format!("sweep removed unfinished action {n}"));
        }
    }
    let left = match raw {
        Raw::Sqlite(p) => sqlx::query_scalar::<sqlx::Sqlite, i64>("SELECT COUNT(*) FROM actions")
            .fetch_one(p)
            .await
            .unwrap(),
        Raw::Postgres(p) => {
            sqlx::query_scalar::<sqlx::Postgres, i64>("SELECT COUNT(*) FROM actions")
                .fetch_one(p)
                .await
                .unwrap()
        }
    };
    if u64::try_from(left).unwrap() != size - expected {
        failures.push(format!("{left} actions left after the sweep, expected {}", size - expected));
    }
}

async fn run(
    dialect: Dialect,
    pg_base: Option<&str>,
    sizes: [u64; 2],
) -> (Vec<(u64, Outcome)>, Vec<String>) {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for size in sizes {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let path = dir.path().join("edrgate.db");
        let (store, raw, pg_name) = match dialect {
            Dialect::Sqlite => {
                let store = Store::open(&path).await.unwrap();
                let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                (store, Raw::Sqlite(raw), None)
            }
            Dialect::Postgres => {
                let base = pg_base.unwrap();
                let name = format!("edrgate_scale_{}", Uuid::now_v7().simple());
                let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
                sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {name}"
                )))
                .execute(&mut admin)
                .await
                .unwrap();
                let (prefix, _) = base.rsplit_once('/').unwrap();
                let url = format!("{prefix}/{name}");
                let store = Store::connect(&url, 8).await.unwrap();
                (
                    store,
                    Raw::Postgres(sqlx::PgPool::connect(&url).await.unwrap()),
                    Some((admin, name)),
                )
            }
        };
        let started = Instant::now();
        raw.fill(size).await;
        let bytes = raw.size_bytes(Some(&path)).await;
        println!(
            "{dialect:?}, {size} actions: filled in {:.1} s, database {:.1} MiB",
            started.elapsed().as_secs_f64(),
            bytes as f64 / 1048576.0
        );
        let outcome = measure(&store, size).await;
        for s in &outcome.stats {
            println!(
                "  {:<32} n={:<5} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                s.label,
                s.samples.len(),
                s.pct(0.5),
                s.pct(0.9),
                s.pct(0.99),
                s.pct(1.0)
            );
        }
        if size == sizes[1] {
            plans(&raw, size).await;
        }
        failures.extend(outcome.failures.iter().map(|f| format!("{dialect:?} {size}: {f}")));
        if size >= SWEPT {
            sweep(&store, &raw, size, &mut failures).await;
        }
        results.push((size, outcome));
        drop(store);
        match raw {
            Raw::Sqlite(p) => p.close().await,
            Raw::Postgres(p) => p.close().await,
        }
        if let Some((mut admin, name)) = pg_name {
            // The store's pool may still be closing: FORCE.
            sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }
    (results, failures)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (+ uncommitted changes)"
    };
    format!("{nproc} CPUs, {cpu}; commit {}{dirty}", git(&["rev-parse", "--short", "HEAD"]))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let big: u64 = flag("--actions").map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let small: u64 = flag("--small").map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let pg = flag("--postgres").or_else(|| std::env::var("EDRGATE_TEST_POSTGRES_URL").ok());
    println!("store_scale: {}", machine());
    // The fill's target JSON is what the store writes for a device target.
    let target = serde_json::to_string(&Target::Device {
        backend: "cb".into(),
        device_id: "dev-00001".into(),
    })
    .unwrap();
    assert_eq!(target, r#"{"backend":"cb","device_id":"dev-00001"}"#);
    println!("run commands_json: {} bytes", commands_json().len());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    runtime.block_on(async {
        let mut dialects = vec![(Dialect::Sqlite, None)];
        match &pg {
            Some(url) => dialects.push((Dialect::Postgres, Some(url.as_str()))),
            None => {
                println!("PostgreSQL skipped: neither --postgres URL nor EDRGATE_TEST_POSTGRES_URL")
            }
        }
        for (dialect, url) in dialects {
            let (results, f) = run(dialect, url, [small, big]).await;
            failures.extend(f);
            println!("{dialect:?}: p99 at {small} vs {big} actions (goal ≤ 20 ms at {big})");
            let (a, b) = (&results[0].1, &results[1].1);
            for (sa, sb) in a.stats.iter().zip(&b.stats) {
                let verdict = if sb.pct(0.99) <= 20.0 { "met" } else { "MISSED" };
                println!(
                    "  | {:<32} | {:>8.2} ms | {:>8.2} ms | ×{:<5.1} | {verdict} |",
                    sa.label,
                    sa.pct(0.99),
                    sb.pct(0.99),
                    sb.pct(0.99) / sa.pct(0.99)
                );
            }
        }
    });
    if failures.is_empty() {
        println!("all results checked: OK");
    } else {
        for f in failures.iter().take(30) {
            eprintln!("FAILED: {f}");
        }
        eprintln!("{} failures", failures.len());
        std::process::exit(1);
    }
}
