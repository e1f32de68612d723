//! The vendors' own Python SDKs against the simulators (issue 12, point 22): each simulator is
//! started in-process on loopback over its self-signed TLS, a small script per SDK drives it as
//! a user of that SDK would, and the test checks the script's output and the simulator's
//! counters (`GET /_sim/counters`).
//!
//! - **cbapi 2.0.0** (Carbon Black's SDK, `CbResponseAPI`): `select(Sensor, 1).lr_session()`,
//!   then `list_processes`, `get_file` and `list_directory`, the calls
//!   `deploy/bench/cbapi_fanout.py` also makes (HTTPS with `ssl_verify=False`, since cbapi
//!   refuses plain HTTP).
//! - **cybereason 0.6.3** (the `cybereason` PyPI client, github.com/forensic-security/cybereason):
//!   form login (`Cybereason.login`, `follow_redirects=True`), `get_sensors()` (paged
//!   `POST /rest/sensors/query`), and `download_file(pylum_id, path, extract=True)`, the SDK's
//!   file fetch (`POST /rest/file-search/fetch-direct`) and its own extraction (pyzipper
//!   `AESZipFile`, password `cautionhandlewithcare`, `src/cybereason/sensors.py`). The client's
//!   host is fixed (`https://{tenant}.cybereason.net`, `client.py` `Cybereason.session`), so the
//!   script overrides that one property to point the same `httpx.AsyncClient` (same headers,
//!   HTTP/2) at the simulator, trusting its certificate; everything else is the SDK's code.
//!
//! The SDKs live in a venv `.ci/sdk-venv` makes (pinned versions); its python is
//! `EDRGATE_TEST_SDK_PYTHON`, which `.ci/run` sets. Without it the tests print that they were
//! skipped and pass.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edrgate_simkit::Sim;
use serde_json::Value;

const PYTHON_ENV: &str = "EDRGATE_TEST_SDK_PYTHON";

fn python() -> Option<String> {
    let p = std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty());
    if p.is_none() {
        eprintln!("skipped: {PYTHON_ENV} is not set (.ci/sdk-venv makes the SDK venv)");
    }
    p
}

