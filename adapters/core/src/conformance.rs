//! The adapter conformance suite (feature `testsuite`): every MUST of `adapters/README.md` as a
//! test, run by every adapter against its simulator. A new vendor is done when it passes.
//!
//! A vendor's `tests/conformance.rs` implements [`Conformance`] (start its simulator, build
//! its adapter, name its devices, fixtures and secrets) and expands [`conformance_tests!`],
//! which generates one `#[tokio::test]` per rule:
//!
//! ```ignore
//! struct Cb { sim: Simulator, url: String }
//! #[async_trait::async_trait]
//! impl Conformance for Cb { /* … */ }
//! edrgate_adapter::conformance_tests!(Cb);
//! // or, for a rule the adapter does not meet yet:
//! edrgate_adapter::conformance_tests!(Cb, ignore {
//!     stop_is_honoured_at_every_step = "reason: issue 13 item 2",
//! });
//! ```
//!
//! The tests drive the adapter exactly as the engine does ([`RunHarness`], [`crate::driver`]
//! inside the adapter) and observe the simulator only through its documented admin routes
//! (`GET /_sim/counters`, `GET`/`POST /_sim/faults`, served by `edrgate-simkit`), so this crate
//! depends on no simulator:
//!
//! | test | the MUST |
//! |---|---|
//! | [`refused_journal_write_leaves_no_side_effect`] | no vendor call that changes an endpoint when `ctx.journal.record` fails |
//! | [`stop_is_honoured_at_every_step`] | cancel and deadline end the run at every step, unfinished commands get the stop's status and error |
//! | [`capabilities_are_exact`] | every advertised command succeeds; every other one is `unsupported_command`, with no side effect |
//! | [`no_secret_leaks`] | no secret in errors, checkpoints, results or log lines |
//! | [`transient_failures_are_ridden_out`] | 5xx bursts, dropped connections and 429 with `Retry-After` are retried, honouring it |
//! | [`lost_answers_are_reconciled_never_resent`] | an answer lost after the vendor acted is reconciled or `outcome_unknown`, never re-sent |
//! | [`checkpoints_resume_in_a_fresh_adapter`] | a checkpoint of any step, or an intent, resumes in a new adapter instance |
//!
//! Side effects are counted two ways: the simulator's `side_effects_processed` (requests it
//! calls side-effecting that reached its routes) and the executed operations
//! [`Conformance::is_effect`] picks from its log. Where a vendor needs several requests for one
//! command (Carbon Black's `execute` cleans up its output file), the suite compares with an
//! uninterrupted reference run rather than with a fixed number.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::adapter::{Adapter, Next, StopReason};
use crate::model::{Command, CommandKind, CommandResult, ErrorCode, RegistryValueType, Status};
use crate::testsuite::{JournalMode, MemFiles, RunHarness};

/// Endpoints every test's simulator is started with (each run gets a fresh one).
pub const ENDPOINTS: usize = 96;

/// What a simulated endpoint holds, for the suite's commands.
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// A running process that may be killed.
    pub pid: u64,
    /// A small file and its exact content.
    pub file: String,
    pub file_content: Vec<u8>,
    /// A path that does not exist.
    pub missing_file: String,
    /// A writable directory holding `file`.
    pub dir: String,
    /// An existing registry key and one of its values (read).
    pub registry_key: String,
    pub registry_value: String,
    /// An existing registry key where values and subkeys may be written.
    pub writable_key: String,
    /// A command line that exits 0.
    pub execute: String,
    /// `run_script`: a script name and, to stage it from the file store, its content.
    pub script: String,
    pub script_content: Option<Vec<u8>>,
}

/// One vendor under test: its simulator and how to build its adapter against it.
#[async_trait]
pub trait Conformance: Send + Sync + Sized + 'static {
    /// Starts the simulator with `endpoints` endpoints, small timings (check-ins, command
    /// latencies, poll intervals in tens of milliseconds) and budgets that the suite's
    /// sequential runs cannot exhaust.
    async fn start(endpoints: usize) -> Self;
    /// A new adapter instance on the simulator, as a freshly started gateway builds it.
    fn adapter(&self) -> Arc<dyn Adapter>;
    /// The device id of endpoint `n` (1-based).
    fn device(&self, n: usize) -> String;
    /// The simulator's base URL (plain HTTP), for its admin routes `/_sim/…`.
    fn sim_url(&self) -> String;
    /// Whether an operation of the simulator's log (`/_sim/counters` `executed`) changed an
    /// endpoint.
    fn is_effect(op: &str) -> bool;
    /// Every secret the adapter holds (tokens, client secrets, passwords).
    fn secrets(&self) -> Vec<String>;
    fn fixtures(&self) -> Fixtures;
    /// An adapter whose credential is wrong, and that credential (which must not leak either).
    fn adapter_with_wrong_secret(&self) -> Option<(Arc<dyn Adapter>, String)> {
        None
    }
    /// The commands of a run that exercises `kind` on a fresh endpoint (the last one is of
    /// `kind`; earlier ones set up what it needs). Override for a vendor whose endpoints are
    /// not Windows-like.
    fn sample_run(&self, kind: CommandKind, files: &MemFiles) -> Vec<Command> {
        sample_run(&self.fixtures(), kind, files)
    }
}

