//! Benchmark (not a test): status reads (`GET /v1/actions/{id}` of a finished action) with
//! RS256 bearer tokens validated against a JWKS, against nginx serving the same body as a
//! static file, in alternating runs; then the cost of JSON request logs. Results:
//! `deploy/BENCHMARKS.md`, "Status reads with RS256 from a JWKS".
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench status_reads
//! CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench status_reads -- --help
//! ```
//!
//! Processes: this driver hosts the Carbon Black simulator and the JWKS endpoint; the gateway
//! is the release `edrgate serve --config FILE` binary and nginx is `/usr/sbin/nginx` with one
//! worker, each a process of its own, measured one after the other by the same `wrk`. The
//! driver fails (non-zero exit) when a run failed: non-2xx answers, socket errors, no
//! requests, or a gateway body other than the action's JSON.

use edrgate_simkit::Sim as _;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use edrgate::auth::Permission;
use edrgate::config::ScopeNames;
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

mod common;
use common::clock_ticks;

const TENANT: &str = "bench";
const ISSUER: &str = "https://idp.bench";
const AUDIENCE: &str = "edrgate";
const KID: &str = "bench-rs256";

#[derive(Debug, Parser)]
#[command(
    about = "edrgate status reads with RS256 from a JWKS vs nginx (see deploy/BENCHMARKS.md)"
)]
struct Args {
    /// The gateway binary (release build of this workspace by default).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_edrgate"))]
    gateway: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Alternating runs of each (gateway, nginx).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// wrk duration, seconds.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    #[arg(long, default_value_t = 1)]
    wrk_threads: u32,
    #[arg(long, default_value_t = 32)]
    wrk_connections: u32,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(run(args))
}

/// One wrk run.
#[derive(Clone, Debug)]
struct Run {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU-seconds of the server process during the run, per second of the run.
    server_cpu: Option<f64>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut out = String::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let dirty =
        !shell(&format!("git -C '{root}' status --porcelain -- src adapters schemas")).is_empty();
    let _ = writeln!(out, "date: {}", shell("date -u +%Y-%m-%dT%H:%M:%SZ"));
    let _ = writeln!(
        out,
        "commit: {}{}",
        shell(&format!("git -C '{root}' rev-parse --short HEAD")),
        if dirty { " (with uncommitted changes in src/, adapters/ or schemas/)" } else { "" }
    );
    let _ = writeln!(
        out,
        "machine: {} cores ({}), {}",
        shell("nproc"),
        shell("sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n1"),
        shell("uname -sr"),
    );
    let _ = writeln!(
        out,
        "wrk -t{} -c{} -d{}s --latency, {} alternating runs each",
        args.wrk_threads, args.wrk_connections, args.wrk_seconds, args.runs
    );
    print!("{out}");

    let dir = tempfile::tempdir()?;
    let sim = Simulator::new(SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(50),
        command_latency: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let sim_addr = sim.spawn_tls().await.context("simulator")?;
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.cert_pem()?)?;

    // An RS256 key, published in a JWKS on loopback.
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
    let private: aws_lc_rs::encoding::Pkcs8V1Der =
        pair.as_der().map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
    let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    jwk.common.key_id = Some(KID.to_owned());
    let jwks_url = serve_jwks(json!({ "keys": [jwk] })).await?;
    let token = rs256_token(&encoding)?;
    let header = format!("Authorization: Bearer {token}");

    let config = write_config(dir.path(), &jwks_url, sim_addr, &ca)?;
    let quiet = Gateway::start(&args, dir.path(), &config, "warn", &token).await?;
    let id = finished_action(&quiet).await?;
    let path = format!("/v1/actions/{id}");
    // The body served, checked against the action as the long-poll gives it.
    let (body, content_type) = quiet.get_bytes(&path).await?;
    let polled = quiet.get_json(&format!("{path}?wait=1")).await?;
    let got: Value = serde_json::from_slice(&body).context("the gateway's body is not JSON")?;
    ensure!(got == polled, "the status read differs from the action:\n{got}\n{polled}");
    ensure!(got["status"] == "succeeded", "the action did not succeed: {got}");
    ensure!(content_type == "application/json", "content type {content_type}");
    let _ = writeln!(out, "body: {} bytes of {content_type} (action {id}, succeeded)", body.len());

    let nginx = Nginx::start(&args.nginx, dir.path(), &path, &body).await?;
    let (nginx_body, nginx_type) = nginx.get_bytes(&path).await?;
    ensure!(nginx_body == body && nginx_type == content_type, "nginx serves another body");

    let gateway_url = format!("{}{path}", quiet.base);
    let nginx_url = format!("{}{path}", nginx.base);
    let mut table = Vec::new();
    for i in 1..=args.runs {
        let g = wrk(&args, &gateway_url, Some(&header), Some(quiet.pid())).await?;
        quiet.check_body(&path, &body).await?;
        let n = wrk(&args, &nginx_url, None, Some(nginx.worker_pid()?)).await?;
        println!("run {i}: gateway {g:?}, nginx {n:?}");
        table.push((g, n));
    }
    drop(nginx);
    drop(quiet);

