//! One store test suite, run against SQLite and PostgreSQL.
//!
//! Every test is an `async fn(TestStore)` listed once in `store_suite!`, which makes a SQLite
//! and a PostgreSQL test of it. The PostgreSQL tests need `EDRGATE_TEST_POSTGRES_URL` (a
//! database the tests may create databases next to; `.ci/postgres` starts one); without it they
//! print that they were skipped and pass.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use edrgate::audit::{Actor, AuditEvent, AuditQuery, AuditRecord};
use edrgate::store::postgres::Change;
use edrgate::store::{
    Cursor, Dialect, FileMeta, FileOrigin, Inserted, Lease, ListQuery, NewAction, NewRun, RunWrite,
    Store,
};
use edrgate_adapter::shared::acquire_slot;
use edrgate_adapter::{
    ActionRequest, ActionSummary, Command, CommandKind, CommandResult, CommandState, ProcessInfo,
    SharedBudget, Status, Target,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod common;

/// A store on a fresh database, with what keeps that database alive.
struct TestStore {
    store: Store,
    /// The SQLite directory, or the PostgreSQL URL of the fresh database.
    _dir: Option<tempfile::TempDir>,
    url: Option<String>,
}

async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("edrgate.db")).await.unwrap();
    TestStore { store, _dir: Some(dir), url: None }
}

/// A PostgreSQL store on a fresh database.
async fn postgres_store(test: &str) -> Option<TestStore> {
    let url = common::fresh_postgres_database(test).await?;
    let store = Store::connect(&url, 8).await.unwrap();
    Some(TestStore { store, _dir: None, url: Some(url) })
}

