//! Operations end to end: `/metrics`, the path prefix, graceful shutdown, and the gateway
//! behind a real nginx (Debian's package; the test is skipped, saying so, where nginx is not
//! installed — `.ci/run` installs it).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edrgate_carbonblack_sim::{SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

mod common;
use common::{Backend, Client, Gateway, spawn, token};

/// A gateway with `server` settings and tenant `tenant`'s backend `cb` on the simulator at
/// `sim`.
async fn start(server: &str, tenant: &str, sim: SocketAddr) -> Gateway {
    let cb = Backend::carbonblack(sim);
    Gateway::builder()
        .config(&format!("[server]\n{server}"))
        .backend(tenant, "cb", &cb)
        .start()
        .await
}

fn fast() -> SimConfig {
    SimConfig {
        sensors: 3,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

/// The action id at the end of a `Location`.
/// The action id in a submission's `Location` (`…/v1/actions/{id}/status`).
fn id_of(location: &str) -> &str {
    location.strip_suffix("/status").unwrap_or(location).rsplit('/').next().unwrap()
}

/// The value of the first sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_prefix_and_health_endpoints() {
    let (_sim, addr) = spawn(Simulator::new(fast())).await;
    let server = "path_prefix = \"/edrgate\"\nmetrics_listen = \"127.0.0.1:0\"";
    let gw = start(server, "opsmetrics", addr).await;
    let prefixed = Client::new(gw.url("/edrgate"), gw.http.clone());
    let bearer = token("opsmetrics");

    // Under the prefix only; the probes at the root too.
    let body =
        json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]});
    let (status, _) = gw.post(&bearer, "/v1/actions", &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r =
        prefixed.request(Method::POST, &bearer, "/v1/actions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&prefixed.url("/v1/actions/")), "{location}");
    assert!(location.ends_with("/status"), "{location}");
    let action = prefixed.wait_terminal(&bearer, id_of(&location)).await;
    // The status URL, under the prefix too: `200` with the finished action.
    let r = prefixed.http.get(&location).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-location"].to_str().unwrap(),
        prefixed.url(&format!("/v1/actions/{}", id_of(&location)))
    );
    assert_eq!(action["status"], "succeeded", "{action:#}");
    for path in ["/healthz", "/readyz", "/edrgate/healthz", "/edrgate/readyz"] {
        let status = gw.http.get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // The metrics name every tenant and are not authenticated: never on the API's listener.
    for path in ["/metrics", "/edrgate/metrics"] {
        let status = gw.http.get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let metrics = format!("http://{}/metrics", gw.metrics_addr.expect("metrics_listen"));
    let text = gw.http.get(metrics).send().await.unwrap().text().await.unwrap();
    let has = |metric: &str, labels: &[&str]| {
        sample(&text, metric, labels).unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
    };
    assert!(
        has(
            "edrgate_http_requests_total",
            &[r#"route="/edrgate/v1/actions""#, r#"method="POST""#, r#"status="202""#]
        ) >= 1.0
    );
    assert!(
        has(
            "edrgate_http_request_duration_seconds_count",
            &[r#"route="/edrgate/v1/actions/{id}""#]
        ) >= 1.0
    );
    assert_eq!(
        has(
            "edrgate_runs_finished_total",
            &[r#"tenant="opsmetrics""#, r#"backend="cb""#, r#"status="succeeded""#]
        ),
        1.0
    );
    assert!(
        has("edrgate_vendor_requests_total", &[r#"vendor="carbonblack""#, r#"outcome="2xx""#])
            >= 3.0
    );
    assert!(
        has("edrgate_vendor_request_duration_seconds_count", &[r#"vendor="carbonblack""#]) >= 3.0
    );
    assert_eq!(
        has("edrgate_budget_capacity", &[r#"tenant="opsmetrics""#, r#"budget="sessions""#]),
        10.0
    );
    assert!(sample(&text, "edrgate_runs", &[r#"status="queued""#]).is_some(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_long_polls_and_exits_within_its_grace() {
    // A command that outlasts the grace: its run is handed back, not waited for.
    let (_sim, addr) =
        spawn(Simulator::new(SimConfig { command_latency: Duration::from_secs(30), ..fast() }))
            .await;
    let mut gw = start("shutdown_grace_seconds = 2", "opsgrace", addr).await;
    let bearer = token("opsgrace");
    let body =
        json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]});
    let id = gw.submit(&bearer, &body).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let poll = tokio::spawn({
        let request = gw.request(Method::GET, &bearer, &format!("/v1/actions/{id}?wait=60"));
        async move { request.send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    gw.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // The long-poll was answered, not cut off.
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::OK);
}

/// nginx in front of the gateway, as `deploy/nginx.conf` configures it (minus TLS).
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Option<Nginx> {
        let binary =
            ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).is_file())?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            r#"
            daemon off;
            master_process off;
            pid {d}/nginx.pid;
            error_log {d}/error.log warn;
            events {{}}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                server {{
                    listen 127.0.0.1:{port};
                    include {root}/deploy/nginx/edrgate-location.conf;
                }}
                upstream edrgate {{ server {upstream}; }}
            }}
            "#,
            root = env!("CARGO_MANIFEST_DIR"),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = std::process::Command::new(binary)
            .args(["-p", &d.to_string(), "-c", "nginx.conf"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Nginx { child, port, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not start; see its error log above");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_prefix_forwarded_addresses_long_polls_and_large_transfers() {
    const BIG: u64 = 48 * 1024 * 1024;
    let (_sim, addr) =
        spawn(Simulator::new(SimConfig { file_size: BIG, offline_sensors: vec![3], ..fast() }))
            .await;
    // nginx connects from 127.0.0.1; clients come from 127.0.0.2.
    let gw =
        start("path_prefix = \"/edrgate\"\ntrusted_proxies = [\"127.0.0.1/32\"]", "opsproxy", addr)
            .await;
    let Some(nginx) = Nginx::start(gw.addr) else {
        eprintln!("SKIPPED behind_nginx…: nginx is not installed (apt-get install nginx-core)");
        return;
    };
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let proxy = Client::new(format!("http://127.0.0.1:{}/edrgate", nginx.port), client.clone());
    let bearer = token("opsproxy");

    // Through the proxy, with a spoofed X-Forwarded-For the proxy appends to.
    let r = proxy
        .request(Method::POST, &bearer, "/v1/actions")
        .header("x-forwarded-for", "6.6.6.6")
        .json(&json!({
            "targets": [{"hostname": "WIN-0001"}],
            "commands": [{"type": "get_file", "path": "C:\\evidence\\big.bin"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&proxy.url("/v1/actions/")), "{location}");
    // Straight to the gateway from an untrusted peer: its header is not believed.
    let direct = client
        .post(gw.url("/edrgate/v1/actions"))
        .bearer_auth(&bearer)
        .header("x-forwarded-for", "7.7.7.7")
        .json(
            &json!({"targets": [{"hostname": "WIN-0002"}], "commands": [{"type": "process_list"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::ACCEPTED);

    // A long-poll held open through the proxy until the action changes.
    let action = proxy.wait_terminal(&bearer, id_of(&location)).await;
    assert_eq!(action["status"], "succeeded", "{action:#}");
    // WIN-0003 is offline: its action sits pending at the vendor, so a poll on it is held for
    // its whole `wait` (nginx's default 60 s read timeout is raised in the location).
    let slow = proxy
        .submit(
            &bearer,
            &json!({"targets": [{"hostname": "WIN-0003"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    let slow_path = format!("/v1/actions/{slow}");
    // Past its first changes (queued → dispatched → running), it stays as it is.
    for _ in 0..100 {
        let (_, now) = proxy.get(&bearer, &slow_path).await;
        if now["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = Instant::now();
    let (status, _) = proxy.get(&bearer, &format!("{slow_path}?wait=2")).await;
    assert_eq!(status, StatusCode::OK);
    let held = held.elapsed();
    assert!(held >= Duration::from_millis(1800), "the long-poll was not held: {held:?}");

    // The large result, streamed through the proxy, whole and by range.
    let file = &action["runs"][0]["commands"][0]["result"]["file"];
    assert_eq!(file["size"], BIG);
    let content_path = format!("/v1/files/{}/content", file["file_id"].as_str().unwrap());
    let content = proxy.request(Method::GET, &bearer, &content_path).send().await.unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    let bytes = content.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, BIG);
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), file["sha256"].as_str().unwrap());
    let ranged = proxy
        .request(Method::GET, &bearer, &content_path)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap(), bytes.slice(1000..2000));

    // A large upload streams through too.
    let upload = vec![7u8; 24 * 1024 * 1024];
    let r = proxy.upload(&bearer, "tool.bin", upload.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["sha256"], hex::encode(sha2::Sha256::digest(&upload)));

    // The audit trail has the client's address: the proxy's word for it, never the spoof.
    let (_, audit) = proxy.get(&bearer, "/v1/audit?event=action.submit").await;
    let sources: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["127.0.0.2", "127.0.0.2", "127.0.0.2"], "{audit:#}");

    // The event stream through the proxy: each event arrives as it happens (nginx does not
    // buffer it), here an action submitted after the stream opened, to its end.
    let stream = proxy.request(Method::GET, &bearer, "/v1/events").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let id = proxy
        .submit(
            &bearer,
            &json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    let mut body = stream.bytes_stream();
    let mut text = String::new();
    let finished = format!("\"action_id\":\"{id}\"");
    let streamed = tokio::time::timeout(Duration::from_secs(30), async {
        use futures::StreamExt as _;
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: action.finished") && text.contains(&finished) {
                return;
            }
        }
    })
    .await;
    assert!(streamed.is_ok(), "the stream did not carry the action's events: {text}");
    assert!(text.contains("event: action.created"), "{text}");
    drop(nginx);
}

/// `edrgate serve` checks every backend once at start, as `check-config --connect` does, and
/// names in its log the one whose credentials the vendor refuses, before any action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_checks_every_backend_at_start_and_logs_the_broken_one() {
    let (_good, good) = spawn(Simulator::new(fast())).await;
    let (_bad, bad) =
        spawn(Simulator::new(SimConfig { token: "another-token".into(), ..fast() })).await;
    let config = Gateway::builder().backend("acme", "cb", &Backend::carbonblack(good)).backend(
        "acme",
        "cb-bad",
        &Backend::carbonblack(bad),
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = common::GatewayProcess::start("gateway", dir.path(), &config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = gateway.logs();
        if logs.contains("backend check failed") && logs.contains("backend checked") {
            break logs;
        }
        assert!(Instant::now() < deadline, "no start-up check logged:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed = logs.lines().find(|l| l.contains("backend check failed")).unwrap();
    assert!(
        failed.contains("tenants.acme.backends.cb-bad") && failed.contains("vendor_auth_failed"),
        "{failed}"
    );
    let checked = logs.lines().find(|l| l.contains("backend checked")).unwrap();
    assert!(checked.contains("tenants.acme.backends.cb"), "{checked}");
}
