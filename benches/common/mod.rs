//! What the benchmarks read of their processes, once: `/proc` fields (Linux).

#![allow(dead_code)] // each benchmark uses part of it

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU-seconds of this process plus its reaped children (`utime stime cutime cstime`).
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(4).filter_map(|x| x.parse().ok()).collect();
    Some(f.iter().sum::<u64>() as f64 / clock_ticks())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 when it cannot say).
pub(crate) fn clock_ticks() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `action` (a finished action's JSON) with every run: an answer carries the first 100 and
/// `runs_next_cursor`; the rest are read from `/v1/actions/{id}/runs`, so the checks of a
/// benchmark see every target.
pub(crate) async fn with_all_runs(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    mut action: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let id = action["id"].as_str().context("action id")?.to_owned();
    let mut cursor = action["runs_next_cursor"].as_str().map(str::to_owned);
    while let Some(after) = cursor {
        let page: serde_json::Value = http
            .get(format!("{base}/v1/actions/{id}/runs?limit=500&cursor={after}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let items = page["items"].as_array().context("runs page")?.clone();
        action["runs"].as_array_mut().context("runs")?.extend(items);
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    Ok(action)
}

/// User + system CPU-seconds of process `pid` so far (`utime stime` of `/proc/<pid>/stat`).
pub(crate) fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    (f.len() == 2).then(|| f.iter().sum::<u64>() as f64 / clock_ticks())
}

/// What a result row names the machine by: `nproc` and the CPU model of `/proc/cpuinfo`.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} × {model}")
}

/// The commit the numbers are of (`git rev-parse --short HEAD`, with `+dirty` when the tree
/// has changes to tracked files), of the tree this benchmark was built from, whatever the
/// working directory it runs in.
pub(crate) fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{head}+dirty") } else { head }
}

/// A new, empty database on the PostgreSQL server of `base` (a URL ending in a database
/// name); its URL. Each setup gets its own, so no run sees another's rows.
pub(crate) async fn fresh_postgres_database(base: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use sqlx::Connection as _;
    let name = format!("edrgate_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(base).await.context("connecting to PostgreSQL")?;
    sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (prefix, _) = base.rsplit_once('/').context("a URL ending in a database name")?;
    Ok(format!("{prefix}/{name}"))
}

/// A gateway as its own process (`edrgate serve --config FILE`), so its memory and CPU are
/// its own; stopped with SIGTERM (then SIGKILL) when dropped.
pub(crate) struct GatewayProcess {
    pub(crate) child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) base: String,
    pub(crate) log: std::path::PathBuf,
}

impl GatewayProcess {
    /// Writes `config` (TOML without `[server]`; a free port is added) to `dir/<name>.toml`,
    /// starts `binary` with `RUST_LOG=<log_level>`, its stderr to `dir/<name>.log`, and waits
    /// until `/readyz` answers 2xx (at most 30 s, else the error carries the log's tail).
    pub(crate) async fn start(
        binary: &std::path::Path,
        dir: &std::path::Path,
        name: &str,
        config: &str,
        log_level: &str,
    ) -> anyhow::Result<GatewayProcess> {
        use anyhow::Context as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{config}"))?;
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(binary)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", log_level)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let gateway = GatewayProcess { child, base: format!("http://127.0.0.1:{port}"), log };
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build()?;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(30) {
            if let Ok(r) = http.get(format!("{}/readyz", gateway.base)).send().await
                && r.status().is_success()
            {
                return Ok(gateway);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "gateway {name} was not ready in 30 s; its log ends:\n{}",
            gateway.log_tail(20)
        )
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of its log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop, then make sure.
        let _ =
            std::process::Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