macro_rules! store_suite {
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

store_suite!(
    migrations_are_applied,
    actions_are_written_and_read_back,
    idempotency_keys_return_the_first_action,
    listing_filters_and_pages,
    claims_lease_and_fence,
    expired_leases_are_taken_over_and_the_old_owner_is_fenced,
    concurrent_claimers_never_share_a_run,
    visible_writes_move_the_version_and_the_aggregate,
    the_summary_follows_every_status_change,
    a_result_is_written_once_in_its_own_row,
    cancel_marks_the_action_and_wakes_its_runs,
    files_live_expire_and_purge,
    audit_appends_and_filters,
    shared_budget_caps_slots_and_calls,
    changes_are_announced_where_replicas_need_them,
    a_lease_without_a_live_driver_expires_and_is_claimed_again,
    claims_take_turns_across_tenants_and_backends,
    every_fenced_write_says_whether_a_cancel_was_requested,
);

fn request(targets: usize) -> ActionRequest {
    ActionRequest {
        targets: (0..targets)
            .map(|i| Target::Device { backend: "cb".into(), device_id: format!("dev-{i}") })
            .collect(),
        commands: vec![Command::ProcessList, Command::KillProcess { pid: 4, vendor_id: None }],
        comment: Some("suite".into()),
        on_error: Default::default(),
        timeout_seconds: None,
        callback_url: None,
    }
}

fn new_action(tenant: &str, targets: usize, created_at: i64, key: Option<&str>) -> NewAction {
    let request = request(targets);
    let runs = request
        .targets
        .iter()
        .map(|t| {
            let Target::Device { backend, device_id } = t else { unreachable!() };
            NewRun {
                id: Uuid::now_v7(),
                target: t.clone(),
                backend: Some(backend.clone()),
                device_id: Some(device_id.clone()),
                commands: request
                    .commands
                    .iter()
                    .enumerate()
                    .map(|(index, c)| CommandState {
                        index,
                        kind: c.kind(),
                        status: Status::Queued,
                        result: None,
                        error: None,
                        vendor_ref: None,
                        vendor_status: None,
                    })
                    .collect(),
            }
        })
        .collect();
    NewAction {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        request,
        created_at,
        deadline: created_at + 3_600_000,
        idempotency_key: key.map(str::to_owned),
        request_hash: format!("hash-{targets}"),
        request_id: Some("req-1".into()),
        subject: Some("alice".into()),
        runs,
    }
}

async fn insert(store: &Store, action: &NewAction) {
    assert!(matches!(store.insert_action(action).await.unwrap(), Inserted::Created));
}

fn states(status: Status) -> Vec<CommandState> {
    [CommandKind::ProcessList, CommandKind::KillProcess]
        .into_iter()
        .enumerate()
        .map(|(index, kind)| CommandState {
            index,
            kind,
            status,
            result: None,
            error: None,
            vendor_ref: None,
            vendor_status: None,
        })
        .collect()
}

fn write(states: &[CommandState], status: Status, visible: bool) -> RunWrite<'_> {
    let now = edrgate::store::now_ms();
    RunWrite {
        backend: Some("cb"),
        device_id: Some("dev-0"),
        hostname: Some("HOST-0"),
        status,
        error: None,
        states,
        checkpoint: Some(&serde_json::Value::Null),
        next_step_at: now,
        lease_until: now + 30_000,
        new_results: None,
        visible,
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn migrations_are_applied(t: TestStore) {
    let applied = t.store.migrate().await.unwrap();
    match t.store.dialect() {
        Dialect::Sqlite => assert_eq!(applied, shipped("sqlite")),
        Dialect::Postgres => assert_eq!(applied, shipped("postgres")),
    }
    t.store.ping().await.unwrap();
    // Opening again (another replica starting) applies nothing twice.
    if let Some(url) = &t.url {
        Store::connect(url, 2).await.unwrap();
    }
}

async fn actions_are_written_and_read_back(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 2, 1_000, None);
    insert(s, &a).await;
    let (action, version) = s.action("acme", a.id).await.unwrap().unwrap();
    assert_eq!(version, 0);
    assert_eq!(action.id, a.id);
    assert_eq!(action.status, Status::Queued);
    assert_eq!(action.comment.as_deref(), Some("suite"));
    assert_eq!(action.request_id.as_deref(), Some("req-1"));
    assert!(!action.cancel_requested);
    assert_eq!(action.runs.len(), 2);
    assert_eq!(action.runs[1].device_id.as_deref(), Some("dev-1"));
    assert_eq!(action.runs[0].commands.len(), 2);
    assert_eq!(s.action_version("acme", a.id).await.unwrap(), Some((0, Status::Queued)));
    // Another tenant sees nothing.
    assert!(s.action("other", a.id).await.unwrap().is_none());
    assert!(s.action_version("other", a.id).await.unwrap().is_none());
    assert_eq!(s.unfinished_actions("acme").await.unwrap(), 1);
    assert_eq!(s.unfinished_actions("other").await.unwrap(), 0);
    let run = s.load_run(a.runs[0].id).await.unwrap();
    assert_eq!((run.action_id, run.tenant.as_str()), (a.id, "acme"));
    assert_eq!(run.request.commands.len(), 2);
    assert!(run.checkpoint.is_none() && !run.cancel_requested);
    assert_eq!(run.deadline, 3_601_000);
}

async fn idempotency_keys_return_the_first_action(t: TestStore) {
    let s = &t.store;
    let first = new_action("acme", 1, 1_000, Some("k1"));
    insert(s, &first).await;
    let again = new_action("acme", 3, 2_000, Some("k1"));
    match s.insert_action(&again).await.unwrap() {
        Inserted::Existing { id, request_hash } => {
            assert_eq!((id, request_hash.as_str()), (first.id, "hash-1"));
        }
        Inserted::Created => panic!("a second action under the same key"),
    }
    assert!(s.action("acme", again.id).await.unwrap().is_none());
    // Keys are per tenant.
    insert(s, &new_action("other", 1, 1_000, Some("k1"))).await;
    // Concurrent submissions under one key (two replicas): exactly one is created.
    let store = Arc::new(s.clone());
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.insert_action(&new_action("acme", 1, 5_000 + i, Some("race"))).await
            })
        })
        .collect();
    let mut created = 0;
    for r in racers {
        if matches!(r.await.unwrap().unwrap(), Inserted::Created) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
}

