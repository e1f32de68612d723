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
