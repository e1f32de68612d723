//! Benchmark (not a test): one action's fan-out on a CrowdStrike Falcon backend through RTR
//! batch sessions, against a vendor-bound optimum and against CrowdStrike's own SDK
//! (FalconPy's batch flow, `deploy/bench/falconpy_fanout.py`) on the same settings.
//!
//! ```text
//! cargo bench --bench fanout_crowdstrike                     # defaults below, 3 rounds
//! cargo bench --bench fanout_crowdstrike -- --hosts 1000 --rounds 1   # the most per action
//! cargo bench --bench fanout_crowdstrike -- --help           # knobs
//! ```
//!
//! One action with `--hosts` Windows targets (by device id) × (`process_list`, `get_file`
//! `C:\evidence\note.txt`) goes through the gateway (in this process, over loopback HTTP) to
//! the CrowdStrike simulator (HTTPS). The adapter shares one batch session and one batch
//! command per line between the runs of the action, then fetches each host's file through the
//! per-host file routes. Each round runs edrgate on a fresh simulator, then FalconPy on
//! another fresh one with the same `SimConfig` (rounds alternate: edrgate, FalconPy, edrgate,
//! …). FalconPy runs with the SDK venv's python (`--python`, else `EDRGATE_TEST_SDK_PYTHON`,
//! made by `.ci/sdk-venv`); without one it is skipped and said so.
//!
//! # The vendor-bound optimum
//! What any client must do: one batch init, one batch `ps`, one batch `get` (both block until
//! the hosts answer, `command_delay` each), wait `upload_delay` for the uploads, read the
//! batch-get status once, and download each host's archive (one call per host: RTR has no
//! batch download). So at least `C = H + 4` calls under the CID's limit of `L` per sliding
//! minute (the token route is counted apart), and
//!
//! `optimum = max(2 × command_delay + upload_delay, floor((C - 1) / L) × 60 s)`
//!
//! (the batch init itself takes no simulated time; round trips and the downloads' own time
//! are left out, so every real client is above it). At the defaults (500 hosts,
//! 1 s commands, 2 s uploads, 6,000 per minute) the call bound is 0 and the optimum is 4 s.
//!
//! # What is reported
//! Per client and round: makespan and its ratio to the optimum; the vendor calls from a
//! counting layer in front of the simulator's routes (batch inits, batch commands, per-host
//! calls, per route, per host) and the simulator's counters; the 429s it sent. The gateway
//! runs in this process, so its peak RSS is the bench process's `VmHWM` (gateway, simulator
//! and driver together; reset through `/proc/self/clear_refs` before each edrgate run), and
//! FalconPy's is its own `VmHWM`. The bench fails when any run did not succeed, a
//! process list is empty, or a file's SHA-256 (as the gateway recorded it and as downloaded
//! again from `/v1/files/{id}/content`) is not the note's, and when the FalconPy script
//! reports a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use clap::Parser;
use edrgate_crowdstrike_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, NOTE_PATH_WINDOWS, NOTE_TXT, Sim, SimConfig,
    Simulator,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use sha2::Digest as _;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

