//! The cache of answers behind `GET /v1/actions/{id}` (served from memory for an unchanged
//! action): never stale for a change this process announced, tenant-checked from memory, and
//! across two PostgreSQL replicas converging on the other's changes, also after the listener
//! lost its connection.

use edrgate_simkit::Sim as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edrgate_carbonblack_sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, GatewayProcess, token};

/// How far an action got: its statuses only move forward and every visible change moves one
/// (a status of the action, a run or a command, or a cancel requested), so an older answer
/// never has more.
fn progress(action: &Value) -> u64 {
    fn rank(status: &Value) -> u64 {
        match status.as_str().unwrap_or_default() {
            "queued" => 0,
            "dispatched" => 1,
            "running" => 2,
            _ => 3,
        }
    }
    let mut total = rank(&action["status"]) + u64::from(action["cancel_requested"] == true);
    for run in action["runs"].as_array().into_iter().flatten() {
        total += rank(&run["status"]);
        for command in run["commands"].as_array().into_iter().flatten() {
            total += rank(&command["status"]) + u64::from(!command["result"].is_null());
        }
    }
    total
}

fn is_terminal(action: &Value) -> bool {
    !["queued", "dispatched", "running"].contains(&action["status"].as_str().unwrap_or_default())
}

fn sim_config(latency_ms: u64) -> SimConfig {
    SimConfig {
        sensors: 4,
        checkin_delay: Duration::from_millis(50),
        command_latency: Duration::from_millis(latency_ms),
        ..SimConfig::default()
    }
}

