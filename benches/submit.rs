//! Submission latency with work in flight (issue 14, point 3): `POST /v1/actions` with 1,000
//! targets while 10,000 runs of earlier actions are in flight, against the same submission on
//! an idle gateway, in the same run.
//!
//! The gateway runs in process (release build) on SQLite, in front of a Carbon Black simulator
//! with 1,000 sensors whose sessions never check in, so every run stays in flight (queued or
//! waiting for its session) for the whole measurement. Each submission is one HTTP request;
//! its latency is the time to the `202` (the action and its 1,000 runs are stored by then).
//! The benchmark fails when a submission is not a `202` with 1,000 runs in its summary, or when
//! fewer than 10,000 runs are unfinished while the loaded phase is measured.
//!
//! ```sh
//! CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench submit
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use edrgate_simkit::Sim as _;
use serde_json::{Value, json};

const SECRET: &str = "edrgate-bench-secret-at-least-32-bytes!!";
const TARGETS: usize = 1000;
const IN_FLIGHT_ACTIONS: usize = 10;
const SAMPLES: usize = 15;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let sim = Simulator::new(SimConfig {
        sensors: TARGETS,
        // Sessions never check in: every run stays in flight.
        checkin_delay: Duration::from_secs(24 * 3600),
        ..SimConfig::default()
    });
    let sim = sim.spawn().await.context("simulator")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edrgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[store]
path = "{db}"
[files]
dir = "{files}"
[auth]
allow_hs256 = true
hs256_secret = "{SECRET}"
[tenants.acme.backends.cb]
kind = "carbonblack"
url = "http://{sim}"
token = "{DEFAULT_TOKEN}"
"#,
            db = dir.path().join("edrgate.db").display(),
            files = dir.path().join("files").display(),
        ),
    )?;
    let config = edrgate::config::Config::load(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let app = edrgate::app::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let engine = std::sync::Arc::clone(&app.engine);
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let server = tokio::spawn(edrgate::app::serve(listener, app, signal));
    let token = edrgate::auth::mint(SECRET.as_bytes(), "acme", "bench", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;

    // Every submission targets the same 1,000 sensors (a target is unique within an action,
    // not across actions), so runs pile up on them.
    let targets: Vec<Value> =
        (1..=TARGETS).map(|i| json!({"backend": "cb", "device_id": i.to_string()})).collect();
    let body = json!({"targets": targets, "commands": [{"type": "process_list"}]});
    let submit = async || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let answer =
            http.post(format!("{base}/v1/actions")).bearer_auth(&token).json(&body).send().await?;
        let status = answer.status();
        let action: Value = answer.json().await?;
        let took = started.elapsed();
        ensure!(status == 202, "submission answered {status}: {action}");
        ensure!(action["summary"]["runs"] == TARGETS, "{}", action["summary"]);
        Ok(took)
    };
    let unfinished = async || -> anyhow::Result<i64> {
        let counts = engine.store().unfinished_run_counts().await?;
        Ok(counts.iter().map(|(_, n)| n).sum())
    };

    // The alternative: the same submission with (almost) nothing in flight, 0 to 2,000 runs.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(submit().await?);
    }
    // Loaded: at least 10,000 runs in flight first, then every sample on top of them.
    while unfinished().await? < (IN_FLIGHT_ACTIONS * TARGETS) as i64 {
        submit().await?;
    }
    let before = unfinished().await?;
    let mut loaded = Vec::new();
    for _ in 0..SAMPLES {
        let in_flight = unfinished().await?;
        ensure!(
            in_flight >= (IN_FLIGHT_ACTIONS * TARGETS) as i64,
            "only {in_flight} runs in flight"
        );
        loaded.push(submit().await?);
    }
    let in_flight = unfinished().await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;

    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        json!({"n": v.len(), "p50_ms": ms(v[v.len() / 2]), "max_ms": ms(*v.last().unwrap())})
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu},
            "commit": commit,
            "targets_per_submission": TARGETS,
            "idle": stats(&mut idle),
            "runs_in_flight_before_loaded": before,
            "loaded": stats(&mut loaded),
            "runs_in_flight_at_end": in_flight,
        }))?
    );
    Ok(())
}
