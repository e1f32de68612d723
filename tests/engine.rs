//! The engine against a scripted in-memory adapter: persistence, checkpoints, restarts,
//! cancels, deadlines and idempotency, independent of any vendor.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edrgate::backends::Backends;
use edrgate::engine::{Engine, EngineOptions, SubmitMeta, Submitted};
use edrgate::files::FileStore;
use edrgate::store::Store;
use edrgate_adapter::{
    Action, ActionRequest, Adapter, AdapterError, Capabilities, Command, CommandKind,
    CommandResult, CommandSupport, CommandUpdate, Device, ErrorCode, Limits, Next, OnError,
    RunContext, Status, Step, Target, Via,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Each command takes three steps: dispatch (records intent, then acts), run, complete.
/// `kill_process` is the side effect: `executed` plays the vendor's own record of what ran, which
/// the adapter reconciles against after a crash between intent and effect; pid 666 fails.
struct Scripted {
    caps: Capabilities,
    executed: Mutex<HashMap<(uuid::Uuid, usize), u32>>,
    steps: AtomicU64,
    /// Once a command runs, the step answers `Next::After(hold)` without finishing it (a
    /// vendor still working, or a `Retry-After`).
    hold: Mutex<Option<Duration>>,
    /// Every step of a stopped run fails (the vendor went down during the cancel).
    fail_when_stopped: AtomicBool,
    /// `Adapter::runs_at_once`: runs that hold a vendor session for their life.
    at_once: Mutex<Option<usize>>,
    /// Runs stepped and not closed yet, and the most there were at once.
    driving: Mutex<std::collections::HashSet<uuid::Uuid>>,
    max_driving: AtomicU64,
}

impl Scripted {
    fn kill(&self, run: uuid::Uuid, index: usize) {
        *self.executed.lock().unwrap().entry((run, index)).or_default() += 1;
    }

    fn kills(&self) -> Vec<u32> {
        self.executed.lock().unwrap().values().copied().collect()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Cp {
    index: usize,
    phase: u8,
    failed: bool,
    /// Set by a held step (see `Scripted::hold`), so a test can see that it was stored.
    #[serde(default)]
    held: bool,
}

#[async_trait]
impl Adapter for Scripted {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn runs_at_once(&self) -> Option<usize> {
        *self.at_once.lock().unwrap()
    }

    fn run_closed(&self, run_id: uuid::Uuid) {
        self.driving.lock().unwrap().remove(&run_id);
    }

    async fn find_devices(&self, _hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        Ok(vec![Device {
            backend: "fake".into(),
            device_id: "7".into(),
            hostname: "HOST-7".into(),
            online: true,
            os: None,
            isolated: None,
            last_seen: None,
            group: None,
            tags: Vec::new(),
        }])
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Step, AdapterError> {
        self.steps.fetch_add(1, Ordering::SeqCst);
        {
            let mut driving = self.driving.lock().unwrap();
            driving.insert(ctx.run_id);
            self.max_driving.fetch_max(driving.len() as u64, Ordering::SeqCst);
        }
        let mut cp: Cp = checkpoint.map(|v| serde_json::from_value(v).unwrap()).unwrap_or_default();
        if let Some(reason) = ctx.stop.reason() {
            if self.fail_when_stopped.load(Ordering::SeqCst) {
                return Err(AdapterError::transient(ErrorCode::VendorUnavailable, "down"));
            }
            let updates = (cp.index..ctx.commands.len())
                .map(|i| CommandUpdate {
                    error: Some(reason.error()),
                    ..CommandUpdate::status(i, reason.status())
                })
                .collect();
            return Ok(Step {
                checkpoint: serde_json::to_value(&cp).unwrap(),
                updates,
                next: Next::Done,
            });
        }
        if cp.index >= ctx.commands.len() {
            return Ok(Step {
                checkpoint: serde_json::to_value(&cp).unwrap(),
                updates: vec![],
                next: Next::Done,
            });
        }
        let i = cp.index;
        let mut updates = vec![];
        match cp.phase {
            0 => {
                cp.phase = 1;
                ctx.journal
                    .record(
                        &serde_json::to_value(&cp).unwrap(),
                        &[CommandUpdate::status(i, Status::Dispatched)],
                    )
                    .await?;
                // The side effect happens only once the intent is durable.
                if let Command::KillProcess { pid, .. } = &ctx.commands[i]
                    && *pid != 666
                {
                    self.kill(ctx.run_id, i);
                }
            }
            1 => {
                // Resumed after a crash between intent and effect: ask the "vendor" whether it
                // happened instead of repeating it.
                if let Command::KillProcess { pid, .. } = &ctx.commands[i]
                    && *pid != 666
                    && !self.executed.lock().unwrap().contains_key(&(ctx.run_id, i))
                {
                    self.kill(ctx.run_id, i);
                }
                cp.phase = 2;
                updates.push(CommandUpdate::status(i, Status::Running));
            }
            _ if self.hold.lock().unwrap().is_some() => {
                let hold = self.hold.lock().unwrap().unwrap();
                cp.held = true;
                return Ok(Step {
                    checkpoint: serde_json::to_value(&cp).unwrap(),
                    updates,
                    next: Next::After(hold),
                });
            }
            _ => {
                let failed =
                    matches!(ctx.commands[i], Command::KillProcess { pid: 666, vendor_id: None });
                updates.push(if failed {
                    CommandUpdate::failed(
                        i,
                        edrgate_adapter::ErrorInfo::new(ErrorCode::CommandFailed, "no such pid"),
                    )
                } else {
                    CommandUpdate::succeeded(i, CommandResult::Done)
                });
                cp.failed |= failed;
                cp.index += 1;
                cp.phase = 0;
                if cp.failed && ctx.on_error == OnError::Stop {
                    for j in cp.index..ctx.commands.len() {
                        updates.push(CommandUpdate::status(j, Status::Skipped));
                    }
                    cp.index = ctx.commands.len();
                }
            }
        }
        Ok(Step {
            checkpoint: serde_json::to_value(&cp).unwrap(),
            updates,
            next: Next::After(Duration::from_millis(20)),
        })
    }
}

fn scripted() -> Arc<Scripted> {
    Arc::new(Scripted {
        caps: Capabilities {
            backend: "fake".into(),
            kind: "scripted".into(),
            commands: [CommandKind::KillProcess, CommandKind::ProcessList]
                .into_iter()
                .map(|command| CommandSupport { command, via: Via::Native, notes: None })
                .collect(),
            limits: Limits::default(),
        },
        executed: Mutex::new(HashMap::new()),
        steps: AtomicU64::new(0),
        hold: Mutex::new(None),
        fail_when_stopped: AtomicBool::new(false),
        at_once: Mutex::new(None),
        driving: Mutex::new(Default::default()),
        max_driving: AtomicU64::new(0),
    })
}

struct Harness {
    dir: tempfile::TempDir,
    adapter: Arc<Scripted>,
}

impl Harness {
    fn new() -> Harness {
        Harness { dir: tempfile::tempdir().unwrap(), adapter: scripted() }
    }

    async fn engine(&self, lease: Duration) -> Arc<Engine> {
        let store = Store::open(&self.dir.path().join("edrgate.db")).await.unwrap();
        let files = FileStore::local(&self.dir.path().join("files"), store.clone()).await.unwrap();
        let mut tenants = HashMap::new();
        for tenant in ["acme", "other"] {
            let mut m: BTreeMap<String, Arc<dyn Adapter>> = BTreeMap::new();
            m.insert("fake".into(), self.adapter.clone());
            tenants.insert(tenant.to_owned(), m);
        }
        let opts = EngineOptions { lease, ..EngineOptions::default() };
        let engine = Engine::new(store, files, Arc::new(Backends::new(tenants)), opts);
        engine.start();
        engine
    }
}

fn request(commands: serde_json::Value) -> ActionRequest {
    serde_json::from_value(json!({
        "targets": [{"backend": "fake", "device_id": "7"}],
        "commands": commands,
    }))
    .unwrap()
}

async fn submit(engine: &Engine, req: ActionRequest) -> Action {
    match engine.submit("acme", req, SubmitMeta::default()).await.unwrap() {
        Submitted::Created(a) => a,
        Submitted::Replayed(_) => panic!("unexpected replay"),
    }
}

async fn finished(engine: &Engine, id: uuid::Uuid) -> Action {
    for _ in 0..200 {
        let a = engine.wait_action("acme", id, Duration::from_millis(100)).await.unwrap();
        if a.status.is_terminal() {
            return a;
        }
    }
    panic!("action {id} did not finish");
}

#[tokio::test]
async fn an_action_is_persisted_before_acceptance_and_runs_to_completion() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let accepted = submit(
        &engine,
        request(json!([{"type": "kill_process", "pid": 4}, {"type": "process_list"}])),
    )
    .await;
    // The engine may already have started it, but cannot have finished it.
    assert!(!accepted.status.is_terminal(), "{accepted:?}");
    assert_eq!(accepted.runs.len(), 1);
    let done = finished(&engine, accepted.id).await;
    assert_eq!(done.status, Status::Succeeded);
    let statuses: Vec<Status> = done.runs[0].commands.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Status::Succeeded, Status::Succeeded]);
    assert_eq!(done.runs[0].commands[0].result, Some(CommandResult::Done));
    assert_eq!(h.adapter.kills(), [1]);
}

#[tokio::test]
async fn a_failure_skips_the_rest_unless_asked_to_continue() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let a = submit(
        &engine,
        request(json!([{"type": "kill_process", "pid": 666}, {"type": "kill_process", "pid": 5}])),
    )
    .await;
    let done = finished(&engine, a.id).await;
    assert_eq!(done.status, Status::Failed);
    let statuses: Vec<Status> = done.runs[0].commands.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Status::Failed, Status::Skipped]);
    assert_eq!(done.runs[0].commands[0].error.as_ref().unwrap().code, ErrorCode::CommandFailed);

    let mut req =
        request(json!([{"type": "kill_process", "pid": 666}, {"type": "kill_process", "pid": 5}]));
    req.on_error = OnError::Continue;
    let done = finished(&engine, submit(&engine, req).await.id).await;
    let statuses: Vec<Status> = done.runs[0].commands.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Status::Failed, Status::Succeeded]);
}