/// The default [`Conformance::sample_run`], from [`Fixtures`].
pub fn sample_run(f: &Fixtures, kind: CommandKind, files: &MemFiles) -> Vec<Command> {
    let scratch_key = join(&f.writable_key, "edrgate-conformance");
    let scratch_value = "edrgate-conformance".to_owned();
    let set = |key: &str| Command::RegistrySet {
        key: key.to_owned(),
        value: scratch_value.clone(),
        value_type: RegistryValueType::Sz,
        data: json!("conformance"),
        overwrite: true,
    };
    match kind {
        CommandKind::ProcessList => vec![Command::ProcessList],
        CommandKind::KillProcess => vec![Command::KillProcess { pid: f.pid, vendor_id: None }],
        CommandKind::GetFile => vec![get_file(&f.file)],
        CommandKind::PutFile => vec![Command::PutFile {
            file_id: files.add("edrgate-conformance.txt", b"put by the conformance suite"),
            path: join(&f.dir, "edrgate-conformance.txt"),
        }],
        CommandKind::DeleteFile => vec![Command::DeleteFile { path: f.file.clone() }],
        CommandKind::QuarantineFile => vec![Command::QuarantineFile { path: f.file.clone() }],
        CommandKind::UnquarantineFile => vec![
            Command::QuarantineFile { path: f.file.clone() },
            Command::UnquarantineFile { path: f.file.clone() },
        ],
        CommandKind::ListDirectory => vec![Command::ListDirectory { path: f.dir.clone() }],
        CommandKind::CreateDirectory => {
            vec![Command::CreateDirectory { path: join(&f.dir, "edrgate-conformance-dir") }]
        }
        CommandKind::Execute => vec![Command::Execute {
            command_line: f.execute.clone(),
            wait: true,
            working_directory: None,
            output_file: None,
        }],
        CommandKind::RunScript => vec![Command::RunScript {
            script: f.script.clone(),
            args: Vec::new(),
            file_id: f.script_content.as_ref().map(|c| files.add(&f.script, c)),
        }],
        CommandKind::RegistryList => vec![Command::RegistryList { key: f.registry_key.clone() }],
        CommandKind::RegistryGet => vec![Command::RegistryGet {
            key: f.registry_key.clone(),
            value: f.registry_value.clone(),
        }],
        CommandKind::RegistrySet => vec![set(&f.writable_key)],
        CommandKind::RegistryCreateKey => vec![Command::RegistryCreateKey { key: scratch_key }],
        CommandKind::RegistryDeleteKey => vec![
            Command::RegistryCreateKey { key: scratch_key.clone() },
            Command::RegistryDeleteKey { key: scratch_key },
        ],
        CommandKind::RegistryDeleteValue => vec![
            set(&f.writable_key),
            Command::RegistryDeleteValue { key: f.writable_key.clone(), value: scratch_value },
        ],
        CommandKind::MemoryDump => vec![Command::MemoryDump { path: None, fetch: true }],
        CommandKind::Isolate => vec![Command::Isolate],
        CommandKind::Release => vec![Command::Isolate, Command::Release],
    }
}

fn get_file(path: &str) -> Command {
    Command::GetFile { path: path.to_owned(), offset: None, length: None }
}

/// `parent` + `name` with the separator `parent` uses.
fn join(parent: &str, name: &str) -> String {
    let sep = if parent.contains('\\') || !parent.contains('/') { '\\' } else { '/' };
    format!("{}{sep}{name}", parent.trim_end_matches(sep))
}

/// The commands of a typical run, filtered by what the adapter supports: a read, a file fetch,
/// a kill and (where supported) isolate and release. The stop and resume tests go through
/// every step of it.
fn journey<H: Conformance>(h: &H, adapter: &dyn Adapter) -> Vec<Command> {
    let f = h.fixtures();
    [
        Command::ProcessList,
        get_file(&f.file),
        Command::KillProcess { pid: f.pid, vendor_id: None },
        Command::Isolate,
        Command::Release,
    ]
    .into_iter()
    .filter(|c| adapter.capabilities().supports(c.kind()))
    .collect()
}

