//! The simulator on its own, over HTTP, as a browser-like client sees it: the behaviours of
//! §8 of `shared/vendor-apis/cybereason.md`.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::time::Duration;

use edrgate_cybereason_sim::{
    DEFAULT_PASSWORD, DEFAULT_TFA_USERNAME, DEFAULT_TOTP_SECRET, DEFAULT_USERNAME,
    DEFAULT_ZIP_PASSWORD, Faults, NOTE_TXT, Sim as _, SimConfig, SimUser, Simulator, StatsCasing,
};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_DISPOSITION, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn new(sim: &Simulator) -> Client {
        let addr = sim.spawn().await.unwrap();
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Client { http, base: format!("http://{addr}") }
    }

    /// `POST /login.html`: the response and the `JSESSIONID` it set.
    async fn login_form(&self, user: &str, password: &str) -> (reqwest::Response, Option<String>) {
        let r = self
            .http
            .post(format!("{}/login.html", self.base))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap();
        let cookie = r
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        (r, cookie)
    }

    async fn login(&self) -> String {
        let (r, cookie) = self.login_form(DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        cookie.unwrap()
    }

    async fn get(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).header(COOKIE, cookie).send().await.unwrap()
    }

    async fn post(&self, cookie: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, cookie)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_failures_return_the_login_page() {
    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let (r, cookie) = c.login_form(DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!((r.status(), r.headers()[LOCATION].to_str().unwrap()), (StatusCode::FOUND, "/"));
    let cookie = cookie.unwrap();
    let value = cookie.strip_prefix("JSESSIONID=").unwrap();
    assert!(
        value.len() == 32
            && value.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    );
    let app = c.get(&cookie, "/").await.text().await.unwrap();
    assert!(!app.contains("<app-login") && app.contains("<app-root"));

    // Bad password: redirected to an `error` URL, a cookie anyway, and the 200 login page.
    let (r, cookie) = c.login_form(DEFAULT_USERNAME, "wrong").await;
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(location.contains("error") && cookie.is_some());
    let page = c.get(&cookie.unwrap(), &location).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<title>Cybereason | Login</title>") && page.contains("<app-login>"));

    // Expired password: a `reset` URL.
    let mut old = SimUser::new("old@sim.example", DEFAULT_PASSWORD);
    old.password_expired = true;
    sim.set_users(vec![old]);
    let (r, _) = c.login_form("old@sim.example", DEFAULT_PASSWORD).await;
    assert!(r.headers()[LOCATION].to_str().unwrap().contains("reset"));
    assert_eq!((sim.counters().logins, sim.counters().login_failures), (1, 2));
}

#[tokio::test]
async fn two_factor_users_post_a_totp_code_to_the_root() {
    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let (_, cookie) = c.login_form(DEFAULT_TFA_USERNAME, DEFAULT_PASSWORD).await;
    let cookie = cookie.unwrap();
    // The current console's page is its Angular login shell: nothing says "two factor".
    let page = c.get(&cookie, "/").await.text().await.unwrap();
    assert!(page.contains("<app-login") && !page.contains("Two factor"), "{page}");
    // Not usable before the code.
    assert_eq!(c.get(&cookie, "/rest/sensors/allActions").await.status(), StatusCode::FOUND);
    let totp_post = |code: String| {
        c.http
            .post(format!("{}/", c.base))
            .header(COOKIE, cookie.clone())
            .form(&[("totpCode", code), ("submit", "Login".into())])
            .send()
    };
    let wrong = totp_post("000000".into()).await.unwrap();
    assert!(wrong.headers()[LOCATION].to_str().unwrap().contains("error"));
    let secret = totp_rs::Secret::try_from_base32(DEFAULT_TOTP_SECRET).unwrap();
    let code = totp_rs::Builder::new().with_secret(secret).build().unwrap().generate_current();
    let ok = totp_post(code.to_string()).await.unwrap();
    assert_eq!(ok.headers()[LOCATION].to_str().unwrap(), "/");
    assert_eq!(c.get(&cookie, "/rest/sensors/allActions").await.status(), StatusCode::OK);
    assert_eq!(sim.counters().totp_logins, 1);
}

#[tokio::test]
async fn rest_calls_without_a_live_session_are_redirected() {
    let sim = Simulator::new(SimConfig {
        session_lifetime: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let r = c.get("JSESSIONID=0123456789ABCDEF0123456789ABCDEF", "/rest/sensors/allActions").await;
    assert_eq!(
        (r.status(), r.headers()[LOCATION].to_str().unwrap()),
        (StatusCode::FOUND, "/login.html")
    );
    let cookie = c.login().await;
    assert_eq!(c.get(&cookie, "/rest/sensors/allActions").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(c.get(&cookie, "/rest/sensors/allActions").await.status(), StatusCode::FOUND);
    let cookie = c.login().await;
    sim.expire_sessions();
    assert_eq!(c.get(&cookie, "/rest/sensors/allActions").await.status(), StatusCode::FOUND);
    assert_eq!(sim.counters().session_redirects, 3);
}

#[tokio::test]
async fn roles_and_versions_gate_requests() {
    let sim = Simulator::new(SimConfig { version: "20.2.201".into(), ..SimConfig::default() });
    let c = Client::new(&sim).await;
    let admin = c.login().await;
    // IR tools are 21.1.81+: an older console answers 404.
    assert_eq!(c.get(&admin, "/rest/irtools/packages").await.status(), StatusCode::NOT_FOUND);
    let v: Value =
        c.get(&admin, "/rest/monitor/global/server/version/all").await.json().await.unwrap();
    assert_eq!(v["data"]["version"], "20.2.201");

    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let mut viewer = SimUser::new(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    viewer.roles = vec!["analyst_l3".into()];
    sim.set_users(vec![viewer]);
    let cookie = c.login().await;
    let r = c.post(&cookie, "/rest/sensors/query", &json!({})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("role"));
    // Responder L2 without two-factor authentication is not enough for IR tools (D5).
    let mut responder = SimUser::new(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    responder.roles = vec!["responder_l2".into()];
    sim.set_users(vec![responder]);
    let cookie = c.login().await;
    assert_eq!(c.get(&cookie, "/rest/irtools/packages").await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn sensor_queries_filter_and_page() {
    let sim = Simulator::new(SimConfig { machines: 7, ..SimConfig::default() });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let query = |body: Value| {
        let c = &c;
        let cookie = cookie.clone();
        async move { c.post(&cookie, "/rest/sensors/query", &body).await.json::<Value>().await.unwrap() }
    };
    let all = query(json!({})).await;
    assert_eq!(all["totalResults"], 7);
    let page = query(json!({"limit": 3, "offset": 3})).await;
    assert_eq!(page["sensors"][0]["machineName"], "CR-WS-0004");
    assert_eq!(page["hasMoreResults"], true);
    let last = query(json!({"limit": 3, "offset": 6})).await;
    assert_eq!(
        (last["sensors"].as_array().unwrap().len(), last["hasMoreResults"].as_bool()),
        (1, Some(false))
    );
    let one = query(json!({"filters": [{"fieldName": "machineName", "operator": "ContainsIgnoreCase", "values": ["ws-0002"]}]})).await;
    let s = &one["sensors"][0];
    assert_eq!(one["totalResults"], 1);
    assert!(s["sensorId"].as_str().unwrap().ends_with(s["pylumId"].as_str().unwrap()));
    assert!(s["guid"].as_str().unwrap().contains('.'));
    sim.set_archived("CR-WS-0001", true);
    let live = query(json!({"filters": [{"fieldName": "status", "operator": "NotEquals", "values": ["Archived"]}]})).await;
    assert_eq!(live["totalResults"], 6);

    // The other reading of `offset` (page index, C1), as a quirk.
    let sim =
        Simulator::new(SimConfig { machines: 7, offset_is_page: true, ..SimConfig::default() });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let page: Value = c
        .post(&cookie, "/rest/sensors/query", &json!({"limit": 3, "offset": 1}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["sensors"][0]["machineName"], "CR-WS-0004");
}

async fn sensor(c: &Client, cookie: &str, host: &str) -> Value {
    let body =
        json!({"filters": [{"fieldName": "machineName", "operator": "Equals", "values": [host]}]});
    let v: Value = c.post(cookie, "/rest/sensors/query", &body).await.json().await.unwrap();
    v["sensors"][0].clone()
}

async fn element(
    c: &Client,
    cookie: &str,
    host: &str,
    kind: &str,
    facet: &str,
    value: &str,
) -> String {
    let feature = match kind {
        "Process" => "processes",
        "File" => "files",
        _ => "registryEvents",
    };
    let q = json!({"queryPath": [
        {"requestedType": "Machine", "filters": [{"facetName": "elementDisplayName", "values": [host]}],
         "connectionFeature": {"elementInstanceType": "Machine", "featureName": feature}},
        {"requestedType": kind, "filters": [{"facetName": facet, "values": [value]}], "isResult": true}]});
    let v: Value =
        c.post(cookie, "/rest/visualsearch/query/simple", &q).await.json().await.unwrap();
    assert_eq!(v["status"], "SUCCESS");
    // The live instance: ended runs of a reused pid carry `endTime`.
    let map = v["data"]["resultIdToElementDataMap"].as_object().unwrap();
    map.iter().find(|(_, e)| e["simpleValues"].get("endTime").is_none()).unwrap().0.clone()
}

#[tokio::test]
async fn isolation_answers_per_id() {
    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let s = sensor(&c, &cookie, "CR-WS-0001").await;
    let body = json!({"pylumIds": [s["pylumId"], "PYLUMCLIENT_NOPE"], "malopId": null});
    let v: Value =
        c.post(&cookie, "/rest/monitor/global/commands/isolate", &body).await.json().await.unwrap();
    assert_eq!(v[s["pylumId"].as_str().unwrap()], "Succeeded");
    assert_eq!(v["PYLUMCLIENT_NOPE"], "UnknownProbe");
    assert!(sim.is_isolated("CR-WS-0001"));
    assert_eq!(sensor(&c, &cookie, "CR-WS-0001").await["isolated"], true);
}

#[tokio::test]
async fn remediations_report_late_then_end_and_offline_machines_queue() {
    let sim = Simulator::new(SimConfig {
        remediation_delay: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let s = sensor(&c, &cookie, "CR-WS-0001").await;
    let guid = s["guid"].as_str().unwrap();
    let target = element(&c, &cookie, "CR-WS-0001", "Process", "applicablePid", "4242").await;
    let body = json!({"initiatorUserName": DEFAULT_USERNAME,
                      "actionsByMachine": {guid: [{"targetId": target, "actionType": "KILL_PROCESS"}]}});
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    assert_eq!(r["statusLog"], json!([]), "not reported yet");
    assert_eq!(r["malopId"], "NOMALOP");
    let progress = format!(
        "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
        r["remediationId"].as_str().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(180)).await;
    let v: Value = c.get(&cookie, &progress).await.json().await.unwrap();
    assert_eq!(v["statusLog"][0]["status"], "IN_PROGRESS");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v: Value = c.get(&cookie, &progress).await.json().await.unwrap();
    assert_eq!(v["statusLog"][0]["status"], "SUCCESS");
    assert!(!sim.process_exists("CR-WS-0001", 4242));

    // The same target again: the sensor no longer has it.
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    let progress = format!(
        "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
        r["remediationId"].as_str().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let v: Value = c.get(&cookie, &progress).await.json().await.unwrap();
    assert_eq!(v["statusLog"][0]["status"], "FAILURE");
    assert_eq!(v["statusLog"][0]["error"]["errorType"], "INVALID_ARGUMENT");

    // Offline: a kill fails, a quarantine waits for the machine.
    sim.set_online("CR-WS-0002", false);
    let s2 = sensor(&c, &cookie, "CR-WS-0002").await;
    let kill = element(&c, &cookie, "CR-WS-0002", "Process", "applicablePid", "2480").await;
    let file =
        element(&c, &cookie, "CR-WS-0002", "File", "correctedPath", "c:\\evidence\\note.txt").await;
    let body = json!({"initiatorUserName": DEFAULT_USERNAME, "actionsByMachine": {s2["guid"].as_str().unwrap(): [
        {"targetId": kill, "actionType": "KILL_PROCESS"}, {"targetId": file, "actionType": "QUARANTINE_FILE"}]}});
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let listed: Value =
        c.get(&cookie, "/rest/remediate/status/NOMALOP").await.json().await.unwrap();
    let ours = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["remediationId"] == r["remediationId"])
        .unwrap();
    let words: Vec<&str> = ours["statusLog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["FAILURE", "PENDING"]);
    assert_eq!(ours["statusLog"][0]["error"]["errorType"], "MACHINE_NOT_CONNECTED");
    sim.set_online("CR-WS-0002", true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(sim.is_quarantined("CR-WS-0002", "C:\\evidence\\note.txt"));
    assert!(sim.process_exists("CR-WS-0002", 2480));
    assert_eq!(sim.counters().remediations_executed, 2);
}

fn unzip(bytes: &[u8], password: &str) -> Vec<u8> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut entry = zip.by_index_decrypt(0, password.as_bytes()).unwrap();
    let mut out = Vec::new();
    entry.read_to_end(&mut out).unwrap();
    out
}

#[tokio::test]
async fn files_come_as_encrypted_zips_directly_or_through_batches() {
    let sim = Simulator::new(SimConfig {
        fetch_batch_ttl: Duration::from_millis(400),
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let s = sensor(&c, &cookie, "CR-WS-0001").await;
    let direct = json!({"path": "C:\\evidence\\note.txt", "pylumId": s["pylumId"]});
    let r = c.post(&cookie, "/rest/file-search/fetch-direct", &direct).await;
    assert!(r.headers()[CONTENT_DISPOSITION].to_str().unwrap().contains("note.txt"));
    let bytes = r.bytes().await.unwrap();
    assert!(
        zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap().by_index(0).is_err(),
        "encrypted"
    );
    assert_eq!(unzip(&bytes, DEFAULT_ZIP_PASSWORD), NOTE_TXT);
    let missing = json!({"path": "C:\\nope", "pylumId": s["pylumId"]});
    let r = c.post(&cookie, "/rest/file-search/fetch-direct", &missing).await;
    assert!(!r.headers().contains_key(CONTENT_DISPOSITION));

    let guid =
        element(&c, &cookie, "CR-WS-0001", "File", "correctedPath", "c:\\evidence\\note.txt").await;
    let start: Value = c
        .post(
            &cookie,
            "/rest/fetchfile/start",
            &json!({"elementGuids": [guid], "initiatorUserName": DEFAULT_USERNAME}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((start["status"].as_str(), start["data"].as_str()), (Some("SUCCESS"), Some("true")));
    let progress = || c.get(&cookie, "/rest/fetchfile/downloads/progress");
    let p: Value = progress().await.json().await.unwrap();
    assert_eq!(
        (p["data"][0]["fileName"].as_str(), p["data"][0]["succeeded"].as_bool()),
        (Some("note.txt"), Some(false))
    );
    let batch = p["data"][0]["batchId"].as_i64().unwrap();
    assert!(i32::try_from(batch).is_ok(), "signed 32-bit batch ids");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let p: Value = progress().await.json().await.unwrap();
    assert_eq!(p["data"][0]["succeeded"], true);
    let zip =
        c.get(&cookie, &format!("/rest/fetchfile/getfiles/{batch}")).await.bytes().await.unwrap();
    assert_eq!(unzip(&zip, DEFAULT_ZIP_PASSWORD), NOTE_TXT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expired = c.get(&cookie, &format!("/rest/fetchfile/getfiles/{batch}")).await;
    assert_eq!(expired.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        c.get(&cookie, &format!("/rest/fetchfile/close/{batch}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(&cookie, &format!("/rest/fetchfile/close/{batch}")).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

async fn tfa_login(c: &Client) -> String {
    let (_, cookie) = c.login_form(DEFAULT_TFA_USERNAME, DEFAULT_PASSWORD).await;
    let cookie = cookie.unwrap();
    let secret = totp_rs::Secret::try_from_base32(DEFAULT_TOTP_SECRET).unwrap();
    let code = totp_rs::Builder::new().with_secret(secret).build().unwrap().generate_current();
    c.http
        .post(format!("{}/", c.base))
        .header(COOKIE, cookie.clone())
        .form(&[("totpCode", code.to_string()), ("submit", "Login".into())])
        .send()
        .await
        .unwrap();
    cookie
}

#[tokio::test]
async fn ir_tools_upload_run_report_per_sensor_and_abort() {
    let sim = Simulator::new(SimConfig {
        ir_step: Duration::from_millis(150),
        ir_fail_hosts: vec!["CR-WS-0002".into()],
        stats_casing: StatsCasing::Camel,
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let cookie = tfa_login(&c).await;
    let part = reqwest::multipart::Part::bytes(b"echo hi".to_vec()).file_name("hi.cmd");
    let form =
        reqwest::multipart::Form::new().text("packageName", "hi.cmd").part("packageInfo", part);
    let r = c
        .http
        .post(format!("{}/rest/irtools/upload", c.base))
        .header(COOKIE, &cookie)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = c.get(&cookie, "/rest/irtools/packages").await.json().await.unwrap();
    assert!(list.as_array().unwrap().iter().any(|p| p["packageName"] == "hi.cmd"));

    let s1 = sensor(&c, &cookie, "CR-WS-0001").await;
    let s2 = sensor(&c, &cookie, "CR-WS-0002").await;
    let body = json!({"sensorsIds": [s1["sensorId"], s2["sensorId"]], "filters": null, "argument": "hi.cmd"});
    let batch: Value =
        c.post(&cookie, "/rest/sensors/action/runIRTool", &body).await.json().await.unwrap();
    assert_eq!(batch["actionType"], "IRToolsRunIRTool");
    assert_eq!(batch["globalStats"]["stats"]["pending"], 2, "camelCase keys");
    let id = batch["batchId"].as_i64().unwrap();
    let status = format!("/rest/sensors/action/getRunIRToolStatus/{id}");
    let rows: Value = c.get(&cookie, &status).await.json().await.unwrap();
    assert_eq!(rows[0]["status"], "Pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows: Value = c.get(&cookie, &status).await.json().await.unwrap();
    assert_eq!(rows[0]["status"], "InProgress");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rows: Value = c.get(&cookie, &status).await.json().await.unwrap();
    assert_eq!(
        (rows[0]["status"].as_str(), rows[1]["status"].as_str()),
        (Some("Succeeded"), Some("Failed"))
    );
    assert_eq!(rows[1]["error"], "The tool exited with code 1");
    let all: Value = c.get(&cookie, "/rest/sensors/allActions").await.json().await.unwrap();
    assert_eq!(all[0]["finalState"], true);
    assert_eq!(all[0]["globalStats"]["stats"]["failed"], 1);

    // Unknown batches, aborts of work not yet started, and sensors that cannot take the run.
    let unknown = c.get(&cookie, "/rest/sensors/abort/12345").await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unknown.text().await.unwrap(), "UNKNOWN BATCH");
    sim.set_online("CR-WS-0003", false);
    let s3 = sensor(&c, &cookie, "CR-WS-0003").await;
    let body = json!({"sensorsIds": [s3["sensorId"]], "argument": "hi.cmd"});
    let batch: Value =
        c.post(&cookie, "/rest/sensors/action/runIRTool", &body).await.json().await.unwrap();
    let aborted: Value = c
        .get(&cookie, &format!("/rest/sensors/abort/{}", batch["batchId"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(aborted["globalStats"]["stats"]["aborted"], 1);
    sim.set_archived("CR-WS-0004", true);
    let s4 = sensor(&c, &cookie, "CR-WS-0004").await;
    let none = c
        .post(
            &cookie,
            "/rest/sensors/action/runIRTool",
            &json!({"sensorsIds": [s4["sensorId"]], "argument": "hi.cmd"}),
        )
        .await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.counters().ir_runs, 2);
}

#[tokio::test]
async fn faults_and_https() {
    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    sim.set_faults(Faults { rate_limit_every: 2, ..Faults::default() });
    let mut limited = 0;
    for _ in 0..4 {
        let r = c.get(&cookie, "/rest/sensors/allActions").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()[RETRY_AFTER], "1");
            limited += 1;
        }
    }
    assert_eq!(limited, 2);
    sim.set_faults(Faults::default());

    let addr = sim.spawn_tls().await.unwrap();
    let cert = reqwest::Certificate::from_pem(sim.cert_pem().unwrap().as_bytes()).unwrap();
    let https = reqwest::Client::builder().tls_certs_only([cert]).build().unwrap();
    let r =
        https.get(format!("https://127.0.0.1:{}/login.html", addr.port())).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("<app-login>"));
}

// ----- fidelity against recorded responses (`../tests/fixtures`, shared/fixtures/cybereason) -----

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("fixture json");
    assert!(v.get("provenance").is_some(), "{name} lost its provenance");
    v["body"].clone()
}

#[tokio::test]
async fn shapes_match_recorded_fixtures() {
    let sim =
        Simulator::new(SimConfig { remediation_delay: Duration::ZERO, ..SimConfig::default() });
    let c = Client::new(&sim).await;

    // The failed login page (SEKOIA's recording): the markers clients look for.
    let rec_login = fixture("sekoia_POST_login.html__login-failed.json");
    let (r, cookie) = c.login_form(DEFAULT_USERNAME, "wrong").await;
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let page = c.get(&cookie.unwrap(), &location).await.text().await.unwrap();
    for marker in ["<title>Cybereason | Login</title>", "<app-login>", "cbr-theme-dark"] {
        assert!(rec_login.as_str().unwrap().contains(marker) && page.contains(marker), "{marker}");
    }
    let cookie = c.login().await;

    // Sensors: the page's keys and counters as recorded; each sensor key one the console has.
    let rec_sensors = fixture("POST_rest_sensors_query__by-machineName.json");
    let page: Value = c
        .post(&cookie, "/rest/sensors/query", &json!({"filters": [{"fieldName": "machineName", "operator": "Equals", "values": ["CR-WS-0001"]}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&page), keys(&rec_sensors));
    assert_eq!(keys(&page["sensorsStatus"]), keys(&rec_sensors["sensorsStatus"]));
    assert_eq!(page["sensorsStatus"]["@class"], rec_sensors["sensorsStatus"]["@class"]);
    let ours = keys(&page["sensors"][0]);
    let theirs = keys(&rec_sensors["sensors"][0]);
    assert!(ours.is_subset(&theirs), "not in the recording: {:?}", ours.difference(&theirs));
    let s = &page["sensors"][0];
    assert_eq!(s["osType"], rec_sensors["sensors"][0]["osType"]);
    let server = s["sensorId"].as_str().unwrap().split_once(':').unwrap().0;
    assert_eq!(server, s["serverId"]);

    // Isolation: a bare map pylumId → word.
    let rec_isolate = fixture("POST_rest_monitor_global_commands_isolate.json");
    let v: Value = c
        .post(
            &cookie,
            "/rest/monitor/global/commands/isolate",
            &json!({"pylumIds": [s["pylumId"]]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rec_isolate.as_object().unwrap().values().next(), Some(&json!("Succeeded")));
    assert_eq!(v, json!({s["pylumId"].as_str().unwrap(): "Succeeded"}));

    // Remediation: a bad target ends FAILURE / INVALID_ARGUMENT, shaped as recorded.
    let rec_rem = fixture("POST_rest_remediate__failure-INVALID_ARGUMENT.json");
    let guid = s["guid"].as_str().unwrap();
    let bad = format!("{}.-1424333057657783286", guid.split('.').next().unwrap());
    let body = json!({"initiatorUserName": DEFAULT_USERNAME,
                      "actionsByMachine": {guid: [{"targetId": bad, "actionType": "KILL_PROCESS"}]}});
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    let progress = format!(
        "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
        r["remediationId"].as_str().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v: Value = c.get(&cookie, &progress).await.json().await.unwrap();
    assert_eq!(keys(&v), keys(&rec_rem));
    let (entry, rec_entry) = (&v["statusLog"][0], &rec_rem["statusLog"][0]);
    assert_eq!(keys(entry), keys(rec_entry));
    assert_eq!(keys(&entry["error"]), keys(&rec_entry["error"]));
    for k in ["status", "actionType"] {
        assert_eq!(entry[k], rec_entry[k], "{k}");
    }
    assert_eq!(entry["error"]["errorType"], rec_entry["error"]["errorType"]);
    assert!(uuid_like(r["remediationId"].as_str().unwrap()));
    assert!(uuid_like(rec_rem["remediationId"].as_str().unwrap()));

    // Fetch-file start: the status envelope as recorded.
    let rec_start = fixture("POST_rest_fetchfile_start.json");
    let file =
        element(&c, &cookie, "CR-WS-0001", "File", "correctedPath", "c:\\evidence\\note.txt").await;
    let start: Value = c
        .post(
            &cookie,
            "/rest/fetchfile/start",
            &json!({"elementGuids": [file], "initiatorUserName": DEFAULT_USERNAME}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&start), keys(&rec_start));
    assert_eq!(keys(&start["failedServersInfo"]), keys(&rec_start["failedServersInfo"]));
    for k in ["data", "status", "message", "expectedResults", "failures"] {
        assert_eq!(start[k], rec_start[k], "{k}");
    }

    // Batches: the allActions object's keys as recorded.
    let rec_actions = fixture("GET_rest_sensors_allActions.TRUNCATED.json");
    let tfa = tfa_login(&c).await;
    let body = json!({"sensorsIds": [s["sensorId"]], "filters": null, "argument": "collector.exe"});
    let batch: Value =
        c.post(&tfa, "/rest/sensors/action/runIRTool", &body).await.json().await.unwrap();
    assert_eq!(keys(&batch), keys(&rec_actions[0]));
    let all: Value = c.get(&cookie, "/rest/sensors/allActions").await.json().await.unwrap();
    assert_eq!(keys(&all[0]), keys(&rec_actions[0]));
    let rec_stats = keys(&rec_actions[0]["globalStats"]["stats"]);
    assert!(keys(&all[0]["globalStats"]["stats"]).is_subset(&rec_stats));
    assert_eq!(all[0]["abortTime"], rec_actions[0]["abortTime"]);
}

fn uuid_like(s: &str) -> bool {
    let parts: Vec<usize> = s.split('-').map(str::len).collect();
    parts == [8, 4, 4, 4, 12]
}

/// Every side effect is in the simulator's record (`/_sim/log`), in Cybereason's words.
#[tokio::test]
async fn side_effects_are_recorded() {
    let sim = Simulator::new(SimConfig {
        remediation_delay: Duration::ZERO,
        ir_step: Duration::from_millis(20),
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let s = sensor(&c, &cookie, "CR-WS-0001").await;
    let pylum = s["pylumId"].as_str().unwrap();
    for path in ["isolate", "un-isolate"] {
        let url = format!("/rest/monitor/global/commands/{path}");
        c.post(&cookie, &url, &json!({"pylumIds": [pylum, "PYLUMCLIENT_NOPE"]})).await;
    }
    let target = element(&c, &cookie, "CR-WS-0001", "Process", "applicablePid", "4242").await;
    let body = json!({"initiatorUserName": DEFAULT_USERNAME,
                      "actionsByMachine": {s["guid"].as_str().unwrap(): [{"targetId": target, "actionType": "KILL_PROCESS"}]}});
    c.post(&cookie, "/rest/remediate", &body).await;
    let direct = json!({"path": "C:\\evidence\\note.txt", "pylumId": pylum});
    c.post(&cookie, "/rest/file-search/fetch-direct", &direct).await.bytes().await.unwrap();
    let tfa = tfa_login(&c).await;
    let run =
        json!({"sensorsIds": [s["sensorId"]], "argument": "collector.exe", "arguments": ["-q"]});
    c.post(&tfa, "/rest/sensors/action/runIRTool", &run).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Reading advances the state (the remediation and the IR run end).
    c.get(&cookie, "/rest/sensors/allActions").await;

    let log = sim.log();
    assert_eq!(
        (log.count("isolate"), log.count("unisolate")),
        (1, 1),
        "unknown ids change nothing"
    );
    assert_eq!(log.count("KILL_PROCESS"), 1);
    assert_eq!(log.count("fetch-direct"), 1);
    assert_eq!(log.count("IRToolsRunIRTool"), 1);
    let entries = log.entries();
    assert!(entries.iter().all(|e| e.target == pylum), "{entries:?}");
    let kill = entries.iter().find(|e| e.op == "KILL_PROCESS").unwrap();
    assert_eq!(
        (kill.detail["targetId"].as_str(), kill.detail["status"].as_str()),
        (Some(target.as_str()), Some("SUCCESS"))
    );
    let ir = entries.iter().find(|e| e.op == "IRToolsRunIRTool").unwrap();
    assert_eq!(ir.detail["package"], "collector.exe");
    assert_eq!(ir.detail["arguments"], json!(["-q"]));

    // The same record over HTTP, with the counters.
    let counters: Value = c.get("", "/_sim/counters").await.json().await.unwrap();
    assert_eq!(counters["executed"]["KILL_PROCESS"], 1);
    assert_eq!(counters["counters"]["isolations"], 1);
    let page: Value = c.get("", "/_sim/log?op=isolate").await.json().await.unwrap();
    assert_eq!(page["entries"][0]["target"], pylum);
}

/// §6.3: "`targetId` without malop is supported only for processes (KILL_PROCESS) and files
/// (QUARANTINE_FILE/UNQUARANTINE_FILE)" — a registry key needs a malop.
#[tokio::test]
async fn registry_keys_are_remediated_only_within_a_malop() {
    let sim =
        Simulator::new(SimConfig { remediation_delay: Duration::ZERO, ..SimConfig::default() });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let s = sensor(&c, &cookie, "CR-WS-0001").await;
    let guid = s["guid"].as_str().unwrap();
    let key = "HKCU\\Software\\Updater";
    let target =
        element(&c, &cookie, "CR-WS-0001", "RegistryEvent", "elementDisplayName", key).await;
    let action = json!([{"targetId": target, "actionType": "DELETE_REGISTRY_KEY"}]);
    let body = json!({"initiatorUserName": DEFAULT_USERNAME, "actionsByMachine": {guid: action}});
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let progress = format!(
        "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
        r["remediationId"].as_str().unwrap()
    );
    let v: Value = c.get(&cookie, &progress).await.json().await.unwrap();
    assert_eq!(v["statusLog"][0]["status"], "FAILURE");
    assert_eq!(v["statusLog"][0]["error"]["errorType"], "INVALID_ARGUMENT");
    assert!(sim.registry_key_exists("CR-WS-0001", key));
    assert_eq!(sim.log().count("DELETE_REGISTRY_KEY"), 0, "nothing ran on the sensor");

    let malop = "11.-7780537507363356527";
    let body = json!({"malopId": malop, "initiatorUserName": DEFAULT_USERNAME, "actionsByMachine": {guid: action}});
    let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
    assert_eq!(r["malopId"], malop);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listed: Value =
        c.get(&cookie, &format!("/rest/remediate/status/{malop}")).await.json().await.unwrap();
    assert_eq!(listed[0]["statusLog"][0]["status"], "SUCCESS");
    assert!(!sim.registry_key_exists("CR-WS-0001", key));
}

#[tokio::test]
async fn the_classic_two_factor_page_and_401_for_lost_sessions_are_switches() {
    let sim = Simulator::new(SimConfig {
        classic_tfa_page: true,
        unauthorized_401: true,
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let (_, cookie) = c.login_form(DEFAULT_TFA_USERNAME, DEFAULT_PASSWORD).await;
    let cookie = cookie.unwrap();
    let page = c.get(&cookie, "/").await.text().await.unwrap();
    assert!(page.contains("Two factor authentication"), "C1's detector text: {page}");
    // A session that is not (or no longer) logged in: 401, not the redirect.
    let r = c.get(&cookie, "/rest/sensors/allActions").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(LOCATION).is_none());
    assert_eq!(sim.counters().session_redirects, 1);
}

/// The Process elements of a machine for `applicablePid` = `pid` (a number, as msticpy sends
/// it), as (guid, element).
async fn processes_with_pid(
    c: &Client,
    cookie: &str,
    host: &str,
    pid: Value,
) -> Vec<(String, Value)> {
    let q = json!({"queryPath": [
        {"requestedType": "Machine", "filters": [{"facetName": "elementDisplayName", "values": [host]}],
         "connectionFeature": {"elementInstanceType": "Machine", "featureName": "processes"}},
        {"requestedType": "Process", "filters": [{"facetName": "applicablePid", "values": [pid], "filterType": "Equals"}], "isResult": true}],
        "customFields": ["elementDisplayName", "applicablePid", "endTime", "ownerMachine"]});
    let v: Value =
        c.post(cookie, "/rest/visualsearch/query/simple", &q).await.json().await.unwrap();
    assert_eq!(v["status"], "SUCCESS");
    v["data"]["resultIdToElementDataMap"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect()
}

#[tokio::test]
async fn process_elements_keep_ended_runs_of_reused_pids() {
    let sim = Simulator::new(SimConfig {
        remediation_delay: Duration::from_millis(40),
        ..SimConfig::default()
    });
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    let found = processes_with_pid(&c, &cookie, "CR-WS-0001", json!(4242)).await;
    assert_eq!(found.len(), 2, "the live notepad and an earlier, ended run: {found:?}");
    let (live, ended): (Vec<_>, Vec<_>) =
        found.iter().partition(|(_, e)| e["simpleValues"].get("endTime").is_none());
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1["simpleValues"]["elementDisplayName"]["values"][0], "notepad.exe");
    assert_eq!(live[0].1["simpleValues"]["applicablePid"]["values"][0], "4242");
    assert_eq!(
        live[0].1["elementValues"]["ownerMachine"]["elementValues"][0]["guid"],
        sensor(&c, &cookie, "CR-WS-0001").await["guid"]
    );
    assert!(
        ended[0].1["simpleValues"]["endTime"]["values"][0].as_str().unwrap().parse::<i64>().is_ok()
    );
    // The string form matches too; `pid` is not a Process facet.
    assert_eq!(processes_with_pid(&c, &cookie, "CR-WS-0001", json!("4242")).await.len(), 2);
    let q = json!({"queryPath": [{"requestedType": "Process", "filters": [{"facetName": "pid", "values": ["4242"]}], "isResult": true}]});
    let v: Value =
        c.post(&cookie, "/rest/visualsearch/query/simple", &q).await.json().await.unwrap();
    assert!(v["data"]["resultIdToElementDataMap"].as_object().unwrap().is_empty());

    // Killing the ended run fails; killing the live one ends it, and it stays listed, ended.
    let machine = sensor(&c, &cookie, "CR-WS-0001").await["guid"].as_str().unwrap().to_owned();
    for (target, status) in [(&ended[0].0, "FAILURE"), (&live[0].0, "SUCCESS")] {
        let body = json!({"initiatorUserName": DEFAULT_USERNAME,
            "actionsByMachine": {machine.clone(): [{"targetId": target, "actionType": "KILL_PROCESS"}]}});
        let r: Value = c.post(&cookie, "/rest/remediate", &body).await.json().await.unwrap();
        let path = format!(
            "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
            r["remediationId"].as_str().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let p: Value = c.get(&cookie, &path).await.json().await.unwrap();
        assert_eq!(p["statusLog"][0]["status"], status, "{p}");
    }
    let after = processes_with_pid(&c, &cookie, "CR-WS-0001", json!(4242)).await;
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|(_, e)| e["simpleValues"].get("endTime").is_some()));
    assert!(!sim.process_exists("CR-WS-0001", 4242));

    // A second live instance of a pid (its old end never reported).
    let second = sim.start_process("CR-WS-0001", 3012, "updater.exe").unwrap();
    let found = processes_with_pid(&c, &cookie, "CR-WS-0001", json!(3012)).await;
    let live: Vec<_> =
        found.iter().filter(|(_, e)| e["simpleValues"].get("endTime").is_none()).collect();
    assert_eq!(live.len(), 2);
    assert!(live.iter().any(|(g, _)| *g == second));
}

#[tokio::test]
async fn machines_are_found_connected_or_not() {
    let sim = Simulator::new(SimConfig::default());
    let c = Client::new(&sim).await;
    let cookie = c.login().await;
    sim.set_online("CR-WS-0002", false);
    let connected = |host: &str| {
        json!({"queryPath": [{"requestedType": "Machine", "filters": [
            {"facetName": "elementDisplayName", "values": [host]},
            {"facetName": "isActiveProbeConnected", "values": [true]}], "isResult": true}],
            "customFields": ["elementDisplayName"]})
    };
    for (host, n) in [("CR-WS-0001", 1), ("cr-ws-0002", 0)] {
        let v: Value = c
            .post(&cookie, "/rest/visualsearch/query/simple", &connected(host))
            .await
            .json()
            .await
            .unwrap();
        let map = v["data"]["resultIdToElementDataMap"].as_object().unwrap();
        assert_eq!(map.len(), n, "{host}: {v}");
        if let Some((guid, e)) = map.iter().next() {
            assert_eq!(*guid, sensor(&c, &cookie, host).await["guid"].as_str().unwrap());
            assert_eq!(e["simpleValues"]["elementDisplayName"]["values"][0], "cr-ws-0001");
        }
    }
}

#[test]
fn fetched_zips_use_the_platforms_fixed_password() {
    // The constant of the vendor's public Python SDK (`cybereason` on PyPI, sensors.py).
    assert_eq!(DEFAULT_ZIP_PASSWORD, "cautionhandlewithcare");
    assert_eq!(SimConfig::default().fetch_zip_password, DEFAULT_ZIP_PASSWORD);
}
