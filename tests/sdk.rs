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
//! - **crowdstrike-falconpy 1.6.6** (CrowdStrike's SDK): `OAuth2` with `base_url` pointed at
//!   the simulator (its certificate trusted through `REQUESTS_CA_BUNDLE`) (a URL outside FalconPy's cloud table keeps it: the
//!   simulator's `X-Cs-Region: us-1` matches FalconPy's fallback region, so no autodiscovery
//!   switch), `Hosts` FQL lookup and details, `RealTimeResponse` session, `ps`, `get`, the
//!   `list_files_v2` poll and the 7z download, opened with py7zr and the password `infected`.
//!
//! - **standardwebhooks 1.3.0** (the Standard Webhooks reference library, `libraries/python`):
//!   a receiver that verifies every delivery of the gateway's webhooks (a subscription made
//!   through the API, before and after a secret rotation, one of the configuration's, and a
//!   per-action callback) with `Webhook(secret).verify`, and checks that the library refuses a
//!   tampered body and a replay once the timestamp is past its 5-minute tolerance.
//!
//! The SDKs live in a venv `.ci/sdk-venv` makes (pinned versions); its python is
//! `EDRGATE_TEST_SDK_PYTHON`, which `.ci/run` sets. Without it the tests print that they were
//! skipped and pass.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edrgate_simkit::Sim;
use serde_json::Value;

mod common;

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

/// FalconPy's own service classes, unchanged but for `base_url` and the CA (`ssl_verify`):
/// token, host lookup by FQL, a single RTR session, `ps`, and a get-file retrieval the way
/// FalconPy's `samples/rtr/get_file_from_hosts.py` does it (poll `list_files_v2` until the
/// upload is complete, download the 7z, extract it with py7zr and the password `infected`).
const FALCONPY: &str = r#"
import io, json, os, sys, tempfile, time
import py7zr
from falconpy import OAuth2, Hosts, RealTimeResponse

BASE, CA, CLIENT_ID, SECRET, HOST, PATH = sys.argv[1:7]
# FalconPy's `ssl_verify` is a bool (a CA path is ignored); requests trusts a private CA
# through REQUESTS_CA_BUNDLE, as a deployment behind a TLS-inspecting proxy would set it.
os.environ["REQUESTS_CA_BUNDLE"] = CA
auth = OAuth2(client_id=CLIENT_ID, client_secret=SECRET, base_url=BASE)
hosts = Hosts(auth_object=auth)
rtr = RealTimeResponse(auth_object=auth)

def ok(r, status=(200, 201)):
    assert r["status_code"] in status, r
    return r["body"]

def deleted(r):
    # A 204 carries no body and so no content type: FalconPy hands back the empty bytes.
    assert r == b"" or (isinstance(r, dict) and r["status_code"] in (200, 204)), r

def wait(check, **kw):
    deadline = time.time() + 30
    while time.time() < deadline:
        res = ok(check(**kw))["resources"][0]
        if res["complete"]:
            return res
        time.sleep(0.1)
    raise SystemExit("command did not complete")

aid = ok(hosts.query_devices_by_filter(filter=f"hostname:'{HOST}'"))["resources"][0]
device = ok(hosts.get_device_details(ids=aid))["resources"][0]
session = ok(rtr.init_session(device_id=aid, queue_offline=False))["resources"][0]["session_id"]

ps = ok(rtr.execute_command(base_command="ps", command_string="ps", session_id=session))
ps = wait(rtr.check_command_status, cloud_request_id=ps["resources"][0]["cloud_request_id"], sequence_id=0)

get = ok(rtr.execute_active_responder_command(
    base_command="get", command_string=f"get {PATH}", session_id=session))
request = get["resources"][0]["cloud_request_id"]
wait(rtr.check_active_responder_command_status, cloud_request_id=request, sequence_id=0)
deadline, entry = time.time() + 30, None
while entry is None and time.time() < deadline:
    files = ok(rtr.list_files_v2(session_id=session))["resources"]
    entry = next((f for f in files if f["cloud_request_id"] == request and f["complete"]), None)
    time.sleep(0.1)