    // The cost of the request logs: the same gateway (same database) with JSON logs at
    // `info` (a line per request, to a file), then again at `warn`.
    let mut logs = Vec::new();
    for level in ["info", "warn"] {
        let gw = Gateway::start(&args, dir.path(), &config, level, &token).await?;
        gw.check_body(&path, &body).await?;
        let r = wrk(&args, &gateway_url, Some(&header), Some(gw.pid())).await?;
        let lines = if level == "info" { gw.log_lines() } else { 0 };
        println!("logs at {level}: {r:?}, {lines} log lines");
        logs.push((level, r, lines));
    }

    let _ = writeln!(
        out,
        "\n| run | gateway req/s | p50 | p99 | gateway CPU | nginx req/s | p50 | p99 | nginx CPU | gateway/nginx |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (i, (g, n)) in table.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.2} |",
            i + 1,
            g.requests_per_s,
            g.p50_ms,
            g.p99_ms,
            cores(g.server_cpu),
            n.requests_per_s,
            n.p50_ms,
            n.p99_ms,
            cores(n.server_cpu),
            g.requests_per_s / n.requests_per_s
        );
    }
    let _ = writeln!(out, "\n| gateway logs | req/s | p50 | p99 | gateway CPU | log lines |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (level, r, lines) in &logs {
        let what = if *level == "info" {
            "`RUST_LOG=info`, `EDRGATE_LOG_FORMAT=json` (a line per request, to a file)"
        } else {
            "`RUST_LOG=warn`"
        };
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2} ms | {:.2} ms | {} | {lines} |",
            r.requests_per_s,
            r.p50_ms,
            r.p99_ms,
            cores(r.server_cpu)
        );
    }
    let worst = table.iter().map(|(g, _)| g.requests_per_s).fold(f64::INFINITY, f64::min);
    let worst_p99 = table.iter().map(|(g, _)| g.p99_ms).fold(0.0, f64::max);
    let worst_ratio = table
        .iter()
        .map(|(g, n)| g.requests_per_s / n.requests_per_s)
        .fold(f64::INFINITY, f64::min);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let _ = writeln!(
        out,
        "\ngoals (worst of the runs, logs at warn): >= 30000 req/s: {worst:.0} ({}); p99 <= 5 ms: {worst_p99:.2} ms ({}); >= 0.3x nginx: {worst_ratio:.2}x ({})",
        verdict(worst >= 30_000.0),
        verdict(worst_p99 <= 5.0),
        verdict(worst_ratio >= 0.3),
    );
    println!("\n{out}");
    Ok(())
}

fn cores(cpu: Option<f64>) -> String {
    cpu.map_or("?".into(), |c| format!("{c:.2} cores"))
}

fn pem(tag: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n", lines.join("\n"))
}

