//! Benchmark (not a test): the fan-out of `benches/fanout.rs` on a Defender backend, against
//! the rate-limit-bound optimum.
//!
//! ```text
//! cargo bench --bench fanout_defender                 # defaults below
//! cargo bench --bench fanout_defender -- --help       # knobs
//! ```
//!
//! One action with `--machines` targets × (`process_list`, `get_file` `C:\evidence\big.bin`)
//! goes through the gateway (in this process, over loopback HTTP) to the Defender simulator
//! (HTTPS). Each target is one machine action (RunScript then GetFile keep Defender's order),
//! so the makespan is bound by the `runliveresponse` budget: call k cannot be made before
//! `floor(k / calls) × window`, and the last action still takes its own time on the device:
//!
//! `optimum = max(floor((machines - 1) / calls) × window, ceil(machines / sessions) × action)
//!  + action`, with `action = pickup + 2 × latency`.
//!
//! The real budget (10 per minute) is scaled with `--window-ms`, and the other endpoints'
//! budgets (100 per minute, 1500 per hour) with it; the report gives the makespan,
//! its ratio to the optimum, the steady call rate while runs were queued against the budget,
//! the 429s the simulator sent and its peak of live sessions.

use edrgate_simkit::Sim as _;
use std::time::{Duration, Instant};

use clap::Parser;
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, SimConfig, Simulator, machine_id,
};
use serde_json::{Value, json};

mod common;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

#[derive(Debug, Parser)]
#[command(about = "edrgate fan-out on a Defender backend against the rate-bound optimum")]
struct Args {
    /// Simulated machines, one target each.
    #[arg(long, default_value_t = 100)]
    machines: usize,
    /// `runliveresponse` calls per window (Defender: 10).
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// The window, ms (Defender: 60000; scaled down so a run takes seconds).
    #[arg(long, default_value_t = 3000)]
    window_ms: u64,
    /// Concurrent live-response sessions (Defender: 25).
    #[arg(long, default_value_t = 25)]
    sessions: usize,
    /// Time from creation to `InProgress` in the simulator, ms.
    #[arg(long, default_value_t = 500)]
    pickup_ms: u64,
    /// Time of every live-response command, ms.
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// Size of `C:\evidence\big.bin`, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    file_size: u64,
    /// First poll delay of the adapter, ms (its max is ten times this).
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Time is scaled by the window: the other endpoints' budgets (100/min, 1500/h) with it, or
    // the result links (100/min) would bind instead of runliveresponse.
    let scale = 60_000.0 / args.window_ms as f64;
    let api_per_minute = (100.0 * scale).round() as usize;
    let api_per_hour = (1500.0 * scale).round() as usize;
    let sim = Simulator::new(SimConfig {
        machines: args.machines,
        live_response_calls: args.calls,
        live_response_window: Duration::from_millis(args.window_ms),
        session_cap: args.sessions,
        pickup_delay: Duration::from_millis(args.pickup_ms),
        command_latency: Duration::from_millis(args.latency_ms),
        file_size: args.file_size,
        api_calls_per_minute: api_per_minute,
        ..SimConfig::default()
    });
    let addr = sim.spawn_tls().await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.cert_pem()?)?;
    let base_url = format!("https://localhost:{}", addr.port());
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
        [tenants.bench.backends.mde]
        kind = "defender"
        api_url = "{base_url}"
        token_url = "{base_url}/{DEFAULT_TENANT}/oauth2/v2.0/token"
        tenant_id = "{DEFAULT_TENANT}"
        client_id = "{DEFAULT_CLIENT_ID}"
        client_secret = "{DEFAULT_CLIENT_SECRET}"
        ca_file = "{ca}"
        token_tls = {{ ca_file = "{ca}" }}
        download_tls = {{ ca_file = "{ca}" }}
        live_response_calls = {calls}
        live_response_window_ms = {window}
        concurrent_sessions = {sessions}
        poll_interval_ms = {poll}
        max_poll_interval_ms = {max_poll}
        api_calls_per_minute = {api_per_minute}
        api_calls_per_hour = {api_per_hour}
        "#,
        ca = ca.display(),
        calls = args.calls,
        window = args.window_ms,
        sessions = args.sessions,
        poll = args.poll_ms,
        max_poll = args.poll_ms * 10,
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

    let targets: Vec<Value> = (1..=args.machines)
        .map(|n| json!({"backend": "mde", "device_id": machine_id(n)}))
        .collect();
    let body = json!({
        "targets": targets,
        "commands": [{"type": "process_list"}, {"type": "get_file", "path": r"C:\evidence\big.bin"}],
    });
    let started = Instant::now();
    let action: Value = http
        .post(format!("{gateway}/v1/actions"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = action["id"].as_str().ok_or_else(|| anyhow::anyhow!("no action id: {action}"))?;
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
    // A ratio over failed work means nothing: every run must have succeeded.
    let done = common::with_all_runs(&http, &gateway, &token, done).await?;
    let failed: Vec<String> = done["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] != "succeeded")
        .map(|r| {
            let errors: Vec<String> = r["commands"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("error").filter(|e| !e.is_null()))
                .map(Value::to_string)
                .collect();
            format!("{} {}: {}", r["device_id"], r["status"], errors.join("; "))
        })
        .collect();
    if done["status"] != "succeeded" || !failed.is_empty() {
        app.engine.kill();
        anyhow::bail!(
            "the action ended {} with {} runs not succeeded:\n  {}",
            done["status"],
            failed.len(),
            failed.join("\n  ")
        );
    }

    let window = Duration::from_millis(args.window_ms);
    let per_action = Duration::from_millis(args.pickup_ms + 2 * args.latency_ms);
    let rate_bound = window * u32::try_from((args.machines - 1) / args.calls)?;
    let session_bound = per_action * u32::try_from(args.machines.div_ceil(args.sessions))?;
    let optimum = rate_bound.max(session_bound) + per_action;
    let c = sim.counters();
    let arrivals = sim.live_response_arrivals();
    let steady = match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) if arrivals.len() > args.calls && last > first => {
            (arrivals.len() - args.calls) as f64 / (*last - *first).as_secs_f64()
        }
        _ => f64::NAN,
    };
    let budget = args.calls as f64 / window.as_secs_f64();
    println!(
        "fan-out on Defender: {} machines × (process_list + get_file {} bytes)\n  \
         status {}\n  makespan {:.2} s, rate-bound optimum {:.2} s: {:.3}×\n  \
         runliveresponse: {} calls, steady {:.2}/s against a budget of {:.2}/s ({:.0}%)\n  \
         simulator: {} × 429, peak live sessions {} (cap {}), {} machine-action polls, {} downloads",
        args.machines,
        args.file_size,
        done["status"],
        makespan.as_secs_f64(),
        optimum.as_secs_f64(),
        makespan.as_secs_f64() / optimum.as_secs_f64(),
        c.live_response_actions,
        steady,
        budget,
        100.0 * steady / budget,
        c.responses_429,
        c.max_concurrent_sessions,
        args.sessions,
        c.action_list_calls,
        c.downloads,
    );
    app.engine.kill();
    Ok(())
}