// ----- the simulator, through its admin routes ----------------------------------------------

/// What the simulator counted at one instant.
#[derive(Clone, Debug, Default)]
struct Seen {
    effects: u64,
    processed: u64,
    answers_lost: u64,
    answers_garbled: u64,
    retry_after_violations: u64,
    injected: u64,
}

/// The suite's client of the admin routes (plain HTTP on loopback).
fn admin_client() -> reqwest::Client {
    crate::http::client(&crate::http::TlsOptions::default(), Duration::from_secs(30))
        .expect("an HTTP client")
}

struct Admin {
    url: String,
    http: reqwest::Client,
}

impl Admin {
    fn of<H: Conformance>(h: &H) -> Self {
        Admin { url: h.sim_url().trim_end_matches('/').to_owned(), http: admin_client() }
    }

    async fn seen<H: Conformance>(&self) -> Seen {
        let doc: Value = self
            .http
            .get(format!("{}/_sim/counters", self.url))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET /_sim/counters: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET /_sim/counters: {e}"));
        let executed: BTreeMap<String, u64> =
            serde_json::from_value(doc["executed"].clone()).unwrap_or_default();
        let r = &doc["requests"];
        assert!(r.is_object(), "the simulator has no fault layer (`requests` in /_sim/counters)");
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        Seen {
            effects: executed.iter().filter(|(op, _)| H::is_effect(op)).map(|(_, n)| n).sum(),
            processed: n("side_effects_processed"),
            answers_lost: n("answers_lost"),
            answers_garbled: n("answers_garbled"),
            retry_after_violations: n("retry_after_violations"),
            injected: n("injected_5xx") + n("injected_429") + n("dropped"),
        }
    }

    /// Replaces the fault settings (`POST /_sim/faults`); `{}` turns every fault off.
    async fn faults(&self, faults: Value) {
        self.http
            .post(format!("{}/_sim/faults", self.url))
            .json(&faults)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("POST /_sim/faults {faults}: {e}"));
    }
}

// ----- driving ------------------------------------------------------------------------------

/// How long one run may take to finish (generous: the tests share the machine).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long one step may take (a step must not sleep for long).
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// One step within [`STEP_LIMIT`].
async fn step(run: &mut RunHarness, adapter: &dyn Adapter) -> Result<Next, crate::AdapterError> {
    match tokio::time::timeout(STEP_LIMIT, run.step(adapter)).await {
        Ok(next) => next,
        Err(_) => panic!("a step took longer than {STEP_LIMIT:?}: {:?}", run.views),
    }
}

/// Steps `k` times as the engine would (sleeping the delays asked for); `false` when the run
/// ended before.
async fn step_times(run: &mut RunHarness, adapter: &dyn Adapter, k: usize) -> bool {
    for _ in 0..k {
        match step(run, adapter).await {
            Ok(Next::Done) => return false,
            Ok(Next::After(delay)) => tokio::time::sleep(delay).await,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("run failed: {e}"),
        }
    }
    true
}

/// Drives a run to its end and returns how many steps it took.
async fn drive_counting(run: &mut RunHarness, adapter: &dyn Adapter) -> usize {
    let started = Instant::now();
    let mut steps = 0;
    while step_times(run, adapter, 1).await {
        steps += 1;
        assert!(started.elapsed() < RUN_LIMIT, "run did not finish: {:?}", run.views);
    }
    steps + 1
}

fn assert_all_succeeded(run: &RunHarness, what: &str) {
    for (i, v) in run.views.iter().enumerate() {
        assert_eq!(
            v.status,
            Status::Succeeded,
            "{what}: command {i} ({:?}): {v:?}",
            run.commands[i]
        );
    }
}

/// Every command succeeded, or (having changed an endpoint, or tried to) ended
/// `outcome_unknown`.
fn assert_reconciled(run: &RunHarness, what: &str) {
    for (i, v) in run.views.iter().enumerate() {
        let unknown = v.status == Status::Failed
            && v.error.as_ref().is_some_and(|e| e.code == ErrorCode::OutcomeUnknown)
            && run.commands[i].kind().has_side_effect();
        assert!(
            v.status == Status::Succeeded || unknown || v.status == Status::Skipped,
            "{what}: command {i} ({:?}) is neither done nor outcome_unknown: {v:?}",
            run.commands[i]
        );
    }
}

/// Endpoints handed out in order, so that no run meets another's state.
struct Devices(usize);

