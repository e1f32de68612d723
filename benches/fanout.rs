//! Benchmark (not a test): fan-out through the gateway, status reads, peak memory, and the
//! same fan-out with Carbon Black's own SDK (cbapi) for comparison. Results and how to read
//! them: `deploy/BENCHMARKS.md`.
//!
//! ```text
//! cargo bench --bench fanout                      # everything, defaults below
//! cargo bench --bench fanout -- --help            # knobs
//! cargo bench --bench fanout -- --skip-cbapi      # machines without cbapi (pip install cbapi==2.0.0)
//! ```
//!
//! Processes: this driver hosts the Carbon Black simulator (so its counters can be checked) and
//! starts the gateway as a separate process, the release `edrgate serve --config FILE` binary,
//! so the gateway's peak RSS (`VmHWM`) is its own. cbapi runs as a third process
//! (`deploy/bench/cbapi_fanout.py`) against a fresh simulator with the same configuration.
//! Both clients talk HTTPS to the simulator (cbapi refuses plain HTTP).
//!
//! Phases:
//! 1. **fan-out**: one action with `--sensors` targets × (`process_list`, `get_file`
//!    `C:\evidence\big.bin` of `--file-size` bytes), makespan from the `POST` to the long-poll
//!    that sees it terminal, against the slot-bound optimum
//!    `ceil(sensors / slots) × (checkin + 2 × command latency)`.
//! 2. **status reads**: `wrk` on `GET /v1/actions/{id}` with a bearer token, then the same `wrk`
//!    on the simulator's `GET /api/v1/cblr/session/{sid}/command/{cid}` as a reference.
//! 3. **cbapi**: the same fan-out with `cb.live_response.submit_job` (10 workers).
//!
//! The gateway's peak RSS is read after phase 1 and after phase 2 (`VmHWM` only grows).
//!
//! Diagnostics beside the headline numbers: the simulator's slots in use sampled every 5 ms
//! (slot utilization, slot-seconds per session against the ideal), CPU-seconds per phase for
//! the gateway, this driver with its children, and "other" (anything else on the machine: it
//! should be ~0, the machine may be shared), and per status read the gateway's CPU time and
//! context switches. `--breakdown` adds wrk on `/healthz` and on an unknown action (auth + one
//! query), then times the parts of a status read in this process on the gateway's database.

use edrgate_simkit::Sim as _;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use serde_json::{Value, json};

mod common;
use common::{clock_ticks, own_cpu_seconds, proc_status_kib};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const TENANT: &str = "bench";
const BIG_FILE: &str = r"C:\evidence\big.bin";