#[tokio::test]
async fn a_killed_engine_is_resumed_from_checkpoints_without_repeating_side_effects() {
    let h = Harness::new();
    let lease = Duration::from_millis(600);
    let engine = h.engine(lease).await;
    let mut ids = Vec::new();
    for pid in 100..120 {
        let commands = json!([{"type": "process_list"}, {"type": "kill_process", "pid": pid}, {"type": "process_list"}]);
        ids.push(submit(&engine, request(commands)).await.id);
    }
    tokio::time::sleep(Duration::from_millis(70)).await;
    engine.kill();
    assert!(h.adapter.steps.load(Ordering::SeqCst) > 0, "nothing ran before the crash");
    let mut unfinished = 0;
    for id in &ids {
        unfinished += usize::from(!engine.action("acme", *id).await.unwrap().status.is_terminal());
    }
    assert!(unfinished > 0, "everything finished before the crash; the test proves nothing");

    let engine = h.engine(lease).await;
    for id in &ids {
        let a = finished(&engine, *id).await;
        assert_eq!(a.status, Status::Succeeded, "{a:?}");
    }
    let kills = h.adapter.kills();
    assert_eq!(kills.len(), 20, "every kill ran");
    assert!(kills.iter().all(|n| *n == 1), "a kill ran twice: {kills:?}");
}