async fn listing_filters_and_pages(t: TestStore) {
    let s = &t.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = new_action("acme", 1 + (i % 2), 1_000 + i64::try_from(i).unwrap(), None);
        insert(s, &a).await;
        ids.push(a.id);
    }
    insert(s, &new_action("other", 1, 9_000, None)).await;
    let all = s.list("acme", &ListQuery { limit: 50, ..Default::default() }).await.unwrap();
    assert_eq!(
        all.0.iter().map(|a| a.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(all.1.is_none());
    // Pages of two, newest first, through the cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let (page, next) =
            s.list("acme", &ListQuery { limit: 2, cursor, ..Default::default() }).await.unwrap();
        seen.extend(page.iter().map(|a| a.id));
        match next {
            Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
    let since = s
        .list("acme", &ListQuery { since: Some(1_003), limit: 50, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(since.0.len(), 2);
    // Only actions with two targets reach dev-1.
    let device = s
        .list("acme", &ListQuery { device: Some("dev-1".into()), limit: 50, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(device.0.len(), 2);
    let queued = s
        .list("acme", &ListQuery { status: Some(Status::Queued), limit: 50, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(queued.0.len(), 5);
    let done = s
        .list(
            "acme",
            &ListQuery { status: Some(Status::Succeeded), limit: 50, ..Default::default() },
        )
        .await
        .unwrap();
    assert!(done.0.is_empty());
}

async fn claims_lease_and_fence(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 3, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let leases = s.claim("r1", LEASE, 2).await.unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l.owner == "r1" && l.version == 1));
    // What r1 holds is not claimable by anyone, r1 included; the third run is.
    let more = s.claim("r2", LEASE, 10).await.unwrap();
    assert_eq!(more.len(), 1);
    assert!(s.claim("r1", LEASE, 10).await.unwrap().is_empty());
    let st = states(Status::Running);
    assert!(s.save_run(&leases[0], &write(&st, Status::Running, true)).await.unwrap().is_some());
    // A stale lease version or another owner is fenced off.
    let stale = Lease { version: 0, ..leases[0].clone() };
    assert!(s.save_run(&stale, &write(&st, Status::Running, true)).await.unwrap().is_none());
    let thief = Lease { owner: "r2".into(), ..leases[0].clone() };
    assert!(s.save_run(&thief, &write(&st, Status::Running, true)).await.unwrap().is_none());
    let held: Vec<Uuid> = leases.iter().map(|l| l.run_id).collect();
    assert_eq!(s.renew_leases("r1", &held, LEASE).await.unwrap(), 2);
    // Released runs are claimable again, under a new lease version.
    s.release(&leases[0], edrgate::store::now_ms() - 1).await.unwrap();
    let again = s.claim("r2", LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].run_id, again[0].version), (leases[0].run_id, 2));
    assert!(s.save_run(&leases[0], &write(&st, Status::Running, true)).await.unwrap().is_none());
    // A graceful shutdown hands every lease back.
    s.release_leases("r2").await.unwrap();
    assert_eq!(s.claim("r3", LEASE, 10).await.unwrap().len(), 2);
}

async fn expired_leases_are_taken_over_and_the_old_owner_is_fenced(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 1, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let dead = s.claim("dead", Duration::from_millis(100), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    // The checkpoint the dead replica left is what the next one resumes from.
    let st = states(Status::Running);
    let mut w = write(&st, Status::Running, false);
    let checkpoint = serde_json::json!({"step": 3});
    w.checkpoint = Some(&checkpoint);
    w.lease_until = edrgate::store::now_ms() + 100;
    assert!(s.save_run(&dead[0], &w).await.unwrap().is_some());
    assert!(s.claim("alive", LEASE, 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let taken = s.claim("alive", LEASE, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(s.load_run(taken[0].run_id).await.unwrap().checkpoint, Some(checkpoint));
    assert!(s.save_run(&dead[0], &write(&st, Status::Running, true)).await.unwrap().is_none());
    assert!(s.save_run(&taken[0], &write(&st, Status::Running, true)).await.unwrap().is_some());
}

async fn concurrent_claimers_never_share_a_run(t: TestStore) {
    let s = Arc::new(t.store.clone());
    for _ in 0..10 {
        insert(&s, &new_action("acme", 10, edrgate::store::now_ms() - 10, None)).await;
    }
    let claimers: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..20 {
                    mine.extend(s.claim(&format!("r{i}"), LEASE, 7).await.unwrap());
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<Uuid> = all.iter().map(|l| l.run_id).collect();
    assert_eq!(distinct.len(), all.len(), "a run was claimed twice");
    assert_eq!(all.len(), 100);
}

async fn visible_writes_move_the_version_and_the_aggregate(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 2, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let leases = s.claim("r1", LEASE, 10).await.unwrap();
    let running = states(Status::Running);
    // Checkpoint-only writes leave the version alone.
    let queued = states(Status::Queued);
    assert!(
        s.save_run(&leases[0], &write(&queued, Status::Queued, false)).await.unwrap().is_some()
    );
    assert_eq!(s.action_version("acme", a.id).await.unwrap(), Some((0, Status::Queued)));
    assert!(
        s.save_run(&leases[0], &write(&running, Status::Running, true)).await.unwrap().is_some()
    );
    assert_eq!(s.action_version("acme", a.id).await.unwrap(), Some((1, Status::Running)));
    // Both runs finish (concurrently, as two replicas would): the action is done.
    let done = states(Status::Succeeded);
    let (l0, l1) = (leases[0].clone(), leases[1].clone());
    let (s0, s1) = (s.clone(), s.clone());
    let d0 = done.clone();
    let d1 = done.clone();
    let (r0, r1) = tokio::join!(
        async move { s0.save_run(&l0, &write(&d0, Status::Succeeded, true)).await.map(|s| s.is_some()) },
        async move { s1.save_run(&l1, &write(&d1, Status::Succeeded, true)).await.map(|s| s.is_some()) },
    );
    assert!(r0.unwrap() && r1.unwrap());
    assert_eq!(s.action_version("acme", a.id).await.unwrap(), Some((3, Status::Succeeded)));
    let (action, _) = s.action("acme", a.id).await.unwrap().unwrap();
    assert!(action.runs.iter().all(|r| r.status == Status::Succeeded));
    assert_eq!(action.runs[0].hostname.as_deref(), Some("HOST-0"));
    assert_eq!(s.unfinished_actions("acme").await.unwrap(), 0);
    // The summary the steps kept is the one counted afresh from the runs.
    let commands: Vec<Vec<Status>> =
        action.runs.iter().map(|r| r.commands.iter().map(|c| c.status).collect()).collect();
    let fresh = ActionSummary::of(
        &action.commands,
        action.runs.iter().zip(&commands).map(|(r, c)| (r.status, c.as_slice())),
    );
    assert_eq!(action.summary, fresh);
    assert_eq!(action.summary.runs_by_status.succeeded, 2);
}

/// A step sends only the results that are new: the results before it stay as stored, and
/// readers put them back in their commands.
async fn a_result_is_written_once_in_its_own_row(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 1, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let lease = s.claim("r1", LEASE, 1).await.unwrap().remove(0);
    let processes = |pid: u64| CommandResult::Processes {
        processes: vec![ProcessInfo {
            pid,
            parent_pid: None,
            name: "svchost.exe".into(),
            path: None,
            command_line: None,
            username: None,
            sid: None,
            started_at: None,
            vendor_id: None,
        }],
    };
    let mut st = states(Status::Running);
    st[0].status = Status::Succeeded;
    st[0].result = Some(processes(4));
    let first = RunWrite { new_results: Some(&[0]), ..write(&st, Status::Running, true) };
    s.save_run(&lease, &first).await.unwrap().unwrap();
    // A later step does not send it again (its copy in memory is not written)...
    st[0].result = Some(processes(99));
    st[1].status = Status::Succeeded;
    let next = RunWrite { new_results: Some(&[]), ..write(&st, Status::Running, true) };
    s.save_run(&lease, &next).await.unwrap().unwrap();
    // ...and every reader has the stored one.
    let (action, _) = s.action("acme", a.id).await.unwrap().unwrap();
    let run = &action.runs[0];
    assert_eq!(run.commands[0].result, Some(processes(4)));
    assert_eq!(run.commands[1].status, Status::Succeeded);
    assert_eq!(
        s.run("acme", a.id, run.id).await.unwrap().unwrap().commands[0].result,
        Some(processes(4))
    );
    let (page, _) = s.runs_page("acme", a.id, None, None, 10).await.unwrap().unwrap();
    assert_eq!(page[0].commands[0].result, Some(processes(4)));
    assert_eq!(s.load_run(run.id).await.unwrap().states[0].result, Some(processes(4)));
}

/// A step that moves a status is counted in the action's summary even when its writer did
/// not call it visible (the summary is kept by the steps, never recounted from the runs).
async fn the_summary_follows_every_status_change(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 3, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let leases = s.claim("r1", LEASE, 10).await.unwrap();
    let (running, done) = (states(Status::Running), states(Status::Succeeded));
    s.save_run(&leases[0], &write(&running, Status::Running, false)).await.unwrap().unwrap();
    s.save_run(&leases[0], &write(&done, Status::Succeeded, true)).await.unwrap().unwrap();
    s.save_run(&leases[1], &write(&running, Status::Running, true)).await.unwrap().unwrap();
    let (action, _) = s.action("acme", a.id).await.unwrap().unwrap();
    let counts = action.summary.runs_by_status;
    assert_eq!((counts.queued, counts.running, counts.succeeded), (1, 1, 1));
    assert_eq!(action.summary.runs, 3);
    assert_eq!(action.status, Status::Running);
}

async fn cancel_marks_the_action_and_wakes_its_runs(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 2, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    assert!(s.request_cancel("other", a.id).await.unwrap().is_none());
    let runs = s.request_cancel("acme", a.id).await.unwrap().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(s.cancel_requested(a.id).await.unwrap());
    let (action, version) = s.action("acme", a.id).await.unwrap().unwrap();
    assert!(action.cancel_requested);
    assert_eq!(version, 1);
    assert!(s.load_run(runs[0]).await.unwrap().cancel_requested);
}

async fn files_live_expire_and_purge(t: TestStore) {
    let s = &t.store;
    let meta = |id: &str, expires: Option<i64>| FileMeta {
        id: id.into(),
        tenant: "acme".into(),
        name: "out.bin".into(),
        size: 5_000_000_000,
        sha256: "ab".repeat(32),
        created_at: edrgate::store::from_ms(1_000),
        expires_at: expires.map(edrgate::store::from_ms),
        origin: FileOrigin { backend: Some("cb".into()), ..Default::default() },
    };
    s.insert_file(&meta("f1", None)).await.unwrap();
    s.insert_file(&meta("f2", Some(5_000))).await.unwrap();
    let f1 = s.file("acme", "f1", 10_000).await.unwrap().unwrap();
    assert_eq!((f1.size, f1.origin.backend.as_deref()), (5_000_000_000, Some("cb")));
    assert!(s.file("other", "f1", 10_000).await.unwrap().is_none());
    assert!(s.file("acme", "f2", 4_000).await.unwrap().is_some());
    assert!(s.file("acme", "f2", 6_000).await.unwrap().is_none());
    assert!(s.mark_file_deleted("acme", "f1").await.unwrap());
    assert!(!s.mark_file_deleted("acme", "f1").await.unwrap());
    assert!(s.file("acme", "f1", 10_000).await.unwrap().is_none());
    let due = s.files_to_purge(6_000, 10).await.unwrap();
    assert_eq!(
        due,
        vec![("acme".to_owned(), "f1".to_owned()), ("acme".to_owned(), "f2".to_owned())]
    );
    s.purge_file("f1").await.unwrap();
    assert_eq!(s.files_to_purge(6_000, 10).await.unwrap().len(), 1);
}

async fn audit_appends_and_filters(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 1, 1_000, None);
    insert(s, &a).await;
    let actor = Actor {
        tenant: "acme".into(),
        subject: Some("alice".into()),
        source: Some("10.0.0.1".into()),
        ..Default::default()
    };
    let mut submit = AuditRecord::new(AuditEvent::ActionSubmit, "accepted", 202).for_action(a.id);
    submit.targets = Some(serde_json::json!([{"hostname": "H"}]));
    s.append_audit(&actor, &submit).await.unwrap();
    for _ in 0..3 {
        s.append_audit(&actor, &AuditRecord::new(AuditEvent::FileDownload, "ok", 200))
            .await
            .unwrap();
    }
    let other = Actor { tenant: "other".into(), ..Default::default() };
    s.append_audit(&other, &AuditRecord::new(AuditEvent::ConfigReload, "ok", 200)).await.unwrap();
    let (all, next) =
        s.audit("acme", &AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(next.is_none());
    assert_eq!(all[3].event, AuditEvent::ActionSubmit);
    assert_eq!(all[3].action_status.as_deref(), Some("queued"));
    assert_eq!(all[3].targets, Some(serde_json::json!([{"hostname": "H"}])));
    let (page, next) =
        s.audit("acme", &AuditQuery { limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(page.len(), 2);
    let (rest, _) = s
        .audit("acme", &AuditQuery { limit: 10, before: next, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    let by_action = s
        .audit("acme", &AuditQuery { action_id: Some(a.id), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_action.0.len(), 1);
    let by_event = s
        .audit(
            "acme",
            &AuditQuery { event: Some(AuditEvent::FileDownload), limit: 10, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(by_event.0.len(), 3);
}

async fn shared_budget_caps_slots_and_calls(t: TestStore) {
    let shutdown = CancellationToken::new();
    let budget: Arc<dyn SharedBudget> = t.store.shared_budget(shutdown.clone());
    assert_eq!(budget.is_shared(), t.store.dialect() == Dialect::Postgres);
    let a = acquire_slot(&budget, "cb:x", 2, "s1", "run-a").await.unwrap().unwrap();
    assert!(acquire_slot(&budget, "cb:x", 2, "s1", "run-b").await.unwrap().is_none());
    // The same holder (a run taken over by another replica) gets its slot back.
    let a2 = acquire_slot(&budget, "cb:x", 2, "s1", "run-a").await.unwrap().unwrap();
    let b = acquire_slot(&budget, "cb:x", 2, "s2", "run-b").await.unwrap().unwrap();
    assert!(acquire_slot(&budget, "cb:x", 2, "s3", "run-c").await.unwrap().is_none());
    drop(a);
    drop(b);
    // Freed slots come back (PostgreSQL frees in the background).
    let mut c = None;
    for _ in 0..100 {
        c = acquire_slot(&budget, "cb:x", 2, "s3", "run-c").await.unwrap();
        if c.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.is_some());
    drop(a2);
    let window = Duration::from_millis(500);
    for _ in 0..3 {
        assert_eq!(budget.take_call("mde:t", 3, window).await.unwrap(), None);
    }
    let wait = budget.take_call("mde:t", 3, window).await.unwrap().expect("quota spent");
    // PostgreSQL widens the window a little (calls reach the vendor after they are counted).
    assert!(wait <= window + Duration::from_secs(1), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert_eq!(budget.take_call("mde:t", 3, window).await.unwrap(), None);
    if let Some(url) = &t.url {
        // A second replica (its own pool and budget) sees the same slots and calls.
        let replica = Store::connect(url, 2).await.unwrap();
        let other = replica.shared_budget(shutdown.clone());
        assert!(acquire_slot(&other, "cb:x", 2, "s3", "run-z").await.unwrap().is_none());
        let _d = acquire_slot(&other, "cb:x", 2, "s4", "run-d").await.unwrap().unwrap();
        assert!(acquire_slot(&budget, "cb:x", 2, "s5", "run-e").await.unwrap().is_none());
        assert!(other.take_call("mde:t", 3, window).await.unwrap().is_none());
        assert!(other.take_call("mde:t", 3, window).await.unwrap().is_none());
        assert!(budget.take_call("mde:t", 3, window).await.unwrap().is_some());
    }
    shutdown.cancel();
}

async fn changes_are_announced_where_replicas_need_them(t: TestStore) {
    let s = &t.store;
    let Some(mut listener) = s.change_listener().await.unwrap() else {
        // SQLite: one replica, whose engine announces its own changes.
        assert_eq!(s.dialect(), Dialect::Sqlite);
        return;
    };
    // Another replica's store makes the changes.
    let other = Store::connect(t.url.as_deref().unwrap(), 2).await.unwrap();
    let a = new_action("acme", 1, edrgate::store::now_ms() - 10, None);
    insert(&other, &a).await;
    // A new action is announced (event streams and webhook senders wake), then its cancel.
    let next = tokio::time::timeout(Duration::from_secs(5), listener.next()).await.unwrap();
    assert_eq!(next.unwrap(), Some(Change { action_id: a.id, cancel: false }));
    other.request_cancel("acme", a.id).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), listener.next()).await.unwrap();
    assert_eq!(next.unwrap(), Some(Change { action_id: a.id, cancel: true }));
    let lease = other.claim("r2", LEASE, 1).await.unwrap().remove(0);
    let st = states(Status::Running);
    // Checkpoint-only writes are not announced; visible ones are.
    let queued = states(Status::Queued);
    other.save_run(&lease, &write(&queued, Status::Queued, false)).await.unwrap().unwrap();
    other.save_run(&lease, &write(&st, Status::Running, true)).await.unwrap().unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), listener.next()).await.unwrap();
    assert_eq!(next.unwrap(), Some(Change { action_id: a.id, cancel: false }));
    assert!(tokio::time::timeout(Duration::from_millis(200), listener.next()).await.is_err());
}

#[test]
fn the_store_url_is_checked_with_the_configuration() {
    let config = |store: &str| {
        let text = format!(
            "[store]\n{store}\n[auth]\nallow_hs256 = true\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n"
        );
        edrgate::config::Config::parse(&text, |_| None)
    };
    let ok =
        config(r#"url = "postgres://edrgate:pw@db.internal:5432/edrgate?sslmode=verify-full""#)
            .unwrap();
    assert!(ok.store.url.is_some());
    // The SQLite path still works on its own.
    assert!(config(r#"path = "data/x.db""#).unwrap().store.url.is_none());
    for (bad, problem) in [
        (r#"url = "mysql://db/edrgate""#, "must start with postgres://"),
        (r#"url = "postgres://u:secret-pw@db:notaport/x""#, "is not a valid PostgreSQL URL"),
        ("max_connections = 0", "store.max_connections"),
    ] {
        let errors = config(bad).unwrap_err();
        assert!(errors.iter().any(|e| e.contains(problem)), "{bad}: {errors:?}");
        // The password never shows in a message.
        assert!(errors.iter().all(|e| !e.contains("secret-pw")), "{errors:?}");
    }
    // Nor in the configuration's debug output.
    assert!(!format!("{ok:?}").contains(":pw@"));
}

/// `edrgate migrate --config FILE` on a configuration's store; its output.
fn migrate_cli(store: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edrgate.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\n{store}\n[auth]\nallow_hs256 = true\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edrgate"))
        .args(["migrate", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn migrate_applies_the_sqlite_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sub/edrgate.db");
    let out = migrate_cli(&format!("path = {:?}", db.display().to_string()));
    assert_eq!(out.trim(), applied_line("Sqlite", &shipped("sqlite")));
    assert!(db.try_exists().unwrap());
}

#[tokio::test]
async fn migrate_applies_the_postgres_migrations() {
    let Some(url) =
        common::fresh_postgres_database("migrate_applies_the_postgres_migrations").await
    else {
        return;
    };
    let out = migrate_cli(&format!("url = {url:?}"));
    assert_eq!(out.trim(), applied_line("Postgres", &shipped("postgres")));
    // Applied once: a replica starting next finds nothing to do.
    assert_eq!(
        Store::connect(&url, 2).await.unwrap().migrate().await.unwrap(),
        shipped("postgres")
    );
}

/// The versions of the migrations shipped for `dialect` (`schemas/migrations/<dialect>`).
fn shipped(dialect: &str) -> Vec<i64> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/migrations").join(dialect);
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.split('_').next()?.parse().ok())
        .collect();
    versions.sort_unstable();
    assert!(versions.len() >= 9, "{versions:?}");
    versions
}

/// What `edrgate migrate` prints after applying `versions`.
fn applied_line(store: &str, versions: &[i64]) -> String {
    let latest = versions.last().unwrap();
    format!("{store} store: {} migrations applied (latest {latest})", versions.len())
}

/// A driver that failed and could not release its lease (the database was down) leaves the
/// row owned by its process: renewing only what live drivers hold lets that lease expire, and
/// the same process then claims the run again, instead of renewing it forever.
async fn a_lease_without_a_live_driver_expires_and_is_claimed_again(t: TestStore) {
    let s = &t.store;
    insert(s, &new_action("acme", 2, edrgate::store::now_ms() - 10, None)).await;
    let leases = s.claim("r1", Duration::from_millis(50), 10).await.unwrap();
    assert_eq!(leases.len(), 2);
    let (alive, orphan) = (&leases[0], &leases[1]);
    // Only the run whose driver lives is renewed.
    assert_eq!(s.renew_leases("r1", &[alive.run_id], LEASE).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(s.renew_leases("r1", &[alive.run_id], LEASE).await.unwrap(), 1);
    let claim = |live: &[Uuid]| {
        let live = live.to_vec();
        async move {
            let c = edrgate::store::Claim {
                owner: "r1",
                lease: LEASE,
                limit: 10,
                per_key: u32::MAX,
                live: &live,
                keys: &[],
                sweep: true,
                actions: None,
            };
            s.claim_runs(&c).await.unwrap()
        }
    };
    let again = claim(&[alive.run_id]).await;
    assert_eq!(again.len(), 1, "the orphaned run is claimed again");
    assert_eq!(again[0].lease.run_id, orphan.run_id);
    assert_eq!(again[0].lease.version, orphan.version + 1);
    // The old lease is fenced off; a live driver's run is never claimed from under it.
    let st = states(Status::Running);
    assert!(s.save_run(orphan, &write(&st, Status::Running, true)).await.unwrap().is_none());
    assert!(claim(&[alive.run_id, orphan.run_id]).await.is_empty());
}

/// Claims go round-robin over (tenant, backend) and stop at the per-key cap: a fan-out queued
/// first does not take every place before another tenant's single run.
async fn claims_take_turns_across_tenants_and_backends(t: TestStore) {
    let s = &t.store;
    let now = edrgate::store::now_ms();
    let big = new_action("big", 10, now - 100, None);
    insert(s, &big).await;
    let small = new_action("small", 1, now - 10, None);
    insert(s, &small).await;
    let first = s
        .claim_runs(&edrgate::store::Claim {
            owner: "r1",
            lease: LEASE,
            limit: 3,
            per_key: 2,
            live: &[],
            keys: &[key("big", 2), key("small", 2)],
            sweep: false,
            actions: None,
        })
        .await
        .unwrap();
    let mut tenants: Vec<&str> = first.iter().map(|c| c.tenant.as_str()).collect();
    tenants.sort_unstable();
    assert_eq!(tenants, ["big", "big", "small"], "round-robin, two per key at most");
    assert!(first.iter().all(|c| c.backend.as_deref() == Some("cb")));
    // What live drivers hold counts against the cap, and a full key takes nothing.
    let live: Vec<Uuid> = first.iter().map(|c| c.lease.run_id).collect();
    let claim = |keys: Vec<(String, String, u32)>, sweep: bool, actions: Option<Vec<Uuid>>| {
        let live = live.clone();
        async move {
            let c = edrgate::store::Claim {
                owner: "r1",
                lease: LEASE,
                limit: 10,
                per_key: 5,
                live: &live,
                keys: &keys,
                sweep,
                actions: actions.as_deref(),
            };
            s.claim_runs(&c).await.unwrap()
        }
    };
    let full = || vec![key("big", 0), key("small", 0)];
    assert!(claim(vec![key("big", 2), key("small", 2)], false, None).await.is_empty());
    assert!(claim(full(), false, None).await.is_empty(), "full keys");
    // Runs of an action just submitted are claimed by id, within their key's room.
    let fresh = new_action("big", 2, now - 1_000, None);
    insert(s, &fresh).await;
    assert!(claim(vec![key("big", 2)], false, Some(vec![fresh.id])).await.is_empty());
    let by_id = claim(vec![key("big", 3)], false, Some(vec![fresh.id])).await;
    assert_eq!(by_id.len(), 1, "one place left for the key");
    assert_eq!(by_id[0].action_id, fresh.id, "the fresh action's run, not the older ones");
    // A key nobody named (a backend a reload removed) is claimed only by a sweep.
    let other = new_action("other", 2, now - 10, None);
    insert(s, &other).await;
    assert!(claim(full(), false, None).await.is_empty(), "no sweep");
    let swept = claim(full(), true, None).await;
    assert_eq!(swept.len(), 2, "{swept:?}");
    assert!(swept.iter().all(|c| c.tenant == "other"), "a sweep keeps the named keys' caps");
}

/// A claim key: a tenant's `cb` backend with its cap.
fn key(tenant: &str, cap: u32) -> (String, String, u32) {
    (tenant.to_owned(), "cb".to_owned(), cap)
}

async fn every_fenced_write_says_whether_a_cancel_was_requested(t: TestStore) {
    let s = &t.store;
    let a = new_action("acme", 1, edrgate::store::now_ms() - 10, None);
    insert(s, &a).await;
    let lease = s.claim("r1", LEASE, 1).await.unwrap().remove(0);
    let st = states(Status::Running);
    for visible in [false, true] {
        let saved = s.save_run(&lease, &write(&st, Status::Running, visible)).await.unwrap();
        assert!(!saved.unwrap().cancel_requested);
    }
    s.request_cancel("acme", a.id).await.unwrap().unwrap();
    for visible in [false, true] {
        let saved = s.save_run(&lease, &write(&st, Status::Running, visible)).await.unwrap();
        assert!(saved.unwrap().cancel_requested, "visible: {visible}");
    }
}