#[derive(Debug, Parser)]
#[command(about = "edrgate fan-out / status-read / memory benchmark (see deploy/BENCHMARKS.md)")]
struct Args {
    /// Simulated sensors, one target each.
    #[arg(long, default_value_t = 200)]
    sensors: usize,
    /// Live-response slots of the simulated server (and of the gateway's backend config).
    #[arg(long, default_value_t = 10)]
    slots: usize,
    /// Session check-in delay of the simulator (slot held → `active`), ms.
    #[arg(long, default_value_t = 1000)]
    checkin_ms: u64,
    /// Latency of every command in the simulator, ms.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// Size of `C:\evidence\big.bin` on every sensor, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    file_size: u64,
    /// The gateway binary (release build of this workspace by default).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_edrgate"))]
    gateway: PathBuf,
    /// `RUST_LOG` of the gateway (its own default is `info`, one line per request).
    #[arg(long, default_value = "info")]
    gateway_log: String,
    /// wrk duration, seconds.
    #[arg(long, default_value_t = 15)]
    wrk_seconds: u64,
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    #[arg(long, default_value_t = 64)]
    wrk_connections: u32,
    /// Python interpreter with cbapi installed.
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long)]
    skip_fanout: bool,
    #[arg(long)]
    skip_wrk: bool,
    #[arg(long)]
    skip_cbapi: bool,
    /// After the gateway phases, time the parts of a status read in this process (store
    /// queries, JSON, token validation) on the gateway's database.
    #[arg(long)]
    breakdown: bool,
    /// Keep the gateway running after the phases (prints its URL and a token) until ctrl-c,
    /// e.g. to profile it by hand.
    #[arg(long)]
    hold: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Before starting, wait up to this many seconds for the machine to be quiet (under 10%
    /// of one core busy over 5 s); the measured background load is reported either way.
    #[arg(long, default_value_t = 0)]
    wait_quiet: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

fn sim_config(args: &Args) -> SimConfig {
    SimConfig {
        sensors: args.sensors,
        slot_limit: args.slots,
        checkin_delay: Duration::from_millis(args.checkin_ms),
        command_latency: Duration::from_millis(args.latency_ms),
        file_size: args.file_size,
        ..SimConfig::default()
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut report = Report::default();
    report.line(format!("date: {}", shell("date -u +%Y-%m-%dT%H:%M:%SZ")));
    let root = env!("CARGO_MANIFEST_DIR");
    report.line(format!(
        "commit: {}{}",
        shell(&format!("git -C '{root}' rev-parse --short HEAD")),
        if shell(&format!("git -C '{root}' status --porcelain -- src adapters schemas")).is_empty()
        {
            ""
        } else {
            " (with uncommitted changes in src/, adapters/ or schemas/)"
        }
    ));
    report.line(format!(
        "machine: {} cores ({}), {} RAM, {}",
        shell("nproc"),
        shell("lscpu | sed -n 's/^Model name: *//p' | head -n1"),
        shell("free -h | awk '/^Mem:/ {print $2}'"),
        shell("uname -sr"),
    ));
    let background = wait_quiet(args.wait_quiet).await;
    report.line(format!(
        "background load before start: {:.1}% of one core (5 s sample)",
        background * 100.0
    ));
    let optimum = slot_bound_optimum(&args);
    report.line(format!(
        "config: {} sensors, {} slots, check-in {} ms, command latency {} ms, file {} B; slot-bound optimum {:.3} s",
        args.sensors, args.slots, args.checkin_ms, args.latency_ms, args.file_size, optimum.as_secs_f64()
    ));
    let mut results = json!({
        "config": {
            "sensors": args.sensors, "slots": args.slots, "checkin_ms": args.checkin_ms,
            "latency_ms": args.latency_ms, "file_size": args.file_size,
            "optimum_s": optimum.as_secs_f64(), "gateway_log": args.gateway_log,
        }
    });

    let dir = tempfile::tempdir()?;
    // Simulator of the gateway phases, HTTPS like a real server, plus plain HTTP for the wrk
    // reference (same state).
    let sim = Simulator::new(sim_config(&args));
    let sim_tls = sim.spawn_tls().await.context("simulator (tls)")?;
    let sim_http = sim.spawn().await.context("simulator (http)")?;
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.cert_pem()?)?;

    let gateway = Gateway::start(&args, dir.path(), sim_tls, &ca).await?;
    report.line(format!(
        "gateway: pid {}, {}, RUST_LOG={}; idle RSS {} KiB",
        gateway.pid(),
        args.gateway.display(),
        args.gateway_log,
        gateway.status_kib("VmRSS").unwrap_or(0)
    ));
    results["gateway_idle_rss_kib"] = json!(gateway.status_kib("VmRSS"));

    if !args.skip_fanout {
        let out = fanout_gateway(&args, &gateway, &sim, optimum).await?;
        report.section("fan-out through edrgate", &out);
        results["fanout"] = out;
    }
    if !args.skip_wrk {
        let out = status_reads(&args, &gateway, sim_http).await?;
        report.section("status reads", &out);
        results["status_reads"] = out;
    }
    let peak = json!({
        "gateway_vmhwm_kib": gateway.status_kib("VmHWM"),
        "gateway_cpu_s_total": gateway.cpu_seconds(),
    });
    report.section("gateway peak memory (whole run)", &peak);
    results["gateway_peak"] = peak;

    if args.hold {
        println!(
            "holding: gateway {} pid {}; token:\n{}\nctrl-c to stop",
            gateway.base,
            gateway.pid(),
            gateway.token
        );
        tokio::signal::ctrl_c().await?;
    }
    let breakdown_action = if args.breakdown {
        // The HTTP floor (no auth, no store) and auth + one query that finds nothing.
        let auth = format!("Authorization: Bearer {}", gateway.token);
        let mut http = json!({});
        for (name, path, ok) in [
            ("healthz (no auth, no store)", "/healthz".to_owned(), true),
            (
                "unknown action: auth + 1 query, 404 problem",
                format!("/v1/actions/{}", uuid::Uuid::now_v7()),
                false,
            ),
        ] {
            let meter = CpuMeter::start(Some(gateway.pid()));
            let mut w = wrk_expecting(&args, &format!("{}{path}", gateway.base), &auth, ok).await?;
            w["cpu"] = meter.finish();
            http[name] = w;
        }
        report.section("gateway HTTP floor (wrk)", &http);
        results["http_floor"] = http;
        Some(small_action(&gateway).await?)
    } else {
        None
    };
    drop(gateway);
    if let Some(id) = breakdown_action {
        let out = breakdown(&dir.path().join("edrgate.db"), &id).await?;
        report.section("status read, part by part (in-process, 2 tokio workers)", &out);
        results["breakdown"] = out;
    }

    if !args.skip_cbapi {
        let out = fanout_cbapi(&args, optimum).await?;
        report.section("fan-out through cbapi (submit_job, 10 workers)", &out);
        results["cbapi"] = out;
    }

    println!("\n{}", report.text);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

/// Every sensor needs a slot for its check-in and then its two commands, one after the other
/// (a session runs one command at a time); slots are the only shared resource, so `slots`
/// sensors at a time in `ceil(sensors / slots)` waves is the best any client can do.
fn slot_bound_optimum(args: &Args) -> Duration {
    let waves = args.sensors.div_ceil(args.slots.max(1));
    per_sensor(args) * u32::try_from(waves).unwrap_or(u32::MAX)
}

/// Slot time one sensor needs at least: check-in, then the two commands.
fn per_sensor(args: &Args) -> Duration {
    Duration::from_millis(args.checkin_ms + 2 * args.latency_ms)
}

// ---------------------------------------------------------------------------------------------
// Gateway process

struct Gateway {
    child: Child,
    base: String,
    token: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Gateway {
    async fn start(args: &Args, dir: &Path, sim: SocketAddr, ca: &Path) -> anyhow::Result<Gateway> {
        let port = free_port()?;
        let config = dir.join("edrgate.toml");
        let text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[store]
path = "{db}"
[files]
dir = "{files}"
[auth]
allow_hs256 = true
hs256_secret = "{SECRET}"
[tenants.{TENANT}.backends.cb]
kind = "carbonblack"
url = "https://127.0.0.1:{sim_port}"
token = "{DEFAULT_TOKEN}"
ca_file = "{ca}"
slot_limit = {slots}
"#,
            db = dir.join("edrgate.db").display(),
            files = dir.join("files").display(),
            sim_port = sim.port(),
            ca = ca.display(),
            slots = args.slots,
        );
        std::fs::write(&config, text)?;
        let log = dir.join("gateway.log");
        let child = Process::new(&args.gateway)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", &args.gateway_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", args.gateway.display()))?;
        let token =
            edrgate::auth::mint(SECRET.as_bytes(), TENANT, "bench", Duration::from_secs(4 * 3600))?;
        let gateway = Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            token,
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = gateway.http.get(format!("{}/healthz", gateway.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
                bail!("the gateway did not come up in 20 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid(), field)
    }

    /// User + system CPU seconds of the gateway so far.
    fn cpu_seconds(&self) -> Option<f64> {
        proc_cpu_seconds(self.pid())
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    /// Long-polls the action until it is terminal; calls `progress` after every answer.
    async fn wait_terminal(
        &self,
        id: &str,
        mut progress: impl FnMut(&Value),
    ) -> anyhow::Result<Value> {
        loop {
            let action = self.get(&format!("/v1/actions/{id}?wait=30")).await?;
            progress(&action);
            if is_terminal(&action["status"]) {
                return Ok(action);
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop, then make sure.
        let _ = Process::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_terminal(status: &Value) -> bool {
    !matches!(status.as_str(), Some("queued" | "dispatched" | "running"))
}

// ---------------------------------------------------------------------------------------------
// Phase 1: fan-out through the gateway

async fn fanout_gateway(
    args: &Args,
    gw: &Gateway,
    sim: &Simulator,
    optimum: Duration,
) -> anyhow::Result<Value> {
    let targets: Vec<Value> = (1..=args.sensors)
        .map(|id| json!({"backend": "cb", "device_id": id.to_string()}))
        .collect();
    let body = json!({
        "targets": targets,
        "commands": [{"type": "process_list"}, {"type": "get_file", "path": BIG_FILE}],
        "comment": "benchmark fan-out",
    });
    let before = sim.counters();
    let meter = CpuMeter::start(Some(gw.pid()));
    let sampler = SlotSampler::start(sim);
    let started = Instant::now();
    let action = gw.post("/v1/actions", &body).await?;
    let submitted = started.elapsed();
    let id = action["id"].as_str().context("action id")?.to_owned();
    // Completion curve: when the 10th, 50th, ... run became terminal (as the long-polls saw it).
    let mut curve: Vec<(usize, f64)> = Vec::new();
    let mut polls = 0u32;
    let action = gw
        .wait_terminal(&id, |a| {
            polls += 1;
            // Over every run, not only the first page the answer carries.
            let by = &a["summary"]["runs_by_status"];
            let done =
                ["succeeded", "partially_succeeded", "failed", "cancelled", "timed_out", "skipped"]
                    .iter()
                    .map(|s| by[*s].as_u64().unwrap_or(0) as usize)
                    .sum();
            if curve.last().is_none_or(|(d, _)| *d != done) {
                curve.push((done, started.elapsed().as_secs_f64()));
            }
        })
        .await?;
    let makespan = started.elapsed();
    let after = sim.counters();
    let cpu = meter.finish();
    let slots = sampler
        .finish(args.slots, after.sessions_created - before.sessions_created, per_sensor(args))
        .await;

    // Every run succeeded with a process list and the whole file.
    let action = common::with_all_runs(&gw.http, &gw.base, &gw.token, action).await?;
    let runs = action["runs"].as_array().context("runs")?;
    let mut ok = 0;
    let mut failures = Vec::new();
    for run in runs {
        let cmds = run["commands"].as_array().context("commands")?;
        let good = run["status"] == "succeeded"
            && cmds[0]["result"]["processes"].as_array().is_some_and(|p| !p.is_empty())
            && cmds[1]["result"]["file"]["size"].as_u64() == Some(args.file_size);
        if good {
            ok += 1;
        } else if failures.len() < 3 {
            failures.push(run.clone());
        }
    }
    ensure!(
        ok == args.sensors,
        "{ok}/{} runs succeeded; e.g. {}",
        args.sensors,
        serde_json::to_string(&failures)?
    );
    let action_bytes = serde_json::to_vec(&action)?.len();
    let ratio = makespan.as_secs_f64() / optimum.as_secs_f64();
    Ok(json!({
        "unit": "one action with all targets",
        "makespan_s": round3(makespan.as_secs_f64()),
        "optimum_s": optimum.as_secs_f64(),
        "ratio": round3(ratio),
        "goal_ratio": 1.15,
        "goal_met": ratio <= 1.15,
        "submit_ms": round3(submitted.as_secs_f64() * 1000.0),
        "runs_succeeded": ok,
        "long_polls": polls,
        "final_action_json_bytes": action_bytes,
        "completion_curve": thin_curve(&curve, args.sensors),
        "gateway_vmhwm_kib": gw.status_kib("VmHWM"),
        "gateway_rss_kib_after": gw.status_kib("VmRSS"),
        "cpu": cpu,
        "slots": slots,
        "sim_requests": after.requests - before.requests,
        "sim_sessions_created": after.sessions_created - before.sessions_created,
        "sim_max_concurrent_sessions": after.max_concurrent_sessions,
        "sim_process_list": after.executed("process list") - before.executed("process list"),
        "sim_get_file": after.executed("get file") - before.executed("get file"),
        "sim_keepalives": after.keepalives - before.keepalives,
    }))
}

/// Samples the simulator's slots in use every 5 ms until dropped.
struct SlotSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
    started: Instant,
}

impl SlotSampler {
    fn start(sim: &Simulator) -> SlotSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sim, flag) = (sim.clone(), std::sync::Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let (mut samples, mut sum) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                sum += sim.counters().slots_in_use as u64;
                samples += 1;
            }
            (samples, sum)
        });
        SlotSampler { stop, task, started: Instant::now() }
    }

    /// Mean slots in use, and slot-seconds held per session (sessions = `sessions`).
    async fn finish(self, slots: usize, sessions: u64, per_sensor_ideal: Duration) -> Value {
        let wall = self.started.elapsed().as_secs_f64();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (samples, sum) = self.task.await.unwrap_or((0, 0));
        let mean = if samples == 0 { 0.0 } else { sum as f64 / samples as f64 };
        json!({
            "mean_slots_in_use": round3(mean),
            "slot_utilization": round3(mean / slots.max(1) as f64),
            "slot_seconds": round3(mean * wall),
            "slot_seconds_per_session": round3(mean * wall / sessions.max(1) as f64),
            "ideal_per_session_s": per_sensor_ideal.as_secs_f64(),
        })
    }
}

/// Keeps the points where 1, 10%, 20%, … 100% of the runs were done.
fn thin_curve(curve: &[(usize, f64)], total: usize) -> Value {
    let mut out = Vec::new();
    let mut next_mark = 1;
    for &(done, at) in curve {
        if done >= next_mark {
            out.push(json!([done, round3(at)]));
            next_mark = (done / (total / 10).max(1) + 1) * (total / 10).max(1);
        }
    }
    Value::Array(out)
}

// ---------------------------------------------------------------------------------------------
// Phase 2: status reads

async fn status_reads(args: &Args, gw: &Gateway, sim_http: SocketAddr) -> anyhow::Result<Value> {
    let id = small_action(gw).await?;
    let url = format!("{}/v1/actions/{id}", gw.base);
    let bytes = gw.http.get(&url).bearer_auth(&gw.token).send().await?.bytes().await?.len();

    let meter = CpuMeter::start(Some(gw.pid()));
    let switches = context_switches(gw.pid());
    let gateway = wrk(args, &url, &format!("Authorization: Bearer {}", gw.token)).await?;
    let cpu = meter.finish();
    let switched = context_switches(gw.pid());
    let requests = gateway["requests"].as_f64().unwrap_or(f64::NAN);
    let per_request = json!({
        "gateway_cpu_us": round3(cpu["gateway_s"].as_f64().unwrap_or(0.0) * 1e6 / requests),
        "voluntary_context_switches": round3((switched.0 - switches.0) as f64 / requests),
        "involuntary_context_switches": round3((switched.1 - switches.1) as f64 / requests),
    });

    // Reference: the simulator's command-status route (in this driver process).
    let (sid, cid) = sim_command(sim_http).await?;
    let sim_url = format!("http://{sim_http}/api/v1/cblr/session/{sid}/command/{cid}");
    let sim_bytes = gw
        .http
        .get(&sim_url)
        .header("X-Auth-Token", DEFAULT_TOKEN)
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let meter = CpuMeter::start(None);
    let reference = wrk(args, &sim_url, &format!("X-Auth-Token: {DEFAULT_TOKEN}")).await?;
    let sim_cpu = meter.finish();
    let rps = gateway["requests_per_s"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "gateway": {
            "url": "/v1/actions/{id} (1 target, process_list + get_file, succeeded)",
            "response_bytes": bytes,
            "wrk": gateway,
            "goal_requests_per_s": 10000,
            "goal_met": rps >= 10000.0,
            "cpu": cpu,
            "per_request": per_request,
            "gateway_vmhwm_kib": gw.status_kib("VmHWM"),
        },
        "simulator_reference": {
            "url": "/api/v1/cblr/session/{sid}/command/{cid} (plain HTTP, X-Auth-Token)",
            "response_bytes": sim_bytes,
            "wrk": reference,
            "cpu": sim_cpu,
        },
    }))
}

/// A finished one-target action with the benchmark's commands: what a caller polls.
async fn small_action(gw: &Gateway) -> anyhow::Result<String> {
    let action = gw
        .post(
            "/v1/actions",
            &json!({
                "targets": [{"backend": "cb", "device_id": "1"}],
                "commands": [{"type": "process_list"}, {"type": "get_file", "path": BIG_FILE}],
            }),
        )
        .await?;
    let id = action["id"].as_str().context("action id")?.to_owned();
    let action = gw.wait_terminal(&id, |_| {}).await?;
    ensure!(action["status"] == "succeeded", "status-read action: {action}");
    Ok(id)
}

/// A completed `process list` command on a fresh session of sensor 1, over plain HTTP.
async fn sim_command(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let base = format!("http://{addr}/api/v1/cblr");
    let call = |req: reqwest::RequestBuilder| async move {
        let r = req.header("X-Auth-Token", DEFAULT_TOKEN).send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        ensure!(status.is_success(), "{status} {body}");
        anyhow::Ok(body)
    };
    let session = call(http.post(format!("{base}/session")).json(&json!({"sensor_id": 1}))).await?;
    let sid = session["id"].as_u64().context("session id")?;
    call(http.get(format!("{base}/session/{sid}?wait=true"))).await?;
    let cmd = call(
        http.post(format!("{base}/session/{sid}/command"))
            .json(&json!({"session_id": sid, "name": "process list"})),
    )
    .await?;
    let cid = cmd["id"].as_u64().context("command id")?;
    let done = call(http.get(format!("{base}/session/{sid}/command/{cid}?wait=true"))).await?;
    ensure!(done["status"] == "complete", "reference command: {done}");
    Ok((sid, cid))
}

/// Runs wrk (off the runtime's workers, which may be serving the simulator) and parses its
/// summary.
async fn wrk(args: &Args, url: &str, header: &str) -> anyhow::Result<Value> {
    wrk_expecting(args, url, header, true).await
}

async fn wrk_expecting(args: &Args, url: &str, header: &str, ok: bool) -> anyhow::Result<Value> {
    let mut cmd = Process::new("wrk");
    cmd.arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.wrk_connections))
        .arg(format!("-d{}s", args.wrk_seconds))
        .arg("--latency")
        .arg("-H")
        .arg(header)
        .arg(url);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await?.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut parsed = json!({
        "command": format!(
            "wrk -t{} -c{} -d{}s --latency -H '{}' {url}",
            args.wrk_threads,
            args.wrk_connections,
            args.wrk_seconds,
            header.split(' ').next().unwrap_or_default()
        ),
        "non_2xx": 0, "socket_errors": Value::Null,
    });
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => parsed["requests_per_s"] = json!(v.parse::<f64>().ok()),
            ["Latency", avg, stdev, max, _] => {
                parsed["latency_avg"] = json!(avg);
                parsed["latency_stdev"] = json!(stdev);
                parsed["latency_max"] = json!(max);
            }
            [p @ ("50%" | "75%" | "90%" | "99%"), v] => parsed[format!("p{}", &p[..2])] = json!(v),
            [n, "requests", "in", ..] => parsed["requests"] = json!(n.parse::<u64>().ok()),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                parsed["non_2xx"] = json!(n.parse::<u64>().ok());
            }
            ["Socket", "errors:", rest @ ..] => parsed["socket_errors"] = json!(rest.join(" ")),
            _ => {}
        }
    }
    ensure!(!ok || parsed["non_2xx"] == 0, "wrk saw errors:\n{text}");
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// Breakdown of a status read

