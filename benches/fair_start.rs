//! Fair scheduling at scale (issue 14, point 4): while tenant `hunt` fans 10,000 Carbon Black
//! sensors out (10 actions × 1,000 targets, `process_list`, 100 session slots, so ~9,900 runs
//! wait for a slot at any time), tenant `soc` sends single `isolate`s to a Cybereason console.
//! Each isolate's time from `POST` to its terminal status is measured under that load and, the
//! alternative in the same run, on the same gateway before the fan-out starts; the difference
//! is compared with one vendor round trip (a direct isolate request to the simulator, timed).
//! While the fan-out waits, the process's live tokio tasks and RSS are sampled against the
//! runs in flight: a run waiting for a vendor slot should cost no task.
//!
//! The gateway runs in process (release build) on SQLite, with both simulators.
//!
//! ```sh
//! CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench fair_start
//! ```
//!
//! It fails unless every isolate succeeds (and the console shows the machine isolated), and
//! unless at least 9,000 of the fan-out's runs are unfinished while each loaded sample runs.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use edrgate_carbonblack_sim as cb;
use edrgate_cybereason_sim as cr;
use edrgate_simkit::Sim as _;
use serde_json::{Value, json};

const SECRET: &str = "edrgate-bench-secret-at-least-32-bytes!!";
const SENSORS: usize = 10_000;
const PER_ACTION: usize = 1_000;
const SLOTS: usize = 100;
const SAMPLES: usize = 10;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cb_sim = cb::Simulator::new(cb::SimConfig {
        sensors: SENSORS,
        slot_limit: SLOTS,
        checkin_delay: Duration::from_secs(1),
        command_latency: Duration::from_millis(200),
        ..cb::SimConfig::default()
    });
    let cb_addr = cb_sim.spawn().await.context("Carbon Black simulator")?;
    let cr_sim = cr::Simulator::new(cr::SimConfig {
        machines: SAMPLES * 2 + 1,
        remediation_delay: Duration::from_millis(100),
        ..cr::SimConfig::default()
    });
    let cr_addr = cr_sim.spawn().await.context("Cybereason simulator")?;
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
[tenants.hunt.backends.cb]
kind = "carbonblack"
url = "http://{cb_addr}"
token = "{cb_token}"
slot_limit = {SLOTS}
[tenants.soc.backends.cr]
kind = "cybereason"
url = "http://{cr_addr}"
username = "{user}"
password = "{password}"
totp_secret = "{totp}"
fetch_zip_password = "{zip}"
ir_run_path = "/rest/sensors/action/runIRTool"
poll_interval_ms = 20
max_poll_interval_ms = 200
"#,
            db = dir.path().join("edrgate.db").display(),
            files = dir.path().join("files").display(),
            cb_token = cb::DEFAULT_TOKEN,
            user = cr::DEFAULT_TFA_USERNAME,
            password = cr::DEFAULT_PASSWORD,
            totp = cr::DEFAULT_TOTP_SECRET,
            zip = cr::DEFAULT_ZIP_PASSWORD,
        ),
    )?;
    let config = edrgate::config::Config::load(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let app = edrgate::app::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let engine = std::sync::Arc::clone(&app.engine);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(edrgate::app::serve(listener, app, stop.clone().cancelled_owned()));
    let mint = |tenant: &str| {
        edrgate::auth::mint(SECRET.as_bytes(), tenant, "bench", Duration::from_secs(3600))
    };
    let (hunt, soc) = (mint("hunt")?, mint("soc")?);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;

    // One isolate of machine `n`, from its POST to its terminal status (long-polled).
    let isolate = async |n: usize| -> anyhow::Result<Duration> {
        let body = json!({
            "targets": [{"hostname": format!("CR-WS-{n:04}")}],
            "commands": [{"type": "isolate"}],
        });
        let started = Instant::now();
        let answer =
            http.post(format!("{base}/v1/actions")).bearer_auth(&soc).json(&body).send().await?;
        ensure!(answer.status() == 202, "isolate answered {}", answer.status());
        let action: Value = answer.json().await?;
        let id = action["id"].as_str().context("action id")?.to_owned();
        loop {
            let url = format!("{base}/v1/actions/{id}?wait=30");
            let action: Value = http.get(url).bearer_auth(&soc).send().await?.json().await?;
            match action["status"].as_str() {
                Some("queued" | "dispatched" | "running") => continue,
                Some("succeeded") => return Ok(started.elapsed()),
                other => anyhow::bail!("isolate of CR-WS-{n:04} ended {other:?}: {action}"),
            }
        }
    };
    let unfinished = async || -> anyhow::Result<i64> {
        let counts = engine.store().unfinished_run_counts().await?;
        Ok(counts.iter().map(|(_, n)| n).sum())
    };
    // One vendor round trip: an isolate request straight to the console (after a login), on
    // a machine the samples leave alone.
    let round_trip = {
        let spare = format!("CR-WS-{:04}", SAMPLES * 2 + 1);
        let pylum = cr_sim.pylum_id(&spare).context("the spare machine's pylum id")?;
        let plain =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        let login = plain
            .post(format!("http://{cr_addr}/login.html"))
            .form(&[("username", cr::DEFAULT_USERNAME), ("password", cr::DEFAULT_PASSWORD)])
            .send()
            .await?;
        let cookie = login
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("JSESSIONID="))
            .and_then(|c| c.split(';').next())
            .context("no session cookie from the console's login")?
            .to_owned();
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let answer = plain
                .post(format!("http://{cr_addr}/rest/monitor/global/commands/isolate"))
                .header(reqwest::header::COOKIE, &cookie)
                .json(&json!({"pylumIds": [pylum], "malopId": null}))
                .send()
                .await?;
            times.push(started.elapsed());
            ensure!(answer.status() == 200, "the console's isolate answered {}", answer.status());
        }
        times.sort();
        times[times.len() / 2]
    };

    // The alternative: the same isolates on the idle gateway.
    let mut idle = Vec::new();
    for n in 1..=SAMPLES {
        idle.push(isolate(n).await?);
    }
    let idle_tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let idle_rss = rss_mib();

    // The fan-out: 10 actions of 1,000 sensors each.
    for a in 0..SENSORS / PER_ACTION {
        let targets: Vec<Value> = (a * PER_ACTION + 1..=(a + 1) * PER_ACTION)
            .map(|i| json!({"backend": "cb", "device_id": i.to_string()}))
            .collect();
        let body = json!({"targets": targets, "commands": [{"type": "process_list"}]});
        let answer =
            http.post(format!("{base}/v1/actions")).bearer_auth(&hunt).json(&body).send().await?;
        ensure!(answer.status() == 202, "fan-out answered {}", answer.status());
    }
    // Runs held by a driver while they wait for a session slot: the goal is none (a run
    // beyond the slots waits in the store).
    let waiting_for_slots = || {
        let backends = engine.backends();
        let adapter = backends.adapter("hunt", "cb").expect("the hunt tenant's backend");
        adapter.budgets().iter().filter(|b| b.held).map(|b| b.waiting).sum::<usize>()
    };
    let mut loaded = Vec::new();
    let (mut tasks, mut rss, mut in_flight, mut slot_waiters) = (0, 0.0f64, Vec::new(), 0);
    for n in SAMPLES + 1..=SAMPLES * 2 {
        let waiting = unfinished().await?;
        ensure!(waiting >= 9_000, "only {waiting} runs in flight");
        in_flight.push(waiting);
        loaded.push(isolate(n).await?);
        tasks = tasks.max(tokio::runtime::Handle::current().metrics().num_alive_tasks());
        slot_waiters = slot_waiters.max(waiting_for_slots());
        rss = rss.max(rss_mib());
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    for n in 1..=SAMPLES * 2 {
        let host = format!("CR-WS-{n:04}");
        ensure!(cr_sim.is_isolated(&host), "{host} is not isolated on the console");
    }

    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
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
    let idle_p50 = {
        idle.sort();
        idle[idle.len() / 2]
    };
    let loaded_p50 = {
        loaded.sort();
        loaded[loaded.len() / 2]
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu},
            "commit": commit,
            "vendor_round_trip_ms": ms(round_trip),
            "isolate_idle": stats(&mut idle),
            "isolate_during_fan_out": stats(&mut loaded),
            "p50_difference_ms": ms(loaded_p50.saturating_sub(idle_p50)),
            "fan_out_runs_in_flight_per_sample": in_flight,
            "alive_tasks": {"idle": idle_tasks, "during_fan_out_max": tasks},
            "drivers_waiting_for_a_slot_max": slot_waiters,
            "process_rss_mib": {"idle": (idle_rss * 10.0).round() / 10.0, "during_fan_out_max": (rss * 10.0).round() / 10.0},
        }))?
    );
    Ok(())
}