/// A backend whose runs each hold a vendor session is claimed no further than its sessions:
/// the runs beyond them wait in the store (no driver, no step) until a session frees up.
#[tokio::test]
async fn runs_beyond_the_backend_sessions_wait_in_the_store() {
    let h = Harness::new();
    *h.adapter.at_once.lock().unwrap() = Some(2);
    *h.adapter.hold.lock().unwrap() = Some(Duration::from_millis(50));
    let engine = h.engine(Duration::from_secs(30)).await;
    let targets: Vec<_> =
        (1..=6).map(|i| json!({"backend": "fake", "device_id": i.to_string()})).collect();
    let req =
        serde_json::from_value(json!({"targets": targets, "commands": [{"type": "process_list"}]}))
            .unwrap();
    let action = submit(&engine, req).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.adapter.driving.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "two runs never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Held runs keep their sessions: over several claim ticks (500 ms each) no third starts.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.adapter.max_driving.load(Ordering::SeqCst), 2);
    }
    let queued = engine.store().unfinished_run_counts().await.unwrap();
    assert_eq!(queued.iter().map(|(_, n)| n).sum::<i64>(), 6, "{queued:?}");
    *h.adapter.hold.lock().unwrap() = None;
    let done = finished(&engine, action.id).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(h.adapter.max_driving.load(Ordering::SeqCst), 2, "never more than two at once");
}