/// Throughput of `op` with `tasks` concurrent tasks for `secs` on this runtime, and the mean
/// latency of one op when run alone.
async fn probe<F, Fut>(secs: f64, tasks: usize, op: F) -> anyhow::Result<Value>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = std::sync::Arc::new(op);
    // Alone: mean of 2000 sequential calls (after 200 warm-up calls).
    for i in 0..200 {
        op(i).await?;
    }
    let n = 2000u64;
    let t = Instant::now();
    for i in 0..n {
        op(1_000_000 + i).await?;
    }
    let alone_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    // Loaded: `tasks` tasks in a loop.
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for k in 0..tasks {
        let op = std::sync::Arc::clone(&op);
        handles.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                op(10_000_000 * (k as u64 + 1) + done).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(json!({"alone_us": round3(alone_us), "per_s_with_64_tasks": (total as f64 / secs).round()}))
}

async fn breakdown(db: &Path, action_id: &str) -> anyhow::Result<Value> {
    use edrgate::store::Store;
    use std::sync::Arc;
    let id: uuid::Uuid = action_id.parse()?;
    let store = Arc::new(Store::open(db).await?);
    let pool = Arc::new(
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
            .await?,
    );
    let (action, _) = store.action(TENANT, id).await?.context("action not found")?;
    let commands_json: String =
        sqlx::query_scalar("SELECT commands_json FROM runs WHERE action_id = ?1")
            .bind(action_id)
            .fetch_one(&*pool)
            .await?;
    let secs = 4.0;
    let mut out = json!({});

    let p = Arc::clone(&pool);
    out["sqlx_select_1"] = probe(secs, 64, move |_| {
        let p = Arc::clone(&p);
        async move {
            sqlx::query("SELECT 1").execute(&*p).await?;
            Ok(())
        }
    })
    .await?;
    let p = Arc::clone(&pool);
    let aid = Arc::new(action_id.to_owned());
    let a2 = Arc::clone(&aid);
    out["sqlx_query1_actions_row"] = probe(secs, 64, move |_| {
        let (p, a) = (Arc::clone(&p), Arc::clone(&a2));
        async move {
            sqlx::query("SELECT * FROM actions WHERE id = ?1 AND tenant = ?2")
                .bind(&*a)
                .bind(TENANT)
                .fetch_optional(&*p)
                .await?
                .context("missing")?;
            Ok(())
        }
    })
    .await?;
    let p = Arc::clone(&pool);
    let a2 = Arc::clone(&aid);
    out["sqlx_query2_runs_rows"] = probe(secs, 64, move |_| {
        let (p, a) = (Arc::clone(&p), Arc::clone(&a2));
        async move {
            let rows = sqlx::query("SELECT * FROM runs WHERE action_id = ?1 ORDER BY position")
                .bind(&*a)
                .fetch_all(&*p)
                .await?;
            ensure!(rows.len() == 1);
            Ok(())
        }
    })
    .await?;
    let st = Arc::clone(&store);
    out["store_action_version (1 query)"] = probe(secs, 64, move |_| {
        let st = Arc::clone(&st);
        async move {
            st.action_version(TENANT, id).await?.context("missing")?;
            Ok(())
        }
    })
    .await?;
    let st = Arc::clone(&store);
    out["store_action (2 queries + JSON decode)"] = probe(secs, 64, move |_| {
        let st = Arc::clone(&st);
        async move {
            st.action(TENANT, id).await?.context("missing")?;
            Ok(())
        }
    })
    .await?;
    let cj = Arc::new(commands_json);
    out["decode_commands_json"] = probe(secs, 64, move |_| {
        let cj = Arc::clone(&cj);
        async move {
            let _: Vec<edrgate_adapter::CommandState> = serde_json::from_str(&cj)?;
            Ok(())
        }
    })
    .await?;
    let a = Arc::new(action);
    out["encode_action_json"] = probe(secs, 64, move |_| {
        let a = Arc::clone(&a);
        async move {
            std::hint::black_box(serde_json::to_vec(&*a)?);
            Ok(())
        }
    })
    .await?;

    let auth_config: edrgate::config::AuthConfig =
        toml::from_str(&format!("allow_hs256 = true\nhs256_secret = \"{SECRET}\""))?;
    let auth = Arc::new(edrgate::auth::Auth::new(&auth_config)?);
    let token = Arc::new(edrgate::auth::mint(
        SECRET.as_bytes(),
        TENANT,
        "bench",
        Duration::from_secs(3600),
    )?);
    let (au, tk) = (Arc::clone(&auth), Arc::clone(&token));
    out["auth_cached_token"] = probe(secs, 64, move |_| {
        let (au, tk) = (Arc::clone(&au), Arc::clone(&tk));
        async move {
            au.authenticate(&tk).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        }
    })
    .await?;
    // Every call a token never seen: signature check, claims, cache insert. (Minting inside
    // the op adds its own HMAC; `mint_alone_us` below is that part.)
    let au = Arc::clone(&auth);
    out["auth_new_token_incl_mint"] = probe(secs, 64, move |i| {
        let au = Arc::clone(&au);
        async move {
            let token = edrgate::auth::mint(
                SECRET.as_bytes(),
                TENANT,
                &format!("s{i}"),
                Duration::from_secs(3600),
            )?;
            au.authenticate(&token).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        }
    })
    .await?;
    out["mint_only"] = probe(secs, 64, move |i| async move {
        std::hint::black_box(edrgate::auth::mint(
            SECRET.as_bytes(),
            TENANT,
            &format!("s{i}"),
            Duration::from_secs(3600),
        )?);
        Ok(())
    })
    .await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Phase 3: the same fan-out with cbapi

async fn fanout_cbapi(args: &Args, optimum: Duration) -> anyhow::Result<Value> {
    // A fresh simulator: cbapi leaves its last idle sessions open (they hold slots).
    let sim = Simulator::new(sim_config(args));
    let addr = sim.spawn_tls().await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bench/cbapi_fanout.py");
    let before = sim.counters();
    let meter = CpuMeter::start(None);
    let sampler = SlotSampler::start(&sim);
    let mut cmd = Process::new(&args.python);
    cmd.arg(&script)
        .args(["--url", &format!("https://127.0.0.1:{}", addr.port())])
        .args(["--token", DEFAULT_TOKEN])
        .args(["--sensors", &args.sensors.to_string()]);
    let what = format!("{} {}", args.python, script.display());
    // The simulator runs on this runtime's workers; the wait must not block one of them.
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("starting {what}"))?;
    let status = output.status;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let after = sim.counters();
    let cpu = meter.finish();
    let slots = sampler
        .finish(args.slots, after.sessions_created - before.sessions_created, per_sensor(args))
        .await;
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        bail!("cbapi_fanout.py printed no result ({status}); stderr:\n{}", tail(&stderr, 40));
    };
    let mut result: Value = serde_json::from_str(line)?;
    if let Some(error) = result.get("error") {
        bail!("cbapi_fanout.py: {error}");
    }
    let makespan = result["makespan_s"].as_f64().unwrap_or(f64::NAN);
    if let Some(o) = result.as_object_mut() {
        o.remove("done_at_s");
    }
    result["exit_status"] = json!(status.code());
    result["ratio"] = json!(round3(makespan / optimum.as_secs_f64()));
    result["optimum_s"] = json!(optimum.as_secs_f64());
    result["sim_requests"] = json!(after.requests - before.requests);
    result["sim_sessions_created"] = json!(after.sessions_created - before.sessions_created);
    result["sim_max_concurrent_sessions"] = json!(after.max_concurrent_sessions);
    result["sim_process_list"] = json!(after.executed("process list"));
    result["sim_get_file"] = json!(after.executed("get file"));
    result["cpu"] = cpu;
    result["slots"] = slots;
    if !stderr.trim().is_empty() {
        result["stderr_tail"] = json!(tail(&stderr, 10));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU accounting of a phase, in CPU-seconds: the whole machine (`/proc/stat`), the gateway,
/// this driver (which hosts the simulator) with its finished children (wrk, python), and
/// `other`: everything else on the machine, which should be ~0 for a clean measurement (the
/// machine may be shared with builds). `steal` is time the hypervisor gave to other guests.
struct CpuMeter {
    at: Instant,
    machine: (f64, f64),
    gateway: f64,
    own: f64,
    gateway_pid: Option<u32>,
}

impl CpuMeter {
    fn start(gateway_pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            at: Instant::now(),
            machine: machine_cpu().unwrap_or_default(),
            gateway: gateway_pid.and_then(proc_cpu_seconds).unwrap_or(0.0),
            own: own_cpu_seconds().unwrap_or(0.0),
            gateway_pid,
        }
    }

    fn finish(&self) -> Value {
        let wall = self.at.elapsed().as_secs_f64();
        let (busy, steal) = machine_cpu().unwrap_or_default();
        let (busy, steal) = (busy - self.machine.0, steal - self.machine.1);
        let gateway = self.gateway_pid.and_then(proc_cpu_seconds).unwrap_or(0.0) - self.gateway;
        let own = own_cpu_seconds().unwrap_or(0.0) - self.own;
        json!({
            "wall_s": round3(wall),
            "machine_busy_s": round3(busy),
            "gateway_s": round3(gateway),
            "driver_simulator_and_children_s": round3(own),
            "other_s": round3((busy - gateway - own).max(0.0)),
            "steal_s": round3(steal),
        })
    }
}

