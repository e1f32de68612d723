//! Benchmark (not a test): throughput and latency of submits and status reads with one and with
//! two gateway replicas on PostgreSQL, against one on SQLite. Results: `deploy/BENCHMARKS.md`,
//! "Replicas on PostgreSQL".
//!
//! ```text
//! eval "$(.ci/postgres start /tmp/edrgate-bench-pg)"   # or any server: EDRGATE_TEST_POSTGRES_URL
//! cargo bench --bench replicas                          # -- --help for the knobs
//! .ci/postgres stop /tmp/edrgate-bench-pg
//! ```
//!
//! Each setup gets a fresh database and its gateways as separate processes (the release
//! `edrgate serve` binary), all in front of one Carbon Black simulator hosted here, so the runs
//! the submits create are driven for real while the load runs. `--concurrency` clients, for
//! `--seconds` each phase, spread their requests round-robin over the setup's replicas:
//!
//! 1. **submit**: `POST /v1/actions`, one target (sensors in turn) × `process_list`;
//! 2. **status read**: `GET /v1/actions/{id}` of finished actions (ids in turn).
//!
//! Reported per phase: requests per second, latency p50 / p90 / p99 / max, and errors.

use edrgate_simkit::Sim as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use serde_json::{Value, json};

mod common;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const TENANT: &str = "bench";