assert entry is not None, "the file never finished uploading"
archive = rtr.get_extracted_file_contents(session_id=session, sha256=entry["sha256"], filename="note.txt")
assert isinstance(archive, bytes), archive
out = tempfile.mkdtemp()
with py7zr.SevenZipFile(io.BytesIO(archive), password="infected") as z:
    names = z.getnames()
    z.extractall(path=out)
with open(os.path.join(out, names[0]), "rb") as f:
    content = f.read()
deleted(rtr.delete_file_v2(ids=entry["id"], session_id=session))
deleted(rtr.delete_session(session_id=session))
print(json.dumps({
    "aid": aid,
    "hostname": device["hostname"],
    "platform": device["platform_name"],
    "ps_lines": len(ps["stdout"].splitlines()),
    "archive_entries": names,
    "sha256": entry["sha256"],
    "note": content.decode("latin-1"),
}))
"#;

#[tokio::test]
async fn falconpy_rtr_flow_against_the_crowdstrike_simulator() {
    use edrgate_crowdstrike_sim::{
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, NOTE_PATH_WINDOWS, NOTE_TXT, SimConfig, Simulator,
    };
    let Some(python) = python() else { return };
    let sim = Simulator::new(SimConfig {
        command_delay: Duration::from_millis(50),
        upload_delay: Duration::from_millis(100),
        ..SimConfig::default()
    });
    let addr = sim.spawn_tls().await.expect("bind simulator");
    let base = format!("https://127.0.0.1:{}", addr.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = sim.cert_pem().expect("cert");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, &cert).expect("write cert");
    let host = "CS-WIN-0001";
    let args = vec![
        base.clone(),
        ca.display().to_string(),
        DEFAULT_CLIENT_ID.to_owned(),
        DEFAULT_CLIENT_SECRET.to_owned(),
        host.to_owned(),
        NOTE_PATH_WINDOWS.to_owned(),
    ];
    let out = run_script(&python, dir.path(), "falconpy_rtr.py", FALCONPY, args).await;

    assert_eq!(out["aid"].as_str(), sim.device_id(host).as_deref(), "{out}");
    assert_eq!((&out["hostname"], &out["platform"]), (&host.into(), &"Windows".into()), "{out}");
    assert!(out["ps_lines"].as_u64().unwrap_or(0) > 2, "a header and processes: {out}");
    assert_eq!(out["archive_entries"], serde_json::json!(["note.txt"]), "{out}");
    assert_eq!(out["note"].as_str().map(str::as_bytes), Some(NOTE_TXT), "{out}");
    let sha = out["sha256"].as_str().unwrap_or_default();
    assert_eq!(sha, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(NOTE_TXT)), "{out}");
    // A read-only flow: nothing was executed on the host.
    let c = counters(&base, &cert).await;
    assert_eq!(c["executed"], serde_json::json!({}), "{c}");
}

/// A webhook receiver that verifies with the Standard Webhooks library: serves on loopback,
/// writes its port to `DIR/port`, and for every POST appends to `DIR/received.jsonl` the path,
/// the headers' id, which of the secrets in `DIR/secrets.json` (re-read each time) verify the
/// delivery, and whether the library refuses it tampered and replayed 10 minutes later.
const WEBHOOK_RECEIVER: &str = r#"
import json, os, sys, threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
import standardwebhooks.webhooks as swh
from standardwebhooks import Webhook

DIR = sys.argv[1]
lock = threading.Lock()

def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except swh.WebhookVerificationError:
        return False