/// An RS256 token for the bench tenant with every permission, valid 4 hours.
fn rs256_token(key: &EncodingKey) -> anyhow::Result<String> {
    let names = ScopeNames::default();
    let scope = Permission::EVERY.iter().map(|p| p.scope(&names)).collect::<Vec<_>>().join(" ");
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "tenant": TENANT,
        "iat": now, "nbf": now, "exp": now + 4 * 3600, "scope": scope,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

async fn serve_jwks(document: Value) -> anyhow::Result<String> {
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

fn write_config(dir: &Path, jwks: &str, sim: SocketAddr, ca: &Path) -> anyhow::Result<PathBuf> {
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
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks = [{{ url = "{jwks}" }}]
[tenants.{TENANT}.backends.cb]
kind = "carbonblack"
url = "https://127.0.0.1:{sim_port}"
token = "{DEFAULT_TOKEN}"
ca_file = "{ca}"
"#,
        db = dir.join("edrgate.db").display(),
        files = dir.join("files").display(),
        sim_port = sim.port(),
        ca = ca.display(),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

struct Gateway {
    child: Child,
    base: String,
    token: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Gateway {
    async fn start(
        args: &Args,
        dir: &Path,
        config: &Path,
        level: &str,
        token: &str,
    ) -> anyhow::Result<Gateway> {
        let text = std::fs::read_to_string(config)?;
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .context("listen address")?;
        let log = dir.join(format!("gateway-{level}.log"));
        let child = Process::new(&args.gateway)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", level)
            .env("EDRGATE_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", args.gateway.display()))?;
        let gateway = Gateway {
            child,
            base: format!("http://{listen}"),
            token: token.to_owned(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
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

    fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let r =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = r.bytes().await?.to_vec();
        ensure!(status.is_success(), "GET {path}: {status} {}", String::from_utf8_lossy(&body));
        Ok((body, content_type))
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&self.get_bytes(path).await?.0)?)
    }

    /// Fails unless the status read answers exactly `body`.
    async fn check_body(&self, path: &str, body: &[u8]) -> anyhow::Result<()> {
        let (got, _) = self.get_bytes(path).await?;
        ensure!(got == body, "the gateway's body changed:\n{}", String::from_utf8_lossy(&got));
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL after 15 s.
fn stop(child: &mut Child) {
    let _ = Process::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A submitted `process_list` on the simulator's sensor, long-polled until finished.
async fn finished_action(gw: &Gateway) -> anyhow::Result<String> {
    let r = gw
        .http
        .post(format!("{}/v1/actions", gw.base))
        .bearer_auth(&gw.token)
        .json(&json!({
            "targets": [{"backend": "cb", "device_id": "1"}],
            "commands": [{"type": "process_list"}],
            "comment": "status read benchmark",
        }))
        .send()
        .await?;
    let status = r.status();
    let action: Value = r.json().await?;
    ensure!(status.is_success(), "submit: {status} {action}");
    let id = action["id"].as_str().context("action id")?.to_owned();
    let started = Instant::now();
    loop {
        let action = gw.get_json(&format!("/v1/actions/{id}?wait=30")).await?;
        match action["status"].as_str() {
            Some("succeeded") => return Ok(id),
            Some("queued" | "dispatched" | "running") => {}
            _ => bail!("the action did not succeed: {action}"),
        }
        ensure!(started.elapsed() < Duration::from_secs(120), "the action did not finish");
    }
}

struct Nginx {
    child: Child,
    base: String,
    pid_file: PathBuf,
    http: reqwest::Client,
}

impl Nginx {
    /// nginx with one worker serving `body` at `path` as `application/json`.
    async fn start(nginx: &Path, dir: &Path, path: &str, body: &[u8]) -> anyhow::Result<Nginx> {
        let prefix = dir.join("nginx");
        let root = prefix.join("root");
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().context("a path with a parent")?)?;
        std::fs::write(&file, body)?;
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(prefix.join(temp))?;
        }
        // The worker (`nobody` when started as root) must read the file.
        let _ = Process::new("chmod").arg("-R").arg("a+rX").arg(dir).status();
        let port = free_port()?;
        let pid_file = prefix.join("nginx.pid");
        let p = prefix.display();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {pid};
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ default_type application/json; }}
    }}
}}
"#,
            pid = pid_file.display(),
            root = root.display(),
        );
        let conf_file = prefix.join("nginx.conf");
        std::fs::write(&conf_file, conf)?;
        let child = Process::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let nginx = Nginx { child, base: format!("http://127.0.0.1:{port}"), pid_file, http };
        let started = Instant::now();
        loop {
            if let Ok(r) = nginx.http.get(format!("{}{path}", nginx.base)).send().await
                && r.status().is_success()
            {
                return Ok(nginx);
            }
            if started.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                bail!("nginx did not come up in 10 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        ensure!(r.status().is_success(), "nginx: {}", r.status());
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((r.bytes().await?.to_vec(), content_type))
    }

    /// The worker process (the master only accepts signals).
    fn worker_pid(&self) -> anyhow::Result<u32> {
        let master = std::fs::read_to_string(&self.pid_file)?.trim().parse::<u32>()?;
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        Ok(children.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(master))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Runs wrk on `url`; fails on non-2xx answers, socket errors or no requests.
async fn wrk(
    args: &Args,
    url: &str,
    header: Option<&str>,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let mut cmd = Process::new("wrk");
    cmd.arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.wrk_connections))
        .arg(format!("-d{}s", args.wrk_seconds))
        .arg("--latency");
    if let Some(header) = header {
        cmd.arg("-H").arg(header);
    }
    cmd.arg(url);
    let cpu_before = pid.and_then(proc_cpu_seconds);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output()).await?.context("running wrk")?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(proc_cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["50%", v] => p50 = millis(v),
            ["99%", v] => p99 = millis(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                bail!("wrk on {url}: {n} non-2xx answers:\n{text}")
            }
            ["Socket", "errors:", ..] => bail!("wrk on {url}: socket errors:\n{text}"),
            _ => {}
        }
    }
    let (Some(requests_per_s), Some(p50_ms), Some(p99_ms), Some(requests)) =
        (rps, p50, p99, requests)
    else {
        bail!("cannot read wrk's output:\n{text}");
    };
    ensure!(requests > 0 && requests_per_s > 0.0, "wrk on {url}: no requests:\n{text}");
    let server_cpu = cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / elapsed);
    Ok(Run { requests_per_s, p50_ms, p99_ms, server_cpu })
}

/// wrk's `1.23ms`, `456.78us`, `1.02s`, in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// User + system CPU seconds of a process so far.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    Some(f.iter().sum::<u64>() as f64 / clock_ticks())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn shell(cmd: &str) -> String {
    Process::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