#[derive(Debug, Parser)]
#[command(about = "edrgate fan-out on a CrowdStrike backend against the optimum and FalconPy")]
struct Args {
    /// Simulated Windows hosts, one target each.
    #[arg(long, default_value_t = 500)]
    hosts: usize,
    /// Alternating rounds (edrgate, then FalconPy, each on a fresh simulator).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long every RTR command runs on a host, ms (real `ps`: a few seconds).
    #[arg(long, default_value_t = 1000)]
    command_delay_ms: u64,
    /// How long a `get`'s upload to the cloud takes after the command, ms.
    #[arg(long, default_value_t = 2000)]
    upload_delay_ms: u64,
    /// The CID's requests per sliding minute in the simulator (CrowdStrike: 6,000).
    #[arg(long, default_value_t = 6000)]
    rate_limit: u32,
    /// The gateway's own `requests_per_minute` (its default: 4,000, headroom for the CID's
    /// other API clients; must stay below 6,000).
    #[arg(long, default_value_t = 4000)]
    gateway_rpm: u32,
    /// The adapter's first poll delay, ms (its default: 1000).
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// The adapter's longest poll delay, ms (its default: 20000).
    #[arg(long, default_value_t = 20_000)]
    max_poll_ms: u64,
    /// FalconPy's delay between two `batch_get_command_status` polls, s.
    #[arg(long, default_value_t = 1.0)]
    falconpy_poll: f64,
    /// Python with crowdstrike-falconpy 1.6.6 and py7zr (default: $EDRGATE_TEST_SDK_PYTHON).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Do not run FalconPy.
    #[arg(long)]
    skip_falconpy: bool,
    /// Write every round's report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

/// Requests per `METHOD path` and answers with status 429, counted in front of the
/// simulator's routes (its own counters have no per-route request count).
#[derive(Clone, Default)]
struct Hits {
    inner: Arc<Mutex<(BTreeMap<String, u64>, u64)>>,
}

impl Hits {
    fn snapshot(&self) -> (BTreeMap<String, u64>, u64) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn count(State(hits): State<Hits>, req: Request, next: Next) -> Response {
    let key = format!("{} {}", req.method(), req.uri().path().trim_end_matches('/'));
    let response = next.run(req).await;
    let mut h = hits.inner.lock().unwrap_or_else(|p| p.into_inner());
    *h.0.entry(key).or_default() += 1;
    if response.status().as_u16() == 429 {
        h.1 += 1;
    }
    response
}

/// The simulator with a counting layer in front of its vendor routes.
#[derive(Clone)]
struct Counted {
    sim: Simulator,
    hits: Hits,
}

impl Sim for Counted {
    fn name(&self) -> &'static str {
        self.sim.name()
    }
    fn vendor_router(&self) -> axum::Router {
        self.sim
            .vendor_router()
            .layer(axum::middleware::from_fn_with_state(self.hits.clone(), count))
    }
    fn tls(&self) -> &edrgate_crowdstrike_sim::SelfSigned {
        self.sim.tls()
    }
    fn log(&self) -> &edrgate_crowdstrike_sim::SimLog {
        self.sim.log()
    }
    fn counters_json(&self) -> Value {
        self.sim.counters_json()
    }
    fn faults(&self) -> Option<&edrgate_simkit::SimFaults> {
        self.sim.faults()
    }
    fn is_side_effect(&self, method: &axum::http::Method, path: &str) -> bool {
        self.sim.is_side_effect(method, path)
    }
    fn fault_response(&self, injected: edrgate_simkit::Injected) -> Response {
        self.sim.fault_response(injected)
    }
}

/// A simulator for one client's run: served over HTTPS, its CA written to `dir`.
struct Vendor {
    counted: Counted,
    base_url: String,
    ca: PathBuf,
    aids: Vec<String>,
}

impl Vendor {
    async fn start(args: &Args, dir: &Path) -> anyhow::Result<Vendor> {
        let sim = Simulator::new(SimConfig {
            windows: args.hosts,
            linux: 0,
            mac: 0,
            command_delay: Duration::from_millis(args.command_delay_ms),
            upload_delay: Duration::from_millis(args.upload_delay_ms),
            rate_limit_per_minute: args.rate_limit,
            ..SimConfig::default()
        });
        let counted = Counted { sim: sim.clone(), hits: Hits::default() };
        let addr = counted.spawn_tls().await?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, sim.cert_pem()?)?;
        let aids = (1..=args.hosts)
            .map(|n| sim.device_id(&format!("CS-WIN-{n:04}")).context("no such host"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Vendor { counted, base_url: format!("https://localhost:{}", addr.port()), ca, aids })
    }