/// Runs `script` with the SDK python, arguments after it, in a blocking thread (the simulator
/// runs on this runtime); the last stdout line that is a JSON object.
async fn run_script(
    python: &str,
    dir: &Path,
    name: &str,
    script: &str,
    args: Vec<String>,
) -> Value {
    let file = dir.join(name);
    std::fs::write(&file, script).expect("write script");
    let mut cmd = Command::new(python);
    cmd.arg(&file).args(&args).current_dir(dir);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| panic!("{name} printed no result:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).expect("result json")
}

/// `GET /_sim/counters` over the simulator's TLS, trusting its certificate.
async fn counters(base: &str, cert_pem: &str) -> Value {
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("cert");
    let http = reqwest::Client::builder().add_root_certificate(cert).build().expect("client");
    let resp = http.get(format!("{base}/_sim/counters")).send().await.expect("counters");
    assert!(resp.status().is_success());
    resp.json().await.expect("counters json")
}

const CBAPI: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")  # urllib3's InsecureRequestWarning (ssl_verify=False)
from cbapi.response import CbResponseAPI, Sensor

url, token = sys.argv[1], sys.argv[2]
cb = CbResponseAPI(url=url, token=token, ssl_verify=False)
sensor = cb.select(Sensor, 1)
with sensor.lr_session() as lr:
    processes = lr.list_processes()
    note = lr.get_file("C:\\evidence\\note.txt")
    listing = lr.list_directory("C:\\evidence\\")
print(json.dumps({
    "hostname": sensor.hostname,
    "processes": len(processes),
    "process_names": sorted({p["path"].split("\\")[-1].lower() for p in processes})[:50],
    "note": note.decode("latin-1"),
    "listing": sorted(e["filename"] for e in listing),
}))
"#;

#[tokio::test]
async fn cbapi_live_response_against_the_carbon_black_simulator() {
    use edrgate_carbonblack_sim::{DEFAULT_TOKEN, NOTE_TXT, SimConfig, Simulator};
    let Some(python) = python() else { return };
    let sim = Simulator::new(SimConfig {
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    });
    let addr = sim.spawn_tls().await.expect("bind simulator");
    let base = format!("https://127.0.0.1:{}", addr.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let args = vec![base.clone(), DEFAULT_TOKEN.to_owned()];
    let out = run_script(&python, dir.path(), "cbapi_lr.py", CBAPI, args).await;

    assert_eq!(out["hostname"], "WIN-0001", "{out}");
    assert!(out["processes"].as_u64().unwrap_or(0) > 5, "{out}");
    let names: Vec<&str> =
        out["process_names"].as_array().expect("names").iter().filter_map(Value::as_str).collect();
    assert!(names.contains(&"explorer.exe") || names.contains(&"lsass.exe"), "{out}");
    assert_eq!(out["note"], NOTE_TXT, "{out}");
    let listing: Vec<&str> =
        out["listing"].as_array().expect("listing").iter().filter_map(Value::as_str).collect();
    assert!(listing.contains(&"note.txt") && listing.contains(&"big.bin"), "{out}");

    let c = counters(&base, &sim.cert_pem().expect("cert")).await;
    // One session, opened and closed by the context manager; each command executed once.
    let n = &c["counters"];
    assert_eq!((&n["sessions_created"], &n["sessions_closed"]), (&1.into(), &1.into()), "{c}");
    for command in ["process list", "get file", "directory list"] {
        assert_eq!(c["executed"][command], 1, "{command}: {c}");
    }
    assert_eq!(n["downloads"], 1, "{c}");
}

const CYBEREASON: &str = r#"
import asyncio, json, sys, tempfile
from functools import cached_property
from pathlib import Path

from httpx import AsyncClient
from cybereason import Cybereason, __version__


class SimCybereason(Cybereason):
    """The SDK as published; only its fixed host (https://{tenant}.cybereason.net) is replaced."""

    @cached_property
    def session(self):
        return AsyncClient(
            base_url=BASE,
            headers={
                "content-type": "application/json",
                "user-agent": f'python-cybereason/{".".join(map(str, __version__))}',
            },
            timeout=self.timeout,
            http2=True,
            verify=CA,
        )


async def main():
    async with SimCybereason(tenant="sim", username=USER, password=PASSWORD) as client:
        sensors = [s async for s in client.get_sensors()]
        first = sensors[0]
        dest = Path(tempfile.mkdtemp())
        out = await client.download_file(
            first["pylumId"], "C:\\evidence\\note.txt", dest, extract=True
        )
        files = sorted(p.name for p in Path(out).rglob("*") if p.is_file())
        note = (Path(out) / files[0]).read_bytes().decode("latin-1") if files else None
        print(json.dumps({
            "sensors": len(sensors),
            "machine": first["machineName"],
            "status": first["status"],
            "extracted": files,
            "note": note,
        }))


BASE, CA, USER, PASSWORD = sys.argv[1:5]
asyncio.run(main())
"#;

#[tokio::test]
async fn cybereason_client_against_the_cybereason_simulator() {
    use edrgate_cybereason_sim::{
        DEFAULT_PASSWORD, DEFAULT_USERNAME, NOTE_TXT, SimConfig, Simulator,
    };
    let Some(python) = python() else { return };
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn_tls().await.expect("bind simulator");
    let base = format!("https://127.0.0.1:{}", addr.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = sim.cert_pem().expect("cert");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, &cert).expect("write cert");
    let args = vec![
        base.clone(),
        ca.display().to_string(),
        DEFAULT_USERNAME.to_owned(),
        DEFAULT_PASSWORD.to_owned(),
    ];
    let out = run_script(&python, dir.path(), "cybereason_fetch.py", CYBEREASON, args).await;

    assert_eq!(out["sensors"].as_u64(), Some(sim.hostnames().len() as u64), "{out}");
    assert_eq!(out["machine"], sim.hostnames()[0].as_str(), "{out}");
    assert_eq!(out["extracted"], serde_json::json!(["note.txt"]), "{out}");
    assert_eq!(out["note"].as_str().map(str::as_bytes), Some(NOTE_TXT), "{out}");

    let c = counters(&base, &cert).await;
    // One form login (no session redirects: the cookie held), one direct fetch executed.
    let n = &c["counters"];
    assert_eq!((n["logins"].as_u64(), n["direct_fetches"].as_u64()), (Some(1), Some(1)), "{c}");
    assert_eq!((&n["login_failures"], &n["session_redirects"]), (&0.into(), &0.into()), "{c}");
    assert_eq!(c["executed"]["fetch-direct"], 1, "{c}");
}
