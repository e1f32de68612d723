//! Several gateway replicas on one PostgreSQL database, as separate `edrgate serve` processes in
//! front of one Carbon Black simulator: they share the work, the vendor's session budget and
//! the long-polls' wake-ups, survive a SIGKILL of one of them without running a side effect
//! twice, and a SIGTERM'd one exits within its grace period.
//!
//! Needs `EDRGATE_TEST_POSTGRES_URL` (`.ci/postgres` starts a server); without it every test
//! prints that it was skipped and passes.

use edrgate_simkit::Sim as _;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use edrgate_carbonblack_sim::{SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Backend, Client, Gateway, GatewayBuilder, token};

/// The backend's configured session limit: what all replicas together may hold. The simulated
/// server allows more, so exceeding it shows in its high-water mark.
const SLOT_LIMIT: usize = 3;
const GRACE_SECONDS: u64 = 5;

/// One `edrgate serve` process; its API is [`Client`]'s.
struct Replica {
    name: &'static str,
    child: std::process::Child,
    log: PathBuf,
    client: Client,
}

impl Replica {
    /// A replica with `config`, its files in `dir`.
    async fn start(name: &'static str, dir: &Path, config: &GatewayBuilder) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = dir.join(format!("{name}.toml"));
        let config = config.clone().config(&format!("server.listen = \"127.0.0.1:{port}\""));
        std::fs::write(&file, config.render(dir)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edrgate"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn,edrgate=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder().build().unwrap();
        let client = Client::new(format!("http://127.0.0.1:{port}"), http);
        let replica = Replica { name, child, log, client };
        for _ in 0..300 {
            if let Ok(r) = replica.http.get(replica.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replica {name} did not become ready:\n{}", replica.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, nothing released.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the time it took to exit and how.
    async fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (started.elapsed(), status);
            }
            assert!(
                started.elapsed() < Duration::from_secs(GRACE_SECONDS * 3),
                "the replica did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Deref for Replica {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A test that failed must not leave its gateway running, and shows what it logged.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("replica {} logged:\n{}", self.name, self.logs());
        }
    }
}

/// Tenant `acme`'s backend `cb` on `sim` (started here), with the replicas' session limit.
async fn on_carbonblack(sim: &Simulator) -> GatewayBuilder {
    let cb = Backend::carbonblack(sim.spawn().await.unwrap())
        .with(&format!("slot_limit = {SLOT_LIMIT}"));
    Gateway::builder().backend("acme", "cb", &cb)
}

/// Two replicas of `gateway` on a fresh database, or `None` when there is no PostgreSQL.
async fn two_replicas(
    test: &str,
    gateway: GatewayBuilder,
) -> Option<(Replica, Replica, tempfile::TempDir)> {
    let db_url = common::fresh_postgres_database(test).await?;
    let dir = tempfile::tempdir().unwrap();
    let config = gateway.config(&format!(
        r#"
        server.shutdown_grace_seconds = {GRACE_SECONDS}
        store.url = "{db_url}"
        store.max_connections = 8
        engine.lease_seconds = 2
        "#
    ));
    let a = Replica::start("a", dir.path(), &config).await;
    let b = Replica::start("b", dir.path(), &config).await;
    Some((a, b, dir))
}

/// Per side-effect command, (reported succeeded, reported outcome_unknown), and a check that
/// the simulator's record agrees: nothing ran twice, every reported success happened, only an
/// outcome reported unknown may have happened unreported.
fn assert_at_most_once(sim: &Simulator, actions: &[Value], side_effects: &[(usize, &str)]) {
    let counters = sim.counters();
    for (index, name) in side_effects {
        let (mut succeeded, mut unknown) = (0, 0);
        for action in actions {
            let command = &action["runs"][0]["commands"][*index];
            match command["status"].as_str().unwrap() {
                "succeeded" => succeeded += 1,
                "failed" => {
                    assert_eq!(command["error"]["code"], "outcome_unknown", "{action:#}");
                    unknown += 1;
                }
                // Never sent: an earlier command's outcome was unknown and `on_error` is
                // `stop`. The simulator's count below still proves it did not run.
                "skipped" => {}
                other => panic!("unexpected {other}: {action:#}"),
            }
        }
        let executed = counters.executed(name);
        assert!(executed <= actions.len() as u64, "{name} ran {executed} times");
        assert!(
            succeeded <= executed && executed <= succeeded + unknown,
            "{name}: executed {executed}, reported {succeeded} succeeded and {unknown} unknown"
        );
        assert!(unknown <= 3, "{name}: {unknown} outcomes unknown");
    }
}

fn side_effect_request(sensor: usize) -> Value {
    json!({
        "targets": [{"backend": "cb", "device_id": sensor.to_string()}],
        "commands": [
            {"type": "kill_process", "pid": 3012},
            {"type": "delete_file", "path": "C:\\evidence\\note.txt"},
            {"type": "process_list"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_work_and_the_session_budget_and_survive_a_sigkill() {
    let sim = Simulator::new(SimConfig {
        sensors: 40,
        // More than the backend's limit: only the gateway's shared budget keeps to SLOT_LIMIT.
        slot_limit: 20,
        checkin_delay: Duration::from_millis(50),
        command_latency: Duration::from_millis(120),
        ..SimConfig::default()
    });
    let Some((mut a, b, _dir)) =
        two_replicas("replicas::sigkill", on_carbonblack(&sim).await).await
    else {
        return;
    };
    let acme = token("acme");
    let mut ids = Vec::new();
    for sensor in 1..=40 {
        let replica = if sensor % 2 == 0 { &a } else { &b };
        ids.push(replica.submit(&acme, &side_effect_request(sensor)).await);
    }
    // Let both replicas get going, then crash one mid-flight.
    let started = Instant::now();
    while sim.counters().executed("kill") < 6 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = sim.counters().executed("kill");
    assert!(before < 40, "everything ran before the crash; the test proves nothing");
    a.kill();

    let mut done = Vec::new();
    for id in &ids {
        done.push(b.wait_terminal(&acme, id).await);
    }
    assert_at_most_once(&sim, &done, &[(0, "kill"), (1, "delete file")]);
    let max = sim.max_concurrent_sessions();
    assert!(
        max <= SLOT_LIMIT,
        "the simulator saw {max} sessions at once; the replicas' budget is {SLOT_LIMIT}"
    );
    assert!(max >= 2, "only {max} session(s) at once: the budget was not used");
    assert!(
        done.iter().filter(|a| a["status"] == "succeeded").count() >= 37,
        "{:#}",
        Value::Array(done)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_wakes_for_a_cancel_made_through_the_other_replica() {
    let sim = Simulator::new(SimConfig {
        sensors: 3,
        checkin_delay: Duration::from_millis(50),
        ..SimConfig::default()
    });
    // An offline sensor: its session stays pending, so the run waits until it is cancelled.
    sim.set_sensor_online(1, false);
    let Some((a, b, _dir)) = two_replicas("replicas::long_poll", on_carbonblack(&sim).await).await
    else {
        return;
    };
    let acme = token("acme");
    let id = a
        .submit(
            &acme,
            &json!({"targets": [{"backend": "cb", "device_id": "1"}],
                       "commands": [{"type": "process_list"}]}),
        )
        .await;
    let started = Instant::now();
    loop {
        let (_, action) = a.get(&acme, &format!("/v1/actions/{id}")).await;
        if action["status"] != "queued" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never dispatched: {action:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A long-poll on one replica, a cancel through the other.
    let path = format!("/v1/actions/{id}?wait=30");
    let poll = {
        let request = a.request(Method::GET, &acme, &path);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = request.send().await.unwrap();
            (started.elapsed(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = b.post(&acme, &format!("/v1/actions/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (waited, seen) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(5), "the long-poll slept through the change ({waited:?})");
    assert_eq!(seen["cancel_requested"], true, "{seen:#}");
    // Whichever replica drives the run stops it at once.
    let started = Instant::now();
    let done = a.wait_terminal(&acme, &id).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_replica_exits_within_its_grace_and_the_other_finishes_its_runs() {
    let sim = Simulator::new(SimConfig {
        sensors: 16,
        slot_limit: 20,
        checkin_delay: Duration::from_millis(50),
        command_latency: Duration::from_millis(200),
        ..SimConfig::default()
    });
    let Some((mut a, b, _dir)) =
        two_replicas("replicas::sigterm", on_carbonblack(&sim).await).await
    else {
        return;
    };
    let acme = token("acme");
    let mut ids = Vec::new();
    for sensor in 1..=16 {
        ids.push(a.submit(&acme, &side_effect_request(sensor)).await);
    }
    let started = Instant::now();
    while sim.counters().executed("kill") < 2 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took, status) = a.terminate().await;
    assert!(status.success(), "exit status {status}:\n{}", a.logs());
    assert!(
        took <= Duration::from_secs(GRACE_SECONDS + 1),
        "took {took:?} to exit; the grace is {GRACE_SECONDS} s"
    );
    let mut done = Vec::new();
    for id in &ids {
        done.push(b.wait_terminal(&acme, id).await);
    }
    assert_at_most_once(&sim, &done, &[(0, "kill"), (1, "delete file")]);
    assert!(sim.max_concurrent_sessions() <= SLOT_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_keep_defenders_call_rate_and_session_cap_together() {
    use edrgate_defender_sim as mde;
    // Defender's 10 runliveresponse calls per minute scaled to 10 per 2 s; the backend allows 4
    // live sessions (the simulated service would take 25), so both limits are the gateway's.
    let sim = mde::Simulator::new(mde::SimConfig {
        machines: 30,
        live_response_calls: 10,
        live_response_window: Duration::from_secs(2),
        pickup_delay: Duration::from_millis(200),
        ..mde::SimConfig::default()
    });
    // The gateway's call budget a tenth under the server's (see the acceptance run below for
    // why): two replicas each at that pace would still send the server twice its limit.
    let mde = Backend::defender(sim.spawn().await.unwrap())
        .with("live_response_calls = 9\nlive_response_window_ms = 2000\nconcurrent_sessions = 4");
    let gateway = Gateway::builder().backend("acme", "mde", &mde);
    let Some((a, b, _dir)) = two_replicas("replicas::defender", gateway).await else { return };
    let acme = token("acme");
    let mut ids = Vec::new();
    for n in 1..=30 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let target = json!({"backend": "mde", "device_id": mde::machine_id(n)});
        ids.push(
            replica
                .submit(
                    &acme,
                    &json!({"targets": [target], "commands": [{"type": "process_list"}]}),
                )
                .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        let done = replica.wait_terminal(&acme, id).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    let c = sim.counters();
    assert_eq!(c.responses_429, 0, "{c:?}");
    assert!(c.max_concurrent_sessions <= 4, "{c:?}");
    assert_eq!(c.live_response_actions, 30, "{c:?}");
}

/// The issue's acceptance run: 300 actions across the three vendors submitted to both replicas,
/// one replica SIGKILLed in the middle; the other finishes everything, every vendor limit held
/// by both together, and no side effect ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_actions_across_three_vendors_survive_a_sigkill() {
    use edrgate_cybereason_sim as cr;
    use edrgate_defender_sim as mde;
    const PER_VENDOR: usize = 100;
    const CB_SLOTS: usize = 5;
    const MDE_SESSIONS: usize = 8;
    let cb_sim = Simulator::new(SimConfig {
        sensors: PER_VENDOR,
        // The server's limit is the backend's, as in production. (The first test here gives the
        // server more room to show the replicas' own budget; under this heavier load, sessions
        // a SIGKILLed replica left open on the server were seen to exceed the budget briefly.)
        slot_limit: CB_SLOTS,
        checkin_delay: Duration::from_millis(50),
        command_latency: Duration::from_millis(150),
        ..SimConfig::default()
    });
    let mde_sim = mde::Simulator::new(mde::SimConfig {
        machines: PER_VENDOR,
        live_response_calls: 20,
        live_response_window: Duration::from_secs(2),
        // 300 API calls per minute (per API) instead of 100, to keep the test short; two
        // replicas at their local pace would still send twice that.
        api_calls_per_minute: 300,
        pickup_delay: Duration::from_millis(100),
        ..mde::SimConfig::default()
    });
    let cr_sim = cr::Simulator::new(cr::SimConfig {
        machines: PER_VENDOR,
        remediation_delay: Duration::from_millis(100),
        ..cr::SimConfig::default()
    });
    let cb = Backend::carbonblack(cb_sim.spawn().await.unwrap())
        .with(&format!("slot_limit = {CB_SLOTS}"));
    // The gateway's budgets a tenth under the server's limits, as a deployment sets them: a
    // call is counted when it is taken and arrives a scheduling delay later, so on a loaded
    // machine two calls taken a window apart can land inside one window of the server's.
    // Two replicas each at its own pace would still exceed the server's limits twice over.
    let mde = Backend::defender(mde_sim.spawn().await.unwrap()).with(&format!(
        "live_response_calls = 18\nlive_response_window_ms = 2000\napi_calls_per_minute = 270\n\
         concurrent_sessions = {MDE_SESSIONS}"
    ));
    let cr = Backend::cybereason(cr_sim.spawn().await.unwrap()).with(
        r#"
        poll_interval_ms = 50
        max_poll_interval_ms = 300
        # The simulated console has no call quota; the default (600 per minute) would make the
        # hundred Cybereason actions the slowest part of the test.
        calls_per_minute = 6000
        "#,
    );
    let gateway = Gateway::builder()
        .backend("acme", "cb", &cb)
        .backend("acme", "mde", &mde)
        .backend("acme", "cr", &cr);
    let Some((mut a, b, _dir)) = two_replicas("replicas::three_vendors", gateway).await else {
        return;
    };
    let acme = token("acme");
    // (vendor, request), spread round-robin over the replicas and submitted all at once.
    let mut requests = Vec::new();
    for n in 1..=PER_VENDOR {
        requests.push(("cb", side_effect_request(n)));
        requests.push((
            "mde",
            json!({"targets": [{"backend": "mde", "device_id": mde::machine_id(n)}],
                   "commands": [{"type": "process_list"}]}),
        ));
        requests.push((
            "cr",
            json!({"targets": [{"hostname": format!("CR-WS-{n:04}")}],
                   "commands": [{"type": "kill_process", "pid": 3012}]}),
        ));
    }
    let ids: Vec<(&str, String)> =
        futures::future::join_all(requests.into_iter().enumerate().map(|(i, (vendor, body))| {
            let (replica, acme) = (if i % 2 == 0 { &a } else { &b }, &acme);
            async move { (vendor, replica.submit(acme, &body).await) }
        }))
        .await;
    let started = Instant::now();
    while cb_sim.counters().executed("kill") < 10 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cb_before, mde_before) =
        (cb_sim.counters().executed("kill"), mde_sim.counters().live_response_actions);
    eprintln!("killing replica a: {cb_before} CB kills and {mde_before} Defender actions sent");
    assert!(
        cb_before < PER_VENDOR as u64 / 2,
        "most of the work was done before the crash: the test proves little"
    );
    a.kill();

    let mut done: Vec<(&str, Value)> = Vec::new();
    for (vendor, id) in &ids {
        done.push((vendor, b.wait_terminal(&acme, id).await));
    }
    for (vendor, action) in &done {
        // Every command succeeded, or its outcome is unknown (a crash between intent and
        // answer), after which the run's remaining commands are skipped.
        let mut unknown_before = false;
        for command in action["runs"][0]["commands"].as_array().unwrap() {
            let ok = command["status"] == "succeeded"
                || command["error"]["code"] == "outcome_unknown"
                || (unknown_before && command["status"] == "skipped");
            assert!(ok, "{vendor}: {action:#}");
            unknown_before |= command["error"]["code"] == "outcome_unknown";
        }
    }
    let of = |v: &str| -> Vec<Value> {
        done.iter().filter(|(vendor, _)| *vendor == v).map(|(_, a)| a.clone()).collect()
    };
    assert_at_most_once(&cb_sim, &of("cb"), &[(0, "kill"), (1, "delete file")]);
    assert!(cb_sim.max_concurrent_sessions() <= CB_SLOTS, "{:?}", cb_sim.counters());
    let m = mde_sim.counters();
    assert_eq!(m.responses_429, 0, "{m:?}");
    assert!(m.max_concurrent_sessions <= MDE_SESSIONS, "{m:?}");
    let c = cr_sim.counters();
    let cr_succeeded =
        of("cr").iter().filter(|a| a["runs"][0]["commands"][0]["status"] == "succeeded").count()
            as u64;
    assert!(
        cr_succeeded <= c.remediations_executed && c.remediations_executed <= PER_VENDOR as u64,
        "{cr_succeeded} kills reported, {c:?}"
    );
}
