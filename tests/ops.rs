//! Operations end to end: `/metrics`, the path prefix, graceful shutdown, and the gateway
//! behind a real nginx (Debian's package; the test is skipped, saying so, where nginx is not
//! installed — `.ci/run` installs it).

use edrgate_simkit::Sim as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edrgate::app::{self, App};
use edrgate::config::Config;
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

const SECRET: &str = "ops-secret-0123456789abcdef0123456789abcdef0123";

struct Gateway {
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(server: &str, tenant: &str, sim_url: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            r#"
            [server]
            {server}
            [store]
            path = "{d}/edrgate.db"
            [files]
            dir = "{d}/files"
            [auth]
            allow_hs256 = true
            hs256_secret = "{SECRET}"
            [tenants.{tenant}.backends.cb]
            kind = "carbonblack"
            url = "{sim_url}"
            token = "{DEFAULT_TOKEN}"
            "#
        );
        let app = App::build(Config::parse(&text, |_| None).unwrap()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        let server = tokio::spawn(async move {
            app::serve(listener, app, async move { signal.cancelled().await }).await.unwrap();
        });
        Gateway { addr, stop, server, _dir: dir }
    }
}

fn token(tenant: &str) -> String {
    edrgate::auth::mint(SECRET.as_bytes(), tenant, "ops", Duration::from_secs(600)).unwrap()
}

async fn sim(cfg: SimConfig) -> (Simulator, String) {
    let sim = Simulator::new(cfg);
    let addr = sim.spawn().await.unwrap();
    (sim, format!("http://{addr}"))
}

fn fast() -> SimConfig {
    SimConfig {
        sensors: 3,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

/// Long-polls `url` (an action) until it is terminal.
async fn finished(http: &reqwest::Client, url: &str, token: &str) -> Value {
    for _ in 0..120 {
        let a: Value = http
            .get(format!("{url}?wait=5"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap_or("")) {
            return a;
        }
    }
    panic!("{url} did not finish");
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
    let (_sim, url) = sim(fast()).await;
    let gw = Gateway::start("path_prefix = \"/edrgate\"", "opsmetrics", &url).await;
    let base = format!("http://{}", gw.addr);
    let http = reqwest::Client::builder().build().unwrap();
    let bearer = token("opsmetrics");

    // Under the prefix only; the probes at the root too.
    let body =
        json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]});
    let r = http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .post(format!("{base}/edrgate/v1/actions"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{base}/edrgate/v1/actions/")), "{location}");
    let action = finished(&http, &location, &bearer).await;
    assert_eq!(action["status"], "succeeded", "{action:#}");
    for path in ["/healthz", "/readyz", "/edrgate/healthz", "/edrgate/readyz"] {
        let status = http.get(format!("{base}{path}")).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
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
    gw.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_long_polls_and_exits_within_its_grace() {
    // A command that outlasts the grace: its run is handed back, not waited for.
    let (_sim, url) = sim(SimConfig { command_latency: Duration::from_secs(30), ..fast() }).await;
    let gw = Gateway::start("shutdown_grace_seconds = 2", "opsgrace", &url).await;
    let base = format!("http://{}", gw.addr);
    let http = reqwest::Client::builder().build().unwrap();
    let bearer = token("opsgrace");
    let body =
        json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]});
    let action: Value = http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = action["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let poll = tokio::spawn({
        let (http, bearer) = (http.clone(), bearer.clone());
        let url = format!("{base}/v1/actions/{id}?wait=60");
        async move { http.get(url).bearer_auth(bearer).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    gw.stop.cancel();
    gw.server.await.unwrap();
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
    fn start(upstream: std::net::SocketAddr) -> Option<Nginx> {
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
    let (_sim, url) = sim(SimConfig { file_size: BIG, offline_sensors: vec![3], ..fast() }).await;
    // nginx connects from 127.0.0.1; clients come from 127.0.0.2.
    let gw = Gateway::start(
        "path_prefix = \"/edrgate\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        "opsproxy",
        &url,
    )
    .await;
    let Some(nginx) = Nginx::start(gw.addr) else {
        eprintln!("SKIPPED behind_nginx…: nginx is not installed (apt-get install nginx-core)");
        return;
    };
    let proxy = format!("http://127.0.0.1:{}/edrgate", nginx.port);
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let bearer = token("opsproxy");

    // Through the proxy, with a spoofed X-Forwarded-For the proxy appends to.
    let r = client
        .post(format!("{proxy}/v1/actions"))
        .bearer_auth(&bearer)
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
    assert!(location.starts_with(&format!("{proxy}/v1/actions/")), "{location}");
    // Straight to the gateway from an untrusted peer: its header is not believed.
    let direct = client
        .post(format!("http://{}/edrgate/v1/actions", gw.addr))
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
    let action = finished(&client, &location, &bearer).await;
    assert_eq!(action["status"], "succeeded", "{action:#}");
    // WIN-0003 is offline: its action sits pending at the vendor, so a poll on it is held for
    // its whole `wait` (nginx's default 60 s read timeout is raised in the location).
    let slow: Value = client
        .post(format!("{proxy}/v1/actions"))
        .bearer_auth(&bearer)
        .json(
            &json!({"targets": [{"hostname": "WIN-0003"}], "commands": [{"type": "process_list"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slow_url = format!("{proxy}/v1/actions/{}", slow["id"].as_str().unwrap());
    // Past its first changes (queued → dispatched → running), it stays as it is.
    for _ in 0..100 {
        let now: Value =
            client.get(&slow_url).bearer_auth(&bearer).send().await.unwrap().json().await.unwrap();
        if now["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = Instant::now();
    let r = client.get(format!("{slow_url}?wait=2")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let held = held.elapsed();
    assert!(held >= Duration::from_millis(1800), "the long-poll was not held: {held:?}");

    // The large result, streamed through the proxy, whole and by range.
    let file = &action["runs"][0]["commands"][0]["result"]["file"];
    assert_eq!(file["size"], BIG);
    let content = client
        .get(format!("{proxy}/v1/files/{}/content", file["file_id"].as_str().unwrap()))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    let bytes = content.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, BIG);
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), file["sha256"].as_str().unwrap());
    let ranged = client
        .get(format!("{proxy}/v1/files/{}/content", file["file_id"].as_str().unwrap()))
        .bearer_auth(&bearer)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap(), bytes.slice(1000..2000));

    // A large upload streams through too.
    let upload = vec![7u8; 24 * 1024 * 1024];
    let r = client
        .post(format!("{proxy}/v1/files?name=tool.bin"))
        .bearer_auth(&bearer)
        .header("content-type", "application/octet-stream")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["sha256"], hex::encode(sha2::Sha256::digest(&upload)));

    // The audit trail has the client's address: the proxy's word for it, never the spoof.
    let audit: Value = client
        .get(format!("{proxy}/v1/audit?event=action.submit"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["127.0.0.2", "127.0.0.2", "127.0.0.2"], "{audit:#}");
    drop(nginx);
    gw.stop.cancel();
}