/// Waits (up to `max_secs`) for 5 s with under 10% of one core busy; returns the last sample's
/// busy fraction of one core.
async fn wait_quiet(max_secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    loop {
        let (b0, _) = machine_cpu().unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (b1, _) = machine_cpu().unwrap_or_default();
        let busy = (b1 - b0) / 5.0;
        if busy < 0.10 || Instant::now() >= deadline {
            return busy;
        }
    }
}

/// Busy and steal CPU-seconds of the whole machine since boot.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    let hz = clock_ticks();
    Some((busy as f64 / hz, *v.get(7)? as f64 / hz))
}

/// Context switches (voluntary, involuntary) of every thread of `pid` so far. Threads that
/// ended are not counted; the gateway's threads live as long as it does.
fn context_switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    let mut total = (0, 0);
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in text.lines() {
            let value = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok());
            if line.starts_with("voluntary_ctxt_switches:") {
                total.0 += value(line).unwrap_or(0);
            } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                total.1 += value(line).unwrap_or(0);
            }
        }
    }
    total
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn shell(cmd: &str) -> String {
    Process::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Default)]
struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, s: String) {
        println!("{s}");
        let _ = writeln!(self.text, "{s}");
    }

    fn section(&mut self, title: &str, value: &Value) {
        let body = serde_json::to_string_pretty(value).unwrap_or_default();
        println!("== {title}\n{body}");
        let _ = writeln!(self.text, "== {title}\n{body}");
    }
}