class Later(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(minutes=10)

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with open(os.path.join(DIR, "secrets.json")) as f:
            secrets = json.load(f)
        verified = {name: verifies(secret, body, headers) for name, secret in secrets.items()}
        tampered = {name: verifies(secret, body + b" ", headers) for name, secret in secrets.items()}
        with mock.patch.object(swh, "datetime", Later):
            replayed = {name: verifies(secret, body, headers) for name, secret in secrets.items()}
        record = {
            "path": self.path,
            "id": headers.get("webhook-id"),
            "type": json.loads(body)["type"],
            "signatures": len(headers.get("webhook-signature", "").split(" ")),
            "verified": sorted(n for n, ok in verified.items() if ok),
            "tampered_verified": sorted(n for n, ok in tampered.items() if ok),
            "replay_verified": sorted(n for n, ok in replayed.items() if ok),
        }
        with lock, open(os.path.join(DIR, "received.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
"#;

/// The deliveries the receiver recorded, once `count` are there.
async fn webhook_records(dir: &Path, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(dir.join("received.jsonl")).unwrap_or_default();
        let records: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("record")).collect();
        if records.len() >= count {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} deliveries: {text}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_library_verifies_the_deliveries() {
    use edrgate_carbonblack_sim::{SimConfig, Simulator};
    use serde_json::json;
    let Some(python) = python() else { return };
    const CONFIG_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const CALLBACK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, WEBHOOK_RECEIVER).expect("write receiver");
    let secrets = |pairs: &[(&str, &str)]| {
        let map: serde_json::Map<String, Value> =
            pairs.iter().map(|(n, s)| ((*n).to_owned(), json!(s))).collect();
        std::fs::write(dir.path().join("secrets.json"), Value::Object(map).to_string()).unwrap();
    };
    secrets(&[("config", CONFIG_SECRET), ("callback", CALLBACK_SECRET)]);
    // Killed and reaped however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let receiver =
        Child(Command::new(&python).arg(&script).arg(dir.path()).spawn().expect("receiver"));
    let port = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "the receiver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let sim = Simulator::new(SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(10),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    });
    let sim = sim.spawn().await.expect("simulator");
    let gw = common::Gateway::builder()
        .backend("acme", "cb", &common::Backend::carbonblack(sim).with("poll_interval_ms = 20"))
        .config(&format!(
            r#"
            [webhooks]
            allow_http = true
            allowed_networks = ["127.0.0.0/8"]
            [tenants.acme.webhooks.subscriptions.soar]
            url = "{}"
            events = ["action.finished"]
            secrets = ["{CONFIG_SECRET}"]
            [tenants.acme.webhooks.callback]
            secrets = ["{CALLBACK_SECRET}"]
            "#,
            url("/config")
        ))
        .start()
        .await;
    let acme = common::token("acme");
    let (status, created) = gw
        .post(&acme, "/v1/webhooks", &json!({"url": url("/api"), "events": ["action.finished"]}))
        .await;
    assert_eq!(status, 201, "{created}");
    let first = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    secrets(&[("config", CONFIG_SECRET), ("callback", CALLBACK_SECRET), ("api", &first)]);
    let body = json!({
        "targets": [{"backend": "cb", "device_id": "1"}],
        "commands": [{"type": "process_list"}],
        "callback_url": url("/callback"),
    });
    gw.run(&acme, &body).await;
    let before = webhook_records(dir.path(), 3).await;

    let (status, rotated) =
        gw.post(&acme, &format!("/v1/webhooks/{id}/rotate-secret"), &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    secrets(&[
        ("config", CONFIG_SECRET),
        ("callback", CALLBACK_SECRET),
        ("api", &first),
        ("api_new", &second),
    ]);
    let mut body = body;
    body.as_object_mut().unwrap().remove("callback_url");
    gw.run(&acme, &body).await;
    let records = webhook_records(dir.path(), 5).await;
    drop(receiver);

    let find = |records: &[Value], path: &str| -> Vec<Value> {
        records.iter().filter(|r| r["path"] == path).cloned().collect()
    };
    // Before the rotation: each destination's deliveries verify with its secret only.
    for (path, name) in [("/api", "api"), ("/config", "config"), ("/callback", "callback")] {
        let got = find(&before, path);
        assert_eq!(got.len(), 1, "{path}: {before:#?}");
        assert_eq!(got[0]["type"], "action.finished");
        assert_eq!(got[0]["verified"], json!([name]), "{path}: {got:#?}");
    }
    // One event, one id at every destination.
    assert_eq!(find(&before, "/api")[0]["id"], find(&before, "/callback")[0]["id"]);
    // After: two signatures, and the library accepts the old and the new secret.
    let after = &find(&records, "/api")[1];
    assert_eq!(after["signatures"], 2, "{after}");
    assert_eq!(after["verified"], json!(["api", "api_new"]), "{after}");
    // Tampered or replayed past the tolerance, the library refuses every delivery.
    for r in &records {
        assert_eq!(r["tampered_verified"], json!([]), "{r}");
        assert_eq!(r["replay_verified"], json!([]), "{r}");
    }
}