#[derive(Debug, Parser)]
#[command(about = "edrgate replicas benchmark: submit and status-read throughput and latency")]
struct Args {
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Simulated sensors (submits target them in turn).
    #[arg(long, default_value_t = 500)]
    sensors: usize,
    /// The PostgreSQL server (a database per setup is created on it).
    #[arg(long, env = "EDRGATE_TEST_POSTGRES_URL")]
    postgres: Option<String>,
    /// The gateway binary (release build of this workspace by default).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_edrgate"))]
    gateway: PathBuf,
    /// Only these setups (sqlite-1, postgres-1, postgres-2); default all.
    #[arg(long)]
    only: Vec<String>,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sim = Simulator::new(SimConfig {
        sensors: args.sensors,
        slot_limit: 50,
        checkin_delay: Duration::from_millis(10),
        command_latency: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let sim_url = format!("http://{}", sim.spawn().await?);
    let mut report = Vec::new();
    for (setup, replicas) in [("sqlite-1", 1), ("postgres-1", 1), ("postgres-2", 2)] {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == setup) {
            continue;
        }
        let store = if setup.starts_with("sqlite") {
            None
        } else {
            match &args.postgres {
                Some(base) => Some(common::fresh_postgres_database(base).await?),
                None => {
                    eprintln!("skipping {setup}: no --postgres / EDRGATE_TEST_POSTGRES_URL");
                    continue;
                }
            }
        };
        let dir = tempfile::tempdir()?;
        let mut gateways = Vec::new();
        for i in 0..replicas {
            gateways.push(Gateway::start(&args, dir.path(), i, store.as_deref(), &sim_url).await?);
        }
        let bases: Vec<String> = gateways.iter().map(|g| g.base.clone()).collect();
        eprintln!("== {setup}: submit");
        let (submit, ids) = load(&args, &bases, Phase::Submit).await?;
        // Let the submitted runs finish before reading: status reads of settled actions.
        wait_settled(&bases[0], &ids).await?;
        eprintln!("== {setup}: status read");
        let (read, _) = load(&args, &bases, Phase::Read(Arc::new(ids))).await?;
        let row =
            json!({"setup": setup, "replicas": replicas, "submit": submit, "status_read": read});
        println!("{row}");
        report.push(row);
        drop(gateways);
    }
    println!(
        "\n| setup | replicas | submit req/s | submit p50 / p99 ms | read req/s | read p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &report {
        println!(
            "| {} | {} | {:.0} | {:.1} / {:.1} | {:.0} | {:.1} / {:.1} |",
            r["setup"].as_str().unwrap_or_default(),
            r["replicas"],
            r["submit"]["rps"].as_f64().unwrap_or_default(),
            r["submit"]["p50_ms"].as_f64().unwrap_or_default(),
            r["submit"]["p99_ms"].as_f64().unwrap_or_default(),
            r["status_read"]["rps"].as_f64().unwrap_or_default(),
            r["status_read"]["p50_ms"].as_f64().unwrap_or_default(),
            r["status_read"]["p99_ms"].as_f64().unwrap_or_default(),
        );
    }
    Ok(())
}

struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    async fn start(
        args: &Args,
        dir: &Path,
        index: usize,
        postgres: Option<&str>,
        sim_url: &str,
    ) -> anyhow::Result<Gateway> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.display();
        let store = match postgres {
            Some(url) => format!("url = \"{url}\""),
            None => format!("path = \"{d}/edrgate.db\""),
        };
        let config = dir.join(format!("gateway-{index}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
                [server]
                listen = "127.0.0.1:{port}"
                [store]
                {store}
                [files]
                dir = "{d}/files"
                [auth]
                allow_hs256 = true
                hs256_secret = "{SECRET}"
                [tenants.{TENANT}.backends.cb]
                kind = "carbonblack"
                url = "{sim_url}"
                token = "{DEFAULT_TOKEN}"
                slot_limit = 50
                poll_interval_ms = 20
                "#
            ),
        )?;
        let child = Process::new(&args.gateway)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("gateway-{index}.log")))?)
            .spawn()
            .context("starting the gateway")?;
        let gateway = Gateway { child, base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::builder().build()?;
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{}/readyz", gateway.base)).send().await
                && r.status().is_success()
            {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("gateway {index} did not become ready (see {})", dir.display())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
enum Phase {
    Submit,
    /// Read these actions in turn.
    Read(Arc<Vec<String>>),
}

/// `--concurrency` clients for `--seconds`; the phase's numbers and, for submits, the new ids.
async fn load(args: &Args, bases: &[String], phase: Phase) -> anyhow::Result<(Value, Vec<String>)> {
    let token = edrgate::auth::mint(SECRET.as_bytes(), TENANT, "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (http, token, next, phase) =
            (http.clone(), token.clone(), Arc::clone(&next), phase.clone());
        let bases = bases.to_vec();
        let sensors = args.sensors;
        clients.push(tokio::spawn(async move {
            let (mut latencies, mut ids, mut errors) = (Vec::new(), Vec::new(), 0u64);
            while Instant::now() < until {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let base = &bases[n % bases.len()];
                let t = Instant::now();
                let ok = match &phase {
                    Phase::Submit => {
                        let body = json!({
                            "targets": [{"backend": "cb", "device_id": (n % sensors + 1).to_string()}],
                            "commands": [{"type": "process_list"}]
                        });
                        let r = http
                            .post(format!("{base}/v1/actions"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().as_u16() == 202 => {
                                let v: Value = r.json().await.unwrap_or_default();
                                ids.extend(v["id"].as_str().map(str::to_owned));
                                true
                            }
                            _ => false,
                        }
                    }
                    Phase::Read(all) => {
                        let id = &all[n % all.len()];
                        let r = http
                            .get(format!("{base}/v1/actions/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                            _ => false,
                        }
                    }
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, ids, errors)
        }));
    }
    let (mut latencies, mut ids, mut errors) = (Vec::new(), Vec::new(), 0);
    for c in clients {
        let (l, i, e) = c.await?;
        latencies.extend(l);
        ids.extend(i);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        round1(latencies[i].as_secs_f64() * 1000.0)
    };
    let numbers = json!({
        "requests": latencies.len(),
        "errors": errors,
        "rps": round1(latencies.len() as f64 / elapsed),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    });
    eprintln!("{numbers}");
    Ok((numbers, ids))
}

/// Waits until every action in `ids` is terminal (at most a few minutes).
async fn wait_settled(base: &str, ids: &[String]) -> anyhow::Result<()> {
    let token = edrgate::auth::mint(SECRET.as_bytes(), TENANT, "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder().build()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for id in ids.iter().rev() {
        loop {
            let a: Value = http
                .get(format!("{base}/v1/actions/{id}?wait=10"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap_or("")) {
                break;
            }
            if Instant::now() > deadline {
                bail!("action {id} did not finish");
            }
        }
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