#[tokio::test]
async fn cancel_stops_queued_and_running_work() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let commands: Vec<_> = (1..40).map(|pid| json!({"type": "kill_process", "pid": pid})).collect();
    let a = submit(&engine, request(json!(commands))).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let cancelled = engine.cancel("acme", a.id).await.unwrap();
    assert!(cancelled.cancel_requested);
    let done = finished(&engine, a.id).await;
    assert_eq!(done.status, Status::Cancelled);
    let first = &done.runs[0].commands[0];
    assert_eq!(first.status, Status::Succeeded, "work done before the cancel stays done");
    let last = done.runs[0].commands.last().unwrap();
    assert_eq!(last.status, Status::Cancelled);
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Cancelled);
    assert!(engine.cancel("acme", a.id).await.is_err(), "a finished action cannot be cancelled");
}

#[tokio::test]
async fn the_deadline_times_out_unfinished_commands() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let commands: Vec<_> = (1..60).map(|pid| json!({"type": "kill_process", "pid": pid})).collect();
    let mut req = request(json!(commands));
    req.timeout_seconds = Some(1);
    let done = finished(&engine, submit(&engine, req).await.id).await;
    assert_eq!(done.status, Status::TimedOut);
    assert_eq!(
        done.runs[0].commands.last().unwrap().error.as_ref().unwrap().code,
        ErrorCode::Timeout
    );
}

#[tokio::test]
async fn idempotency_keys_replay_and_tenants_are_isolated() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let meta = SubmitMeta { idempotency_key: Some("k-1".into()), ..SubmitMeta::default() };
    let req = request(json!([{"type": "process_list"}]));
    let Submitted::Created(first) = engine.submit("acme", req.clone(), meta.clone()).await.unwrap()
    else {
        panic!("first submission must create");
    };
    let Submitted::Replayed(again) = engine.submit("acme", req, meta.clone()).await.unwrap() else {
        panic!("retry must replay");
    };
    assert_eq!(first.id, again.id);
    let different =
        engine.submit("acme", request(json!([{"type": "kill_process", "pid": 9}])), meta).await;
    assert_eq!(different.err().unwrap().code, ErrorCode::Conflict);

    let hidden = engine.action("other", first.id).await.unwrap_err();
    assert_eq!(hidden.code, ErrorCode::NotFound);
    assert_eq!(engine.cancel("other", first.id).await.unwrap_err().code, ErrorCode::NotFound);
    let (listed, _) = engine
        .list("other", &edrgate::store::ListQuery { limit: 50, ..Default::default() })
        .await
        .unwrap();
    assert!(listed.is_empty());
}

#[tokio::test]
async fn submissions_are_checked_before_anything_is_stored() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let cases = [
        (json!([{"type": "delete_file", "path": "C:\\x"}]), ErrorCode::UnsupportedCommand),
        (json!([{"type": "kill_process", "pid": 0}]), ErrorCode::InvalidRequest),
        (json!([]), ErrorCode::InvalidRequest),
    ];
    for (commands, code) in cases {
        let err = engine
            .submit("acme", request(commands.clone()), SubmitMeta::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, code, "{commands}");
    }
    let unknown_backend: ActionRequest = serde_json::from_value(json!({
        "targets": [{"backend": "nope", "device_id": "1"}], "commands": [{"type": "process_list"}]
    }))
    .unwrap();
    assert_eq!(
        engine.submit("acme", unknown_backend, SubmitMeta::default()).await.err().unwrap().code,
        // A device the tenant cannot have (valid by the API document: a 422, not a 400).
        ErrorCode::DeviceNotFound
    );
    let (listed, _) = engine
        .list("acme", &edrgate::store::ListQuery { limit: 50, ..Default::default() })
        .await
        .unwrap();
    assert!(listed.is_empty(), "rejected submissions left rows behind");
}