    /// The calls it served, grouped: batch inits, batch commands (`batch-*-command` and the
    /// batch get, POST), batch-get status reads, token requests, and the per-host rest.
    fn calls(&self, hosts: usize) -> Value {
        let (routes, too_many) = self.counted.hits.snapshot();
        let (mut inits, mut commands, mut batch_status, mut tokens, mut per_host) = (0, 0, 0, 0, 0);
        for (route, n) in &routes {
            if route.ends_with("/batch-init-session/v1")
                || route.ends_with("/batch-refresh-session/v1")
            {
                inits += n;
            } else if route.starts_with("POST") && route.contains("/combined/batch-") {
                commands += n;
            } else if route.contains("/combined/batch-get-command") {
                batch_status += n;
            } else if route.contains("/oauth2/") {
                tokens += n;
            } else {
                per_host += n;
            }
        }
        let total: u64 = routes.values().sum();
        let c = self.counted.sim.counters();
        json!({
            "total": total,
            "per_host_total": round3(total as f64 / hosts as f64),
            "batch_inits": inits,
            "batch_commands": commands,
            "batch_get_status": batch_status,
            "tokens": tokens,
            "per_host_calls": per_host,
            "per_host_calls_per_host": round3(per_host as f64 / hosts as f64),
            "responses_429": too_many,
            "routes": routes,
            "sim_counters": {
                "batch_inits": c.batch_inits,
                "batch_commands": c.batch_commands,
                "single_host_commands": c.commands,
                "sessions_created": c.sessions_created,
                "sessions_reused": c.sessions_reused,
                "files_downloaded": c.files_downloaded,
                "rate_limited": c.rate_limited,
            },
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The optimum of the module doc.
fn optimum(args: &Args) -> Duration {
    let path = Duration::from_millis(2 * args.command_delay_ms + args.upload_delay_ms);
    let calls = args.hosts as u64 + 4;
    let minutes = (calls - 1) / u64::from(args.rate_limit.max(1));
    path.max(Duration::from_secs(60 * minutes))
}

async fn edrgate_round(args: &Args, opt: Duration) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let vendor = Vendor::start(args, dir.path()).await?;
    let d = dir.path().display();
    let text = format!(
        r#"
        [store]
        path = "{d}/edrgate.db"
        [files]
        dir = "{d}/files"
        [auth]
        allow_hs256 = true
        hs256_secret = "{SECRET}"
        [tenants.bench.backends.cs]
        kind = "crowdstrike"
        base_url = "{base}"
        client_id = "{DEFAULT_CLIENT_ID}"
        client_secret = "{DEFAULT_CLIENT_SECRET}"
        ca_file = "{ca}"
        requests_per_minute = {rpm}
        poll_interval_ms = {poll}
        max_poll_interval_ms = {max_poll}
        "#,
        base = vendor.base_url,
        ca = vendor.ca.display(),
        rpm = args.gateway_rpm,
        poll = args.poll_ms,
        max_poll = args.max_poll_ms,
    );
    let config = edrgate::config::Config::parse(&text, |_| None)
        .map_err(|e| anyhow::anyhow!("config: {}", e.join("; ")))?;
    let app = edrgate::app::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = format!("http://{}", listener.local_addr()?);
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let token =
        edrgate::auth::mint(SECRET.as_bytes(), "bench", "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder().build()?;

    let targets: Vec<Value> =
        vendor.aids.iter().map(|aid| json!({"backend": "cs", "device_id": aid})).collect();
    let body = json!({
        "targets": targets,
        "commands": [{"type": "process_list"}, {"type": "get_file", "path": NOTE_PATH_WINDOWS}],
    });
    // The peak from here on: the edrgate run's, not the previous rounds'.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let cpu0 = common::own_cpu_seconds();
    let started = Instant::now();
    let action: Value = http
        .post(format!("{gateway}/v1/actions"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = action["id"].as_str().with_context(|| format!("no action id: {action}"))?.to_owned();
    let done = loop {
        let a: Value = http
            .get(format!("{gateway}/v1/actions/{id}?wait=30"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap_or("")) {
            break a;
        }
    };
    let makespan = started.elapsed();
    let cpu = cpu0.zip(common::own_cpu_seconds()).map(|(a, b)| round3(b - a));
    let vmhwm = common::proc_status_kib(std::process::id(), "VmHWM");
    let calls = vendor.calls(args.hosts);

    // A ratio over failed work means nothing: every run succeeded, with a process list and
    // the note, recorded and downloaded again with the note's SHA-256.
    let expected = hex::encode(sha2::Sha256::digest(NOTE_TXT));
    let done = common::with_all_runs(&http, &gateway, &token, done).await?;
    let runs = done["runs"].as_array().context("runs")?;
    let mut failures = Vec::new();
    let mut files = Vec::new();
    for run in runs {
        let cmds = run["commands"].as_array().context("commands")?;
        let file = &cmds.get(1).unwrap_or(&Value::Null)["result"]["file"];
        let good = run["status"] == "succeeded"
            && cmds[0]["result"]["processes"].as_array().is_some_and(|p| !p.is_empty())
            && file["sha256"] == expected.as_str()
            && file["size"].as_u64() == Some(NOTE_TXT.len() as u64);
        if good {
            files.push(file["file_id"].as_str().unwrap_or_default().to_owned());
        } else {
            let errors: Vec<String> = cmds
                .iter()
                .filter_map(|c| c.get("error").filter(|e| !e.is_null()))
                .map(Value::to_string)
                .collect();
            failures.push(format!("{} {}: {}", run["device_id"], run["status"], errors.join("; ")));
        }
    }
    let downloads = futures::stream::iter(files.iter().map(|file| {
        let (http, token, gateway, expected) = (&http, &token, &gateway, &expected);
        async move {
            let r = http
                .get(format!("{gateway}/v1/files/{file}/content"))
                .bearer_auth(token)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match r {
                Ok(r) => match r.bytes().await {
                    Ok(b) => hex::encode(sha2::Sha256::digest(&b)) == *expected,
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<bool>>()
    .await;
    let bad_downloads = downloads.iter().filter(|ok| !**ok).count();
    app.engine.kill();
    if done["status"] != "succeeded" || !failures.is_empty() || runs.len() != args.hosts {
        bail!(
            "the action ended {} with {} of {} runs not succeeded:\n  {}",
            done["status"],
            failures.len(),
            runs.len(),
            failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
    if bad_downloads > 0 {
        bail!("{bad_downloads} of {} files downloaded from the gateway did not match", files.len());
    }
    Ok(json!({
        "client": "edrgate",
        "makespan_s": round3(makespan.as_secs_f64()),
        "ratio": round3(makespan.as_secs_f64() / opt.as_secs_f64()),
        "runs_succeeded": runs.len(),
        "files_verified": files.len(),
        "calls": calls,
        "peak_rss_kib": vmhwm,
        "cpu_s": cpu,
    }))
}

async fn falconpy_round(args: &Args, python: &Path, opt: Duration) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let vendor = Vendor::start(args, dir.path()).await?;
    let aids = dir.path().join("aids.txt");
    std::fs::write(&aids, vendor.aids.join("\n"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bench/falconpy_fanout.py");
    let expected = hex::encode(sha2::Sha256::digest(NOTE_TXT));
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script)
        .args(["--url", &vendor.base_url])
        .arg("--ca")
        .arg(&vendor.ca)
        .args(["--client-id", DEFAULT_CLIENT_ID, "--client-secret", DEFAULT_CLIENT_SECRET])
        .arg("--aids-file")
        .arg(&aids)
        .args(["--path", NOTE_PATH_WINDOWS, "--sha256", &expected])
        .args(["--poll", &args.falconpy_poll.to_string()]);
    // The simulator keeps serving on the runtime while the script runs.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).with_context(|| {
            format!(
                "falconpy_fanout.py printed no report ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    if !out.status.success()
        || report["failures"] != 0
        || report["ok"].as_u64() != Some(args.hosts as u64)
    {
        bail!("FalconPy's fan-out failed ({}): {report}", out.status);
    }
    let makespan = report["makespan_s"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "client": "falconpy",
        "makespan_s": makespan,
        "ratio": round3(makespan / opt.as_secs_f64()),
        "runs_succeeded": report["ok"],
        "files_verified": report["ok"],
        "calls": vendor.calls(args.hosts),
        "script": report,
        "peak_rss_kib": report["peak_rss_kib"],
        "cpu_s": report["cpu_s"],
    }))
}

fn line(round: usize, r: &Value) -> String {
    let c = &r["calls"];
    format!(
        "  round {round} {:<8} makespan {:>7.3} s = {:.3}× | calls {} ({:.2}/host): {} batch init, \
         {} batch commands, {} batch-get status, {} token, {} per-host ({:.2}/host) | 429s {} | \
         peak RSS {:.1} MiB | CPU {} s",
        r["client"].as_str().unwrap_or(""),
        r["makespan_s"].as_f64().unwrap_or(f64::NAN),
        r["ratio"].as_f64().unwrap_or(f64::NAN),
        c["total"],
        c["per_host_total"].as_f64().unwrap_or(f64::NAN),
        c["batch_inits"],
        c["batch_commands"],
        c["batch_get_status"],
        c["tokens"],
        c["per_host_calls"],
        c["per_host_calls_per_host"].as_f64().unwrap_or(f64::NAN),
        c["responses_429"],
        r["peak_rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        r["cpu_s"],
    )
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opt = optimum(&args);
    let python = if args.skip_falconpy {
        None
    } else {
        args.python
            .clone()
            .or_else(|| std::env::var_os("EDRGATE_TEST_SDK_PYTHON").map(PathBuf::from))
    };
    println!(
        "fan-out on CrowdStrike: {} Windows hosts × (process_list + get_file {NOTE_PATH_WINDOWS}), \
         command_delay {} ms, upload_delay {} ms, {} requests per minute (gateway: {}), \
         optimum {:.3} s",
        args.hosts,
        args.command_delay_ms,
        args.upload_delay_ms,
        args.rate_limit,
        args.gateway_rpm,
        opt.as_secs_f64()
    );
    if python.is_none() && !args.skip_falconpy {
        println!("  FalconPy skipped: no --python and no EDRGATE_TEST_SDK_PYTHON (.ci/sdk-venv)");
    }
    let mut reports = Vec::new();
    for round in 1..=args.rounds {
        let r = edrgate_round(&args, opt).await?;
        println!("{}", line(round, &r));
        reports.push(r);
        if let Some(python) = &python {
            let r = falconpy_round(&args, python, opt).await?;
            println!("{}", line(round, &r));
            reports.push(r);
        }
    }
    // The calls per route of each client's last round.
    let mut shown = Vec::new();
    for r in reports.iter().rev() {
        let client = r["client"].as_str().unwrap_or("");
        if shown.contains(&client) {
            continue;
        }
        shown.push(client);
        println!("  {client}: calls per route (last round)");
        for (route, n) in r["calls"]["routes"].as_object().into_iter().flatten() {
            println!("    {n:>6}  {route}");
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(
                &json!({"optimum_s": opt.as_secs_f64(), "rounds": reports}),
            )?,
        )?;
    }
    Ok(())
}