fn three_commands() -> Value {
    json!({
        "targets": [{"backend": "cb", "device_id": "1"}, {"backend": "cb", "device_id": "2"}],
        "commands": [{"type": "process_list"}, {"type": "process_list"}, {"type": "process_list"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_action_is_never_served_stale() {
    // Commands long enough (~0.7 s in all) that each reader sees several states even on a
    // loaded machine, where a read can take tens of milliseconds (at 60 ms a loaded run
    // finished within three reads).
    let sim = Simulator::new(sim_config(200));
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let gw = Gateway::builder().backend("acme", "cb", &cb).start().await;
    let acme = token("acme");
    let id = gw.submit(&acme, &three_commands()).await;
    let path = format!("/v1/actions/{id}");
    // The most progress any answer received so far showed: a read that starts later must
    // show at least as much.
    let seen = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let (client, seen, path, acme) =
                (Base(gw.url("")), Arc::clone(&seen), path.clone(), acme.clone());
            tokio::spawn(async move {
                let http =
                    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
                let mut reads = 0u64;
                // Stale answers served forever would never show the end.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "never finished");
                    let before = seen.load(Ordering::SeqCst);
                    // Reader 0 long-polls now and then, the others read plainly.
                    let query = if reader == 0 && reads % 4 == 3 { "?wait=1" } else { "" };
                    let answer = http
                        .get(format!("{}{path}{query}", client.0))
                        .bearer_auth(&acme)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), StatusCode::OK);
                    let action: Value = answer.json().await.unwrap();
                    let now = progress(&action);
                    assert!(now >= before, "stale answer ({now} < {before}): {action:#}");
                    seen.fetch_max(now, Ordering::SeqCst);
                    reads += 1;
                    if is_terminal(&action) {
                        return (reads, action);
                    }
                }
            })
        })
        .collect();
    let mut terminal = Vec::new();
    for reader in readers {
        let (reads, action) = reader.await.unwrap();
        assert!(reads > 3, "too few reads to mean anything: {reads}");
        terminal.push(action);
    }
    // Finished: the plain read, the long-poll and the status URL answer the same action.
    let (status, polled) = gw.get(&acme, &format!("{path}?wait=5")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["status"], "succeeded", "{polled:#}");
    for _ in 0..3 {
        let (status, read) = gw.get(&acme, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read, polled);
    }
    for action in &terminal {
        assert_eq!(action, &polled);
    }
    let (status, finished) = gw.get(&acme, &format!("{path}/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(finished, polled);
    // The body served from memory is exactly what the typed answer serializes to.
    let answer = gw.request(reqwest::Method::GET, &acme, &path).send().await.unwrap();
    assert_eq!(answer.headers()[reqwest::header::CONTENT_TYPE], "application/json");
    let action: edrgate_adapter::Action = answer.json().await.unwrap();
    assert_eq!(serde_json::to_value(&action).unwrap(), polled);
}

/// The base URL of a gateway, for reader tasks.
struct Base(String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_id_is_not_found_from_the_cache_too() {
    let sim = Simulator::new(sim_config(10));
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let gw =
        Gateway::builder().backend("acme", "cb", &cb).backend("globex", "cb", &cb).start().await;
    let (acme, globex) = (token("acme"), token("globex"));
    let id = gw.submit(&acme, &three_commands()).await;
    let finished = gw.wait_terminal(&acme, &id).await;
    for _ in 0..3 {
        // Read (and cached) by its tenant, then asked for by another.
        let (status, read) = gw.get(&acme, &format!("/v1/actions/{id}")).await;
        assert_eq!((status, &read), (StatusCode::OK, &finished));
        for path in [format!("/v1/actions/{id}"), format!("/v1/actions/{id}/status")] {
            let (status, problem) = gw.get(&globex, &path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
            assert_eq!(problem["code"], "not_found", "{problem}");
        }
        let (status, _) = gw.get(&globex, &format!("/v1/actions/{id}?wait=1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

/// Reads `path` on `replica` until `done` holds for the answer, for at most `within`; the
/// answer.
async fn converges(
    replica: &GatewayProcess,
    token: &str,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, action) = replica.get(token, path).await;
        assert_eq!(status, StatusCode::OK, "{action}");
        if done(&action) {
            return action;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not seen after {within:?}: {action:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cancels `id` on `replica` (asserting it is accepted).
async fn cancel(replica: &GatewayProcess, token: &str, id: &str) {
    let (status, answer) =
        replica.post(token, &format!("/v1/actions/{id}/cancel"), &json!({})).await;
    assert!(status.is_success(), "cancel: {status} {answer}");
}

/// Drops the connections that `LISTEN` (both replicas' change listeners): the notices sent
/// until they listen again are lost.
async fn kill_listeners(db_url: &str) -> u64 {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(db_url).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    killed.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_one_postgres_replica_is_seen_by_the_others_reads() {
    let Some(db_url) = common::fresh_postgres_database("status_cache::two_replicas").await else {
        return;
    };
    let sim = Simulator::new(sim_config(1500));
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = Gateway::builder().backend("acme", "cb", &cb).config(&format!(
        r#"
        store.url = "{db_url}"
        store.max_connections = 8
        engine.lease_seconds = 2
        "#
    ));
    let a = GatewayProcess::start("a", dir.path(), &config).await;
    let b = GatewayProcess::start("b", dir.path(), &config).await;
    let acme = token("acme");
    let bound = Duration::from_secs(2);

    // A cancel through A: B, which has the action in memory, shows it within the bound.
    let id = a.submit(&acme, &three_commands()).await;
    let path = format!("/v1/actions/{id}");
    for _ in 0..5 {
        let (status, read) = b.get(&acme, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["cancel_requested"], false, "{read:#}");
    }
    cancel(&a, &acme, &id).await;
    converges(&b, &acme, &path, bound, |r| r["cancel_requested"] == true).await;
    // And its end, whichever replica drives it: B's read converges on A's long-poll.
    let finished = a.wait_terminal(&acme, &id).await;
    assert_eq!(finished["status"], "cancelled", "{finished:#}");
    converges(&b, &acme, &path, bound, |r| r == &finished).await;

    // A run progressing (driven by either replica) is seen by both.
    let id = b.submit(&acme, &three_commands()).await;
    let path = format!("/v1/actions/{id}");
    let finished = a.wait_terminal(&acme, &id).await;
    converges(&b, &acme, &path, bound, |r| r == &finished).await;

    // The listeners lose their connections; a change made meanwhile is still seen.
    let id = a.submit(&acme, &three_commands()).await;
    let path = format!("/v1/actions/{id}");
    for _ in 0..5 {
        let (status, read) = b.get(&acme, &path).await;
        assert_eq!((status, &read["cancel_requested"]), (StatusCode::OK, &json!(false)));
    }
    assert!(kill_listeners(&db_url).await >= 1, "no listener connection found");
    cancel(&a, &acme, &id).await;
    converges(&b, &acme, &path, bound, |r| r["cancel_requested"] == true).await;
    let finished = a.wait_terminal(&acme, &id).await;
    converges(&b, &acme, &path, bound, |r| r == &finished).await;
    // B did lose its listener (and listened again).
    b.logs_containing("the change listener lost its connection", Duration::from_secs(5)).await;
    // After listening again, changes are seen as before.
    let id = a.submit(&acme, &three_commands()).await;
    let path = format!("/v1/actions/{id}");
    let (status, _) = b.get(&acme, &path).await;
    assert_eq!(status, StatusCode::OK);
    cancel(&a, &acme, &id).await;
    converges(&b, &acme, &path, bound, |r| r["cancel_requested"] == true).await;
}