#[tokio::test]
async fn hostname_targets_resolve_through_the_tenant_backends() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let req: ActionRequest = serde_json::from_value(json!({
        "targets": [{"hostname": "host-7"}], "commands": [{"type": "process_list"}]
    }))
    .unwrap();
    let done = finished(&engine, submit(&engine, req).await.id).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.runs[0].device_id.as_deref(), Some("7"));
    assert_eq!(done.runs[0].hostname.as_deref(), Some("HOST-7"));
    assert_eq!(done.runs[0].target, Target::Hostname { hostname: "host-7".into() });

    let req: ActionRequest = serde_json::from_value(json!({
        "targets": [{"hostname": "nowhere"}], "commands": [{"type": "process_list"}]
    }))
    .unwrap();
    let done = finished(&engine, submit(&engine, req).await.id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.runs[0].error.as_ref().unwrap().code, ErrorCode::DeviceNotFound);
}

/// Waits until the action's first command is `running` (its side effect was sent).
async fn first_command_running(engine: &Engine, id: uuid::Uuid) {
    for _ in 0..200 {
        let a = engine.wait_action("acme", id, Duration::from_millis(100)).await.unwrap();
        if a.runs[0].commands[0].status == Status::Running {
            return;
        }
    }
    panic!("the first command of {id} never ran");
}

#[tokio::test]
async fn a_cancel_the_listener_missed_is_seen_at_the_next_fenced_write() {
    let h = Harness::new();
    let engine = h.engine(Duration::from_secs(5)).await;
    let commands: Vec<_> =
        (1..100).map(|pid| json!({"type": "kill_process", "pid": pid})).collect();
    let a = submit(&engine, request(json!(commands))).await;
    first_command_running(&engine, a.id).await;
    // Requested through another replica whose announcement never arrived here: only the
    // store knows.
    engine.store().request_cancel("acme", a.id).await.unwrap().unwrap();
    let done = finished(&engine, a.id).await;
    assert_eq!(done.status, Status::Cancelled, "{done:?}");
    assert!(h.adapter.kills().len() < 99, "every kill was sent after the cancel");
}

#[tokio::test]
async fn a_stop_the_adapter_cannot_confirm_leaves_a_sent_side_effect_outcome_unknown() {
    let h = Harness::new();
    *h.adapter.hold.lock().unwrap() = Some(Duration::from_secs(60));
    let engine = h.engine(Duration::from_secs(5)).await;
    let a = submit(
        &engine,
        request(json!([{"type": "kill_process", "pid": 4}, {"type": "process_list"}])),
    )
    .await;
    first_command_running(&engine, a.id).await;
    h.adapter.fail_when_stopped.store(true, Ordering::SeqCst);
    engine.cancel("acme", a.id).await.unwrap();
    let done = finished(&engine, a.id).await;
    let kill = &done.runs[0].commands[0];
    assert_eq!(kill.status, Status::Failed, "the kill was sent: not `cancelled`");
    assert_eq!(kill.error.as_ref().unwrap().code, ErrorCode::OutcomeUnknown);
    let list = &done.runs[0].commands[1];
    assert_eq!(list.status, Status::Cancelled, "never sent: cancelled");
    assert_eq!(h.adapter.kills(), [1]);
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_still_times_the_run_out_after_a_restart() {
    let h = Harness::new();
    // The vendor asks for ten days; the action has one second.
    *h.adapter.hold.lock().unwrap() = Some(Duration::from_secs(10 * 24 * 3600));
    let lease = Duration::from_millis(600);
    let engine = h.engine(lease).await;
    let mut req = request(json!([{"type": "kill_process", "pid": 4}]));
    req.timeout_seconds = Some(1);
    let a = submit(&engine, req).await;
    first_command_running(&engine, a.id).await;
    // Wait until the step that asked for ten days is stored, then crash.
    let run_id = a.runs[0].id;
    for _ in 0..500 {
        let run = engine.store().load_run(run_id).await.unwrap();
        if run.checkpoint.is_some_and(|c| c["held"] == json!(true)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.kill();
    let engine = h.engine(lease).await;
    let done = finished(&engine, a.id).await;
    assert_eq!(done.status, Status::TimedOut, "{done:?}");
}