impl Devices {
    fn next<H: Conformance>(&mut self, h: &H) -> String {
        self.0 += 1;
        assert!(self.0 <= ENDPOINTS, "the suite ran out of simulated endpoints");
        h.device(self.0)
    }
}

fn side_effect_kinds(adapter: &dyn Adapter) -> Vec<CommandKind> {
    CommandKind::ALL
        .into_iter()
        .filter(|k| k.has_side_effect() && adapter.capabilities().supports(*k))
        .collect()
}

// ----- the tests ----------------------------------------------------------------------------

/// "Before a vendor call that changes an endpoint, an adapter MUST record its intent with
/// `ctx.journal.record` and MUST NOT make the call if that fails": for every supported command
/// that changes an endpoint, a journal that refuses (the lease was lost) ends the step with
/// that error, and the simulator saw no side effect.
pub async fn refused_journal_write_leaves_no_side_effect<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let adapter = h.adapter();
    let mut devices = Devices(0);
    for kind in side_effect_kinds(&*adapter) {
        let device = devices.next(&h);
        let mut run = RunHarness::new(&device, Vec::new());
        run.commands = h.sample_run(kind, &run.files);
        run = reset_views(run);
        run.journal.set_mode(JournalMode::Refuse);
        let before = admin.seen::<H>().await;
        let started = Instant::now();
        let error = loop {
            match step(&mut run, &*adapter).await {
                Ok(Next::After(delay)) => tokio::time::sleep(delay).await,
                Ok(Next::Done) => {
                    panic!("{kind:?}: the run ended without journaling an intent: {:?}", run.views)
                }
                Err(e) if e.is_lease_lost() => break e,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{kind:?}: step failed with {e}, not the journal's refusal"),
            }
            assert!(started.elapsed() < RUN_LIMIT, "{kind:?}: no intent journaled");
        };
        assert!(error.is_lease_lost());
        adapter.run_closed(run.run_id);
        // Give a vendor call the adapter might (wrongly) have left running time to land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = admin.seen::<H>().await;
        assert_eq!(
            (after.processed - before.processed, after.effects - before.effects),
            (0, 0),
            "{kind:?}: the vendor acted although the journal refused the intent"
        );
    }
}

/// A run whose `views` match its (replaced) commands.
fn reset_views(run: RunHarness) -> RunHarness {
    let mut fresh = RunHarness::new(&run.device_id, run.commands);
    fresh.files = run.files;
    fresh
}

/// "At the start of every step an adapter MUST check `ctx.stop.reason()`; when stopped it …
/// MUST give unfinished commands `reason.status()` and `reason.error()`, and returns
/// `Next::Done`": a typical run is stopped after each of its steps in turn, by a cancel and
/// by the deadline. The next step ends the run (within [`STEP_LIMIT`]); commands that had not
/// been sent end with the stop's status and error; commands in flight end with it too, or
/// with their real outcome when they finished meanwhile.
pub async fn stop_is_honoured_at_every_step<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let adapter = h.adapter();
    let mut devices = Devices(0);
    let commands = journey(&h, &*adapter);
    let mut reference = RunHarness::new(&devices.next(&h), commands.clone());
    let steps = drive_counting(&mut reference, &*adapter).await;
    assert_all_succeeded(&reference, "the uninterrupted run");
    eprintln!("the uninterrupted run took {steps} steps");
    // Every step of the run, but a bounded number of them.
    for k in 0..steps.min(20) {
        let mut runs = Vec::new();
        for reason in [StopReason::Cancelled, StopReason::DeadlineExceeded] {
            runs.push((reason, RunHarness::new(&devices.next(&h), commands.clone())));
        }
        let stopped = futures::future::join_all(runs.into_iter().map(|(reason, mut run)| {
            let adapter = Arc::clone(&adapter);
            async move {
                if !step_times(&mut run, &*adapter, k).await {
                    return None;
                }
                let before: Vec<Status> = run.views.iter().map(|v| v.status).collect();
                run.stop.stop(reason);
                let next = step(&mut run, &*adapter).await;
                Some((reason, before, next, run))
            }
        }))
        .await;
        for (reason, before, next, run) in stopped.into_iter().flatten() {
            let what = format!("stopped ({reason:?}) after step {k}");
            match next {
                Ok(Next::Done) => {}
                other => panic!("{what}: the step answered {other:?}, not Done"),
            }
            for (i, v) in run.views.iter().enumerate() {
                let stopped_right = v.status == reason.status()
                    && v.error.as_ref().is_some_and(|e| e.code == reason.error().code);
                let was = before[i];
                let ok = if was.is_terminal() {
                    v.status == was
                } else if was == Status::Queued {
                    stopped_right
                } else {
                    stopped_right || matches!(v.status, Status::Succeeded | Status::Failed)
                };
                assert!(
                    ok,
                    "{what}: command {i} ({:?}) was {was:?}, is now {v:?}",
                    run.commands[i]
                );
            }
            adapter.run_closed(run.run_id);
        }
    }
}

