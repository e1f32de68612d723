//! What the benchmarks read of their processes, once: `/proc` fields (Linux).

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