/// "`capabilities()` MUST list exactly the supported commands": every advertised command
/// succeeds on the simulator (all of them in one run, in an order where each finds what it
/// needs), each at most once in the list; a command outside it, should it reach the adapter
/// (the gateway refuses it at submission), fails with `unsupported_command` and no side effect.
pub async fn capabilities_are_exact<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let adapter = h.adapter();
    let caps = adapter.capabilities();
    assert!(!caps.kind.is_empty() && !caps.backend.is_empty(), "{caps:?}");
    for kind in CommandKind::ALL {
        let listed = caps.commands.iter().filter(|c| c.command == kind).count();
        assert!(listed <= 1, "{kind:?} is listed {listed} times");
    }
    let mut devices = Devices(0);

    // Advertised: one run, ordered so that later commands clean up after earlier ones.
    use CommandKind::*;
    let order = [
        ProcessList,
        ListDirectory,
        GetFile,
        PutFile,
        CreateDirectory,
        RegistryList,
        RegistryGet,
        RegistrySet,
        RegistryCreateKey,
        RegistryDeleteKey,
        RegistryDeleteValue,
        Execute,
        RunScript,
        MemoryDump,
        KillProcess,
        // The file comes back before it is deleted.
        QuarantineFile,
        UnquarantineFile,
        DeleteFile,
        Isolate,
        Release,
    ];
    assert_eq!(order.len(), CommandKind::ALL.len());
    let mut run = RunHarness::new(&devices.next(&h), Vec::new());
    for kind in order.into_iter().filter(|k| caps.supports(*k)) {
        let sample = h.sample_run(kind, &run.files);
        // Only the command itself: the run's order provides what it needs.
        let last = sample.into_iter().last().expect("a sample run has a command");
        run.commands.push(last);
    }
    let mut run = reset_views(run);
    run.drive_within(&*adapter, RUN_LIMIT).await;
    assert_all_succeeded(&run, "advertised commands");
    let f = h.fixtures();
    for (i, c) in run.commands.iter().enumerate() {
        if let (Command::GetFile { .. }, CommandResult::File { file }) = (c, run.result(i)) {
            assert_eq!(run.files.bytes(file), f.file_content, "get_file {}", f.file);
        }
    }

    // Not advertised: refused by the adapter too, before any side effect.
    for kind in CommandKind::ALL.into_iter().filter(|k| !caps.supports(*k)) {
        let mut run = RunHarness::new(&devices.next(&h), Vec::new());
        let sample = h.sample_run(kind, &run.files);
        run.commands = vec![sample.into_iter().last().expect("a sample run has a command")];
        let mut run = reset_views(run);
        let before = admin.seen::<H>().await;
        run.drive_within(&*adapter, RUN_LIMIT).await;
        assert_eq!(run.status(0), Status::Failed, "{kind:?} is not advertised: {:?}", run.views);
        assert_eq!(run.error(0).code, ErrorCode::UnsupportedCommand, "{kind:?}");
        let after = admin.seen::<H>().await;
        assert_eq!(
            (after.processed, after.effects),
            (before.processed, before.effects),
            "{kind:?}"
        );
    }
}

/// A shared buffer the test's log lines are written to.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// "Secrets MUST NOT appear in logs, errors, checkpoints, results or panics": runs with
/// failures, transient faults and (where the harness gives one) a wrong credential; every
/// error, checkpoint, journaled checkpoint, result and log line (debug level and up, on the
/// test's thread) is searched for every secret.
pub async fn no_secret_leaks<H: Conformance>() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let mut secrets = h.secrets();
    assert!(secrets.iter().all(|s| s.len() >= 6), "secrets too short to search for: {secrets:?}");
    let adapter = h.adapter();
    let mut devices = Devices(0);
    let mut texts: Vec<String> = Vec::new();
    let f = h.fixtures();

    let before = admin.seen::<H>().await;
    admin.faults(json!({"error_5xx_next": 3})).await;
    let mut commands = journey(&h, &*adapter);
    commands.insert(1, get_file(&f.missing_file));
    let mut run = RunHarness::new(&devices.next(&h), commands).continue_on_error();
    run.drive_within(&*adapter, RUN_LIMIT).await;
    admin.faults(json!({})).await;
    assert!(admin.seen::<H>().await.injected > before.injected, "no fault was injected");
    record_run(&run, &mut texts);
    for error in [
        adapter.resolve_hostname("edrgate-no-such-host").await.err(),
        adapter.find_devices(None).await.err(),
    ]
    .into_iter()
    .flatten()
    {
        texts.push(format!("{error} {error:?}"));
    }

    if let Some((wrong, secret)) = h.adapter_with_wrong_secret() {
        secrets.push(secret);
        let error = wrong.find_devices(None).await.expect_err("a wrong credential is refused");
        assert!(
            matches!(error.code(), ErrorCode::VendorAuthFailed | ErrorCode::Unauthenticated),
            "{error}"
        );
        texts.push(format!("{error} {error:?}"));
        let mut run = RunHarness::new(&devices.next(&h), vec![Command::ProcessList]);
        run.drive_within(&*wrong, RUN_LIMIT).await;
        assert_eq!(run.status(0), Status::Failed, "{:?}", run.views);
        record_run(&run, &mut texts);
    }

    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(PoisonError::into_inner))
        .into_owned();
    assert!(!logged.is_empty(), "no log line was captured");
    texts.push(logged);
    for secret in &secrets {
        for text in &texts {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                panic!("a secret leaked: …{}…", &text[from..at]);
            }
        }
    }
}

fn record_run(run: &RunHarness, texts: &mut Vec<String>) {
    texts.push(format!("{:?}", run.views));
    texts.extend(run.checkpoint.iter().map(Value::to_string));
    texts.extend(run.journal.records().iter().map(Value::to_string));
}

/// "Transient failures (transport, 5xx, 429) MUST be retried, honouring the vendor's
/// `Retry-After`": a burst of 5xx at the start, 5xx and dropped connections all along, and
/// 429s with `Retry-After: 1`. Reads succeed; a command that changes an endpoint succeeds or is
/// `outcome_unknown`, and never acts twice; no request arrives before a `Retry-After` passed.
pub async fn transient_failures_are_ridden_out<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let adapter = h.adapter();
    let mut devices = Devices(0);
    let commands = journey(&h, &*adapter);
    let mut reference = RunHarness::new(&devices.next(&h), commands.clone());
    let before = admin.seen::<H>().await;
    reference.drive_within(&*adapter, RUN_LIMIT).await;
    assert_all_succeeded(&reference, "the uninterrupted run");
    let after = admin.seen::<H>().await;
    let effects = after.effects - before.effects;

    let faults = [
        json!({"error_5xx_next": 5}),
        json!({"error_5xx_every": 3, "drop_every": 7}),
        json!({"status_429_next": 2, "retry_after_secs": 1}),
    ];
    for fault in faults {
        let before = admin.seen::<H>().await;
        admin.faults(fault.clone()).await;
        let mut run = RunHarness::new(&devices.next(&h), commands.clone());
        run.drive_within(&*adapter, RUN_LIMIT).await;
        admin.faults(json!({})).await;
        let after = admin.seen::<H>().await;
        let what = format!("with faults {fault}");
        assert!(after.injected > before.injected, "{what}: no fault was injected");
        assert_reconciled(&run, &what);
        for (i, c) in run.commands.iter().enumerate() {
            if !c.kind().has_side_effect() {
                assert_eq!(run.status(i), Status::Succeeded, "{what}: {c:?}: {:?}", run.views[i]);
            }
        }
        assert!(after.effects - before.effects <= effects, "{what}: a side effect happened twice");
        assert_eq!(
            after.retry_after_violations, before.retry_after_violations,
            "{what}: a request came before the Retry-After passed"
        );
    }
}

/// "It MUST NOT retry such a call blindly": for every supported command that changes an
/// endpoint, the answer to its (first) side-effecting request is lost after the vendor acted.
/// The run ends as the uninterrupted one did, or `outcome_unknown`, with exactly as many
/// side-effecting requests and effects as the uninterrupted run. Then a crash right after the
/// vendor acted (the step abandoned, resumed by a fresh adapter instance): the same.
pub async fn lost_answers_are_reconciled_never_resent<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let adapter = h.adapter();
    let mut devices = Devices(0);
    let mut kill_expected = None;
    for kind in side_effect_kinds(&*adapter) {
        let sample = |run: &mut RunHarness| {
            run.commands = h.sample_run(kind, &run.files);
        };
        let mut reference = RunHarness::new(&devices.next(&h), Vec::new());
        sample(&mut reference);
        let mut reference = reset_views(reference);
        let before = admin.seen::<H>().await;
        reference.drive_within(&*adapter, RUN_LIMIT).await;
        assert_all_succeeded(&reference, &format!("{kind:?} uninterrupted"));
        let after = admin.seen::<H>().await;
        let expected = (after.processed - before.processed, after.effects - before.effects);
        assert!(expected.0 > 0, "{kind:?}: no side-effecting request reached the simulator");
        if kind == CommandKind::KillProcess {
            kill_expected = Some(expected);
        }

        // The answer lost, or a 200 nobody can read, after the vendor acted; also with the
        // vendor's clock five minutes off either way, so that matching an intent to what the
        // vendor shows never compares its clock with ours.
        let variants = [
            ("its answer lost", json!({"lose_answer_after_effect": 1})),
            ("an unreadable answer", json!({"garbage_after_effect": 1})),
            (
                "its answer lost, the vendor's clock 5 min behind",
                json!({"lose_answer_after_effect": 1, "clock_skew_secs": -300}),
            ),
            (
                "its answer lost, the vendor's clock 5 min ahead",
                json!({"lose_answer_after_effect": 1, "clock_skew_secs": 300}),
            ),
        ];
        for (fault, settings) in variants {
            let mut run = RunHarness::new(&devices.next(&h), Vec::new());
            sample(&mut run);
            let mut run = reset_views(run);
            let before = admin.seen::<H>().await;
            admin.faults(settings).await;
            run.drive_within(&*adapter, RUN_LIMIT).await;
            admin.faults(json!({})).await;
            let after = admin.seen::<H>().await;
            let what = format!("{kind:?} with {fault}");
            let hit = (after.answers_lost - before.answers_lost)
                + (after.answers_garbled - before.answers_garbled);
            assert_eq!(hit, 1, "{what}: the fault did not hit once");
            assert_reconciled(&run, &what);
            assert_eq!(
                (after.processed - before.processed, after.effects - before.effects),
                expected,
                "{what}: (side-effecting requests, effects) differ from the uninterrupted run"
            );
        }
    }

    // A crash once the vendor acted on the kill: a fresh adapter takes the run over.
    let f = h.fixtures();
    if let Some(expected) = kill_expected {
        let commands = vec![Command::KillProcess { pid: f.pid, vendor_id: None }];
        let mut run = RunHarness::new(&devices.next(&h), commands);
        let before = admin.seen::<H>().await;
        // The answer comes late, so the crash lands after the vendor acted, before the
        // adapter heard of it.
        admin.faults(json!({"slow_effect_response_ms": 1000})).await;
        let first = h.adapter();
        let admin_ref = &admin;
        let processed = before.processed;
        run.crash_after_intent(&*first, || async move {
            while admin_ref.seen::<H>().await.processed == processed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        drop(first);
        admin.faults(json!({})).await;
        let second = h.adapter();
        run.drive_within(&*second, RUN_LIMIT).await;
        let after = admin.seen::<H>().await;
        assert_reconciled(&run, "kill after a crash once the vendor acted");
        assert_eq!(
            (after.processed - before.processed, after.effects - before.effects),
            expected,
            "kill after a crash once the vendor acted: (side-effecting requests, effects) differ"
        );
    }
}

/// "An adapter MUST keep no run state in memory that a restart would need": a typical run is
/// interrupted after each of its steps in turn and resumed from the stored checkpoint by a new
/// adapter instance; and once right after an intent was journaled (before the vendor call
/// could land). Each resumed run ends as the uninterrupted one did (with the same file
/// content) and changes the endpoints exactly as often (the intent: at most as often).
pub async fn checkpoints_resume_in_a_fresh_adapter<H: Conformance>() {
    let h = H::start(ENDPOINTS).await;
    let admin = Admin::of(&h);
    let f = h.fixtures();
    let mut devices = Devices(0);
    let adapter = h.adapter();
    let commands = journey(&h, &*adapter);
    let mut reference = RunHarness::new(&devices.next(&h), commands.clone());
    let before = admin.seen::<H>().await;
    let steps = drive_counting(&mut reference, &*adapter).await;
    assert_all_succeeded(&reference, "the uninterrupted run");
    let after = admin.seen::<H>().await;
    // Reads may be sent again after a restart; side effects may not.
    let expected = after.effects - before.effects;
    drop(adapter);

    let check = |run: &RunHarness, what: &str| {
        for (i, c) in run.commands.iter().enumerate() {
            if let (Command::GetFile { .. }, Status::Succeeded) = (c, run.status(i)) {
                let CommandResult::File { file } = run.result(i) else {
                    panic!("{what}: get_file result {:?}", run.result(i))
                };
                assert_eq!(run.files.bytes(file), f.file_content, "{what}: get_file content");
            }
        }
    };
    for k in 1..steps.min(20) {
        let what = format!("resumed after step {k}");
        let mut run = RunHarness::new(&devices.next(&h), commands.clone());
        let before = admin.seen::<H>().await;
        let first = h.adapter();
        if !step_times(&mut run, &*first, k).await {
            break;
        }
        // A restart: the old instance is gone (with whatever it kept in memory).
        drop(first);
        let second = h.adapter();
        run.drive_within(&*second, RUN_LIMIT).await;
        let after = admin.seen::<H>().await;
        assert_all_succeeded(&run, &what);
        check(&run, &what);
        assert_eq!(
            after.effects - before.effects,
            expected,
            "{what}: the endpoint changed a different number of times than in the uninterrupted run"
        );
    }

    // A crash right after an intent was journaled.
    let what = "resumed from a journaled intent";
    let mut run = RunHarness::new(&devices.next(&h), commands.clone());
    let before = admin.seen::<H>().await;
    let first = h.adapter();
    run.journal.set_mode(JournalMode::StoreThenHang);
    run.crash_after_intent(&*first, || async {}).await;
    drop(first);
    let second = h.adapter();
    run.drive_within(&*second, RUN_LIMIT).await;
    let after = admin.seen::<H>().await;
    assert_reconciled(&run, what);
    check(&run, what);
    assert!(
        after.effects - before.effects <= expected,
        "{what}: more side effects than the uninterrupted run"
    );
}

/// One `#[tokio::test]` per rule of the suite, for harness `$h` (a [`Conformance`]). Tests
/// named in `ignore { name = "reason", … }` are generated with `#[ignore = "reason"]`.
#[macro_export]
macro_rules! conformance_tests {
    ($h:ty $(,)?) => {
        $crate::conformance_tests!($h, ignore {});
    };
    ($h:ty, ignore { $($name:ident = $reason:literal),* $(,)? } $(,)?) => {
        $crate::__conformance_test!($h, refused_journal_write_leaves_no_side_effect, [$($name = $reason),*]);
        $crate::__conformance_test!($h, stop_is_honoured_at_every_step, [$($name = $reason),*]);
        $crate::__conformance_test!($h, capabilities_are_exact, [$($name = $reason),*]);
        $crate::__conformance_test!($h, no_secret_leaks, [$($name = $reason),*]);
        $crate::__conformance_test!($h, transient_failures_are_ridden_out, [$($name = $reason),*]);
        $crate::__conformance_test!($h, lost_answers_are_reconciled_never_resent, [$($name = $reason),*]);
        $crate::__conformance_test!($h, checkpoints_resume_in_a_fresh_adapter, [$($name = $reason),*]);
    };
}

/// One test of [`conformance_tests!`]: ignored when the list names it.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    // The first entry of the list names this test (one arm per test: macro_rules compares
    // identifiers only against literal ones).
    ($h:ty, refused_journal_write_leaves_no_side_effect, [refused_journal_write_leaves_no_side_effect = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, refused_journal_write_leaves_no_side_effect, $r);
    };
    ($h:ty, stop_is_honoured_at_every_step, [stop_is_honoured_at_every_step = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, stop_is_honoured_at_every_step, $r);
    };
    ($h:ty, capabilities_are_exact, [capabilities_are_exact = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, capabilities_are_exact, $r);
    };
    ($h:ty, no_secret_leaks, [no_secret_leaks = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, no_secret_leaks, $r);
    };
    ($h:ty, transient_failures_are_ridden_out, [transient_failures_are_ridden_out = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, transient_failures_are_ridden_out, $r);
    };
    ($h:ty, lost_answers_are_reconciled_never_resent, [lost_answers_are_reconciled_never_resent = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, lost_answers_are_reconciled_never_resent, $r);
    };
    ($h:ty, checkpoints_resume_in_a_fresh_adapter, [checkpoints_resume_in_a_fresh_adapter = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!(@ignored $h, checkpoints_resume_in_a_fresh_adapter, $r);
    };
    (@ignored $h:ty, $test:ident, $r:literal) => {
        #[tokio::test]
        #[ignore = $r]
        async fn $test() {
            $crate::conformance::$test::<$h>().await;
        }
    };
    // Another test's entry: look further.
    ($h:ty, $test:ident, [$other:ident = $r:literal $(, $($rest:tt)*)?]) => {
        $crate::__conformance_test!($h, $test, [$($($rest)*)?]);
    };
    ($h:ty, $test:ident, []) => {
        #[tokio::test]
        async fn $test() {
            $crate::conformance::$test::<$h>().await;
        }
    };
}
