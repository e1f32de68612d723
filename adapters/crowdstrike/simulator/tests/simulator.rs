//! The simulator on its own, over HTTP, as a Falcon API client sees it: the behaviours §11 of
//! `shared/vendor-apis/crowdstrike.md` asks a simulator to reproduce. Every wait is a poll with
//! a bounded deadline.

use std::io::Cursor;
use std::time::{Duration, Instant};

use edrgate_crowdstrike_sim::{
    ARCHIVE_PASSWORD, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, NOTE_PATH_UNIX,
    NOTE_PATH_WINDOWS, NOTE_TXT, READONLY_CLIENT_ID, RESPONDER_CLIENT_ID, Sim as _, SimConfig,
    Simulator,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const RTR: &str = "/real-time-response";
const READ: &str = "/real-time-response/entities/command/v1";
const RESPONDER: &str = "/real-time-response/entities/active-responder-command/v1";
const ADMIN: &str = "/real-time-response/entities/admin-command/v1";
const DEADLINE: Duration = Duration::from_secs(15);

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn resource(&self) -> &Value {
        &self.body["resources"][0]
    }
    fn error_code(&self) -> i64 {
        self.body["errors"][0]["code"].as_i64().unwrap_or_default()
    }
}

/// A test client that cannot hang (simkit answers every request or drops the connection).
fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn spawn(cfg: SimConfig) -> (Simulator, String) {
    let sim = Simulator::new(cfg);
    let addr = sim.spawn().await.unwrap();
    (sim, format!("http://{addr}"))
}

async fn token_for(base: &str, client_id: &str) -> String {
    let r = http()
        .post(format!("{base}/oauth2/token"))
        .form(&[("client_id", client_id), ("client_secret", DEFAULT_CLIENT_SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

impl Api {
    async fn new(base: &str, client_id: &str) -> Api {
        Api { http: http(), base: base.to_owned(), token: token_for(base, client_id).await }
    }

    async fn answer(r: reqwest::Response) -> Answer {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Answer { status, headers, body }
    }

    async fn get(&self, path: &str) -> Answer {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    async fn delete(&self, path: &str) -> Answer {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    async fn session(&self, aid: &str) -> String {
        let a = self
            .post(
                &format!("{RTR}/entities/sessions/v1"),
                &json!({ "device_id": aid, "origin": "test" }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.resource()["session_id"].as_str().unwrap().to_owned()
    }

    /// POSTs a command on `tier`, expecting 201, and returns its cloud request id.
    async fn send(&self, tier: &str, sid: &str, line: &str) -> String {
        let a = self.command(tier, sid, line).await;
        assert_eq!(a.status, StatusCode::CREATED, "{line}: {}", a.body);
        a.resource()["cloud_request_id"].as_str().unwrap().to_owned()
    }

    async fn command(&self, tier: &str, sid: &str, line: &str) -> Answer {
        let base = line.split(' ').next().unwrap();
        self.post(tier, &json!({ "base_command": base, "command_string": line, "session_id": sid, "persist": false }))
            .await
    }

    /// Polls a command's status until `complete`.
    async fn wait(&self, tier: &str, crid: &str) -> Value {
        let started = Instant::now();
        loop {
            let a = self.get(&format!("{tier}?cloud_request_id={crid}&sequence_id=0")).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            if a.resource()["complete"] == true {
                return a.resource().clone();
            }
            assert_eq!(a.resource()["stdout"], "", "nothing before completion");
            assert!(started.elapsed() < DEADLINE, "command {crid} never completed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(&self, tier: &str, sid: &str, line: &str) -> Value {
        let crid = self.send(tier, sid, line).await;
        self.wait(tier, &crid).await
    }
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn log_ops(base: &str, op: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{base}/_sim/log?op={}", op.replace(' ', "%20")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["entries"].as_array().unwrap().clone()
}

fn aid(sim: &Simulator, host: &str) -> String {
    sim.device_id(host).unwrap()
}

// ---- OAuth2, scopes, envelope (§2, §1.3) ----

#[tokio::test]
async fn tokens_from_the_form_or_basic_and_401_for_bad_revoked_or_expired_ones() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let http = http();
    let r = http
        .post(format!("{base}/oauth2/token"))
        .form(&[("client_id", DEFAULT_CLIENT_ID), ("client_secret", DEFAULT_CLIENT_SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-cs-region"], "us-1");
    assert_eq!(r.headers()["x-ratelimit-limit"], "300");
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["token_type"].as_str(), v["expires_in"].as_u64()), (Some("bearer"), Some(1799)));

    // Kibana's way: credentials only in Basic (§2.1).
    let r = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(RESPONDER_CLIENT_ID, Some(DEFAULT_CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = http
        .post(format!("{base}/oauth2/token"))
        .form(&[("client_id", DEFAULT_CLIENT_ID), ("client_secret", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["message"], "Failed to issue access token - Not Authorized");

    let api = Api { http: http.clone(), base: base.clone(), token: "nope".into() };
    let a = api.get("/devices/queries/devices/v1").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["errors"][0]["message"], "access denied, invalid bearer token");
    assert_eq!(a.body["meta"]["powered_by"], "crowdstrike-api-gateway");
    assert_eq!(a.headers["x-ratelimit-limit"], "15");

    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    assert_eq!(api.get("/devices/queries/devices/v1").await.status, StatusCode::OK);
    let r = http
        .post(format!("{base}/oauth2/revoke"))
        .basic_auth(DEFAULT_CLIENT_ID, Some(DEFAULT_CLIENT_SECRET))
        .form(&[("token", api.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(api.get("/devices/queries/devices/v1").await.status, StatusCode::UNAUTHORIZED);

    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    sim.expire_tokens();
    assert_eq!(api.get("/devices/queries/devices/v1").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_client_gets_403_outside_its_scopes() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let win = aid(&sim, "CS-WIN-0001");
    let ro = Api::new(&base, READONLY_CLIENT_ID).await;
    let responder = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let admin = Api::new(&base, DEFAULT_CLIENT_ID).await;

    let sid = ro.session(&win).await;
    assert_eq!(ro.command(READ, &sid, "ls").await.status, StatusCode::CREATED);
    let denied = ro.command(RESPONDER, &sid, "kill 1").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body["errors"][0]["message"], "access denied, authorization failed");
    assert!(denied.headers["content-type"].to_str().unwrap().starts_with("application/json"));
    let contain = ro
        .post("/devices/entities/devices-actions/v2?action_name=contain", &json!({ "ids": [win] }))
        .await;
    assert_eq!(contain.status, StatusCode::FORBIDDEN);

    let sid = responder.session(&win).await;
    assert_eq!(responder.command(RESPONDER, &sid, "ls").await.status, StatusCode::CREATED);
    assert_eq!(responder.command(ADMIN, &sid, "ls").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        responder.get(&format!("{RTR}/queries/put-files/v1")).await.status,
        StatusCode::FORBIDDEN
    );

    let sid = admin.session(&win).await;
    assert_eq!(admin.command(ADMIN, &sid, "ls").await.status, StatusCode::CREATED);
    assert_eq!(admin.get(&format!("{RTR}/queries/put-files/v1")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_answer_carries_the_envelope_and_the_headers() {
    let (_sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let counters: Value =
        http().get(format!("{base}/_sim/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters["executed"], json!({}), "a fresh simulator has executed nothing");
    let a = api.get("/devices/queries/devices/v1").await;
    let meta = &a.body["meta"];
    assert!(meta["query_time"].as_f64().unwrap() > 0.0);
    assert_eq!(meta["powered_by"], "device-api");
    assert_eq!(meta["trace_id"].as_str().unwrap(), a.headers["x-cs-traceid"].to_str().unwrap());
    assert_eq!(a.body["errors"], json!([]));
    assert_eq!(a.headers["x-ratelimit-limit"], "6000");
    let left: u32 = a.headers["x-ratelimit-remaining"].to_str().unwrap().parse().unwrap();
    assert!(left < 6000);

    for a in [
        api.get("/real-time-response/entities/nothing/v1").await,
        api.post(&format!("{RTR}/entities/sessions/v1"), &json!("not an object")).await,
        api.get(&format!("{READ}?cloud_request_id=not-a-uuid")).await,
    ] {
        assert!(a.status.is_client_error(), "{}", a.body);
        assert!(a.headers["content-type"].to_str().unwrap().starts_with("application/json"));
        assert!(a.body["errors"][0]["code"].is_i64(), "{}", a.body);
        assert!(a.headers.contains_key("x-ratelimit-remaining"));
    }
    let a = api.get(&format!("{READ}?cloud_request_id=not-a-uuid")).await;
    assert_eq!(a.body["errors"][0]["message"], "cloud_request_id must be a uuid string");
}

// ---- hosts (§4) ----

#[tokio::test]
async fn hosts_by_fql_with_paging_and_their_details() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, READONLY_CLIENT_ID).await;
    let a = api.get("/devices/queries/devices/v1?filter=hostname:'cs-win-0002'").await;
    assert_eq!(a.body["resources"], json!([aid(&sim, "CS-WIN-0002")]));
    let a = api.get("/devices/queries/devices/v1?filter=hostname:*'*WIN*'&limit=2").await;
    assert_eq!(a.body["resources"].as_array().unwrap().len(), 2);
    assert_eq!(a.body["meta"]["pagination"], json!({ "offset": 0, "limit": 2, "total": 3 }));
    let b = api.get("/devices/queries/devices/v1?filter=hostname:*'*WIN*'&limit=2&offset=2").await;
    assert_eq!(b.body["resources"], json!([aid(&sim, "CS-WIN-0003")]));
    let all = api.get("/devices/queries/devices/v1").await;
    assert_eq!(all.body["meta"]["pagination"]["total"], 5);
    let first = api.get("/devices/queries/devices-scroll/v1?limit=3").await;
    let token = first.body["meta"]["pagination"]["offset"].as_str().unwrap().to_owned();
    let rest = api.get(&format!("/devices/queries/devices-scroll/v1?limit=3&offset={token}")).await;
    assert_eq!(rest.body["resources"].as_array().unwrap().len(), 2);
    let bad = api.get("/devices/queries/devices/v1?filter=hostname:'open").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let (w, l, m) = (aid(&sim, "CS-WIN-0001"), aid(&sim, "CS-LNX-0001"), aid(&sim, "CS-MAC-0001"));
    assert!(w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let a = api.get(&format!("/devices/entities/devices/v2?ids={w}&ids={l}")).await;
    let platforms: Vec<&str> = a.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["platform_name"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["Windows", "Linux"]);
    assert_eq!(a.body["resources"][0]["status"], "normal");
    assert_eq!(a.body["resources"][0]["hostname"], "CS-WIN-0001");
    let a = api.post("/devices/entities/devices/v2", &json!({ "ids": [m] })).await;
    assert_eq!(a.resource()["platform_name"], "Mac");

    sim.set_online("CS-LNX-0001", false);
    let a = api.get(&format!("/devices/entities/online-state/v1?ids={w}&ids={l}")).await;
    assert_eq!(a.body["meta"]["powered_by"], "cs.agentonline");
    let states: Vec<&str> = a.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["online", "offline"]);
}

#[tokio::test]
async fn containment_is_accepted_then_pending_then_done_and_back() {
    // Long enough that the pending states are surely seen right after the POSTs.
    let (sim, base) =
        spawn(SimConfig { containment_delay: Duration::from_millis(1500), ..SimConfig::default() })
            .await;
    let api = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let w = aid(&sim, "CS-WIN-0001");
    let a = api
        .post("/devices/entities/devices-actions/v2?action_name=contain", &json!({ "ids": [w] }))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.resource()["id"], w.as_str());
    assert_eq!(sim.containment_status("CS-WIN-0001"), "containment_pending");
    let status = || async {
        api.get(&format!("/devices/entities/devices/v2?ids={w}")).await.resource()["status"].clone()
    };
    until("contained", || async { status().await == "contained" }).await;
    let a = api
        .post(
            "/devices/entities/devices-actions/v2?action_name=lift_containment",
            &json!({ "ids": [w] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(status().await, "lift_containment_pending");
    until("normal", || async { status().await == "normal" }).await;
    assert_eq!(log_ops(&base, "contain").await.len(), 1);
    assert_eq!(log_ops(&base, "lift_containment").await[0]["target"], w.as_str());

    let a = api
        .post(
            "/devices/entities/devices-actions/v2?action_name=contain",
            &json!({ "ids": ["0".repeat(32)] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

// ---- sessions (§5) ----

#[tokio::test]
async fn init_returns_the_callers_session_which_expires_when_idle() {
    let (sim, base) =
        spawn(SimConfig { session_idle: Duration::from_millis(1500), ..SimConfig::default() })
            .await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let other = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let (w, l) = (aid(&sim, "CS-WIN-0001"), aid(&sim, "CS-LNX-0001"));

    let first = api
        .post(&format!("{RTR}/entities/sessions/v1?timeout=30"), &json!({ "device_id": w }))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["errors"], Value::Null);
    let r = first.resource();
    assert_eq!((r["pwd"].as_str(), r["offline_queued"].as_bool()), (Some("C:\\"), Some(false)));
    assert!(r["scripts"].as_array().unwrap().iter().any(|s| s["command"] == "reg"));
    let sid = r["session_id"].as_str().unwrap().to_owned();
    let again = api.session(&w).await;
    assert_eq!(again, sid, "the caller's existing session comes back");
    let theirs =
        other.post(&format!("{RTR}/entities/sessions/v1"), &json!({ "device_id": w })).await;
    assert_ne!(theirs.resource()["session_id"], sid.as_str());
    assert_eq!(theirs.resource()["existing_aid_sessions"], 2);
    let linux = api.post(&format!("{RTR}/entities/sessions/v1"), &json!({ "device_id": l })).await;
    assert_eq!(linux.resource()["pwd"], "/");
    assert!(
        linux.resource()["scripts"].as_array().unwrap().iter().any(|s| s["command"] == "users")
    );

    // The cwd is the session's, and the logs keep every command.
    let out = api.run(READ, &sid, r"cd C:\Windows").await;
    assert_eq!(out["stdout"], r"C:\Windows");
    assert_eq!(api.run(READ, &sid, "pwd").await["stdout"], r"C:\Windows");
    let listed = api
        .get(&format!("{RTR}/queries/sessions/v1?filter=deleted_at:null%2Bdevice_id:'{w}'"))
        .await;
    assert_eq!(listed.body["resources"], json!([sid]));
    let detail =
        api.post(&format!("{RTR}/entities/sessions/GET/v1"), &json!({ "ids": [sid] })).await;
    let logs: Vec<&str> = detail.resource()["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["command_string"].as_str().unwrap())
        .collect();
    assert_eq!(logs, [r"cd C:\Windows", "pwd"]);
    assert_eq!(detail.resource()["hostname"], "CS-WIN-0001");

    let refreshed =
        api.post(&format!("{RTR}/entities/refresh-session/v1"), &json!({ "device_id": w })).await;
    assert_eq!(
        (refreshed.status, refreshed.resource()["session_id"].as_str()),
        (StatusCode::CREATED, Some(sid.as_str()))
    );

    // Idle expiry: the session is gone for commands and refreshes alike.
    // (Polling must not touch it: listing does not, a refresh would.)
    let lsid = linux.resource()["session_id"].as_str().unwrap().to_owned();
    until("the session to expire", || async {
        let live = api.get(&format!("{RTR}/queries/sessions/v1?filter=deleted_at:null")).await;
        !live.body["resources"].as_array().unwrap().iter().any(|s| *s == lsid.as_str())
    })
    .await;
    let refresh =
        api.post(&format!("{RTR}/entities/refresh-session/v1"), &json!({ "device_id": l })).await;
    assert_eq!((refresh.status, refresh.error_code()), (StatusCode::NOT_FOUND, 50007));
    let gone = api.command(READ, linux.resource()["session_id"].as_str().unwrap(), "ls").await;
    assert_eq!((gone.status, gone.error_code()), (StatusCode::NOT_FOUND, 50007));

    let audit =
        api.get("/real-time-response-audit/combined/sessions/v1?with_command_info=true").await;
    let all = audit.body["resources"].as_array().unwrap();
    assert!(all.iter().any(|s| s["user_id"] == RESPONDER_CLIENT_ID), "every user's sessions");
    assert!(all.iter().any(|s| !s["logs"].as_array().unwrap().is_empty()));
    let fresh = api.session(&l).await;
    let deleted = api.delete(&format!("{RTR}/entities/sessions/v1?session_id={fresh}")).await;
    assert_eq!((deleted.status, deleted.body.clone()), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(api.command(READ, &fresh, "ls").await.error_code(), 50007);
}

// ---- commands and tiers (§6) ----

#[tokio::test]
async fn tiers_accept_their_commands_and_reject_others_with_40007() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let win = api.session(&aid(&sim, "CS-WIN-0001")).await;
    let lnx = api.session(&aid(&sim, "CS-LNX-0001")).await;
    for (tier, line) in [
        (READ, "kill 4"),
        (READ, r"reg set HKLM\SOFTWARE\X"),
        (READ, "frobnicate"),
        (RESPONDER, "put x.exe"),
        (RESPONDER, "runscript -Raw=```echo hi```"),
        (READ, "get C:\\x"),
    ] {
        let a = api.command(tier, &win, line).await;
        assert_eq!(
            (a.status, a.error_code()),
            (StatusCode::BAD_REQUEST, 40007),
            "{line} on {tier}: {}",
            a.body
        );
        assert_eq!(a.body["errors"][0]["message"], "Command not found");
    }
    // Windows-only commands on Linux (§11.11).
    for line in [r"reg query HKLM\SOFTWARE", "memdump 1 /tmp/x.dmp"] {
        assert_eq!(api.command(RESPONDER, &lnx, line).await.error_code(), 40007, "{line}");
    }
    let mismatch = api
        .post(READ, &json!({ "base_command": "ls", "command_string": "ps", "session_id": win }))
        .await;
    assert_eq!(mismatch.error_code(), 40006);

    // A higher tier takes lower tier commands.
    let ps = api.run(ADMIN, &win, "ps").await;
    assert!(ps["stdout"].as_str().unwrap().starts_with("Name"), "{}", ps["stdout"]);
    assert_eq!(ps["task_id"].as_str().unwrap().len(), 36);
    let ls = api.run(READ, &win, r"ls C:\evidence").await;
    let text = ls["stdout"].as_str().unwrap();
    assert!(text.starts_with("Directory listing for C:\\evidence -\n\nName"), "{text}");
    assert!(text.contains("Last Modified (UTC-0)") && text.contains("note.txt"));
    let ls = api.run(READ, &lnx, "ls /var/tmp/evidence").await;
    assert!(
        ls["stdout"].as_str().unwrap().starts_with("-rw-r--r-- 1 root root"),
        "{}",
        ls["stdout"]
    );
    let cat = api.run(READ, &lnx, &format!("cat {NOTE_PATH_UNIX}")).await;
    assert_eq!(cat["stdout"].as_str().unwrap().as_bytes(), NOTE_TXT);
    let missing = api.run(READ, &lnx, "cat /nope").await;
    assert!(missing["stderr"].as_str().unwrap().contains("No such file or directory"));
    let missing = api.run(READ, &win, r"cat C:\nope.txt").await;
    assert_eq!(missing["stderr"], "The system cannot find the file specified.");
    let lps = api.run(READ, &lnx, "ps").await;
    assert!(lps["stdout"].as_str().unwrap().starts_with("PID"), "{}", lps["stdout"]);

    // Registry (Windows), memory dumps that `get` can fetch afterwards.
    let set = api
        .run(RESPONDER, &win, r"reg set HKLM\SOFTWARE\Edrgate Marker -ValueType=REG_SZ -Value=seen")
        .await;
    assert_eq!(set["stderr"], "");
    assert_eq!(
        sim.registry_value("CS-WIN-0001", r"HKEY_LOCAL_MACHINE\SOFTWARE\Edrgate", "Marker")
            .as_deref(),
        Some("seen")
    );
    let q = api.run(READ, &win, r"reg query HKLM\SOFTWARE\Edrgate Marker").await;
    assert_eq!(q["stdout"], "Marker  REG_SZ  seen\n");
    let pid = sim.any_pid("CS-WIN-0001");
    let dump = api.run(RESPONDER, &win, &format!(r"memdump {pid} C:\Windows\Temp\p.dmp")).await;
    assert_eq!(dump["stderr"], "", "{dump}");
    assert!(
        sim.file_content("CS-WIN-0001", r"C:\Windows\Temp\p.dmp").unwrap().starts_with(b"MDMP")
    );
    let hash = api.run(READ, &win, &format!("filehash {NOTE_PATH_WINDOWS}")).await;
    assert!(hash["stdout"].as_str().unwrap().contains("SHA256: "));
    // Deleting a directory needs -Force.
    api.run(RESPONDER, &win, r"mkdir C:\Windows\Temp\d\e").await;
    let refused = api.run(RESPONDER, &win, r"rm C:\Windows\Temp\d").await;
    assert!(refused["stderr"].as_str().unwrap().contains("-Force"));
    assert_eq!(api.run(RESPONDER, &win, r"rm C:\Windows\Temp\d -Force").await["stderr"], "");
    assert_eq!(log_ops(&base, "rm").await.len(), 1);
}

#[tokio::test]
async fn a_kill_happens_once_and_is_logged_once() {
    // A long run time, so that the status right after the POST is surely still running.
    let (sim, base) =
        spawn(SimConfig { command_delay: Duration::from_millis(1500), ..SimConfig::default() })
            .await;
    let api = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let w = aid(&sim, "CS-WIN-0002");
    let sid = api.session(&w).await;
    let pid = sim.any_pid("CS-WIN-0002");
    assert!(sim.process_running("CS-WIN-0002", pid));
    let crid = api.send(RESPONDER, &sid, &format!("kill {pid}")).await;
    // Right after the POST the command is still running.
    let early = api.get(&format!("{RESPONDER}?cloud_request_id={crid}&sequence_id=0")).await;
    assert_eq!(early.resource()["complete"], false);
    let done = api.wait(RESPONDER, &crid).await;
    assert_eq!((done["stderr"].as_str(), done["base_command"].as_str()), (Some(""), Some("kill")));
    assert!(!sim.process_running("CS-WIN-0002", pid));
    let again = api.run(RESPONDER, &sid, &format!("kill {pid}")).await;
    assert_eq!(
        again["stderr"],
        format!("Cannot find a process with the process identifier {pid}.")
    );
    let kills = log_ops(&base, "kill").await;
    assert_eq!(kills.len(), 1);
    let counters: Value =
        http().get(format!("{base}/_sim/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters["executed"]["kill"], 1);
    assert!(counters["requests"]["side_effects_processed"].as_u64().unwrap() >= 2);
    assert_eq!(
        (kills[0]["target"].as_str(), kills[0]["detail"].as_str()),
        (Some(w.as_str()), Some(format!("kill {pid}").as_str()))
    );
}

#[tokio::test]
async fn a_lost_answer_still_killed_and_the_session_logs_tell() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let sid = api.session(&aid(&sim, "CS-WIN-0001")).await;
    let pid = sim.any_pid("CS-WIN-0001");
    sim.set_faults(Faults { lose_answer_after_effect: 1, ..Faults::default() });
    let lost = api
        .http
        .post(format!("{base}{RESPONDER}"))
        .bearer_auth(&api.token)
        .json(&json!({ "base_command": "kill", "command_string": format!("kill {pid}"), "session_id": sid }))
        .send()
        .await;
    assert!(lost.is_err() || lost.unwrap().bytes().await.is_err(), "the answer is lost");
    assert!(!sim.process_running("CS-WIN-0001", pid));
    assert_eq!(log_ops(&base, "kill").await.len(), 1);
    let detail =
        api.post(&format!("{RTR}/entities/sessions/GET/v1"), &json!({ "ids": [sid] })).await;
    assert_eq!(detail.resource()["logs"][0]["command_string"], format!("kill {pid}"));
}

#[tokio::test]
async fn chunked_output_walks_sequence_ids() {
    let (sim, base) =
        spawn(SimConfig { chunk_output_bytes: Some(64), ..SimConfig::default() }).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let sid = api.session(&aid(&sim, "CS-WIN-0001")).await;
    let crid = api.send(READ, &sid, "ps").await;
    // Running: `complete: false` and no output; then chunk 0 has output (§6.5).
    until("the first chunk", || async {
        let a = api.get(&format!("{READ}?cloud_request_id={crid}&sequence_id=0")).await;
        a.resource()["stdout"] != ""
    })
    .await;
    let mut text = String::new();
    for seq in 0.. {
        let a = api.get(&format!("{READ}?cloud_request_id={crid}&sequence_id={seq}")).await;
        let r = a.resource();
        assert_eq!(r["sequence_id"], seq);
        let chunk = r["stdout"].as_str().unwrap();
        assert!(chunk.len() <= 64 + 3);
        text.push_str(chunk);
        if r["complete"] == true {
            break;
        }
        assert!(seq < 1000);
    }
    assert!(text.starts_with("Name") && text.contains("notepad"), "{text}");
}

// ---- files (§8) ----

async fn fetch(api: &Api, sid: &str, crid: &str) -> Value {
    let mut seen_progress = false;
    let started = Instant::now();
    loop {
        let a = api.get(&format!("{RTR}/entities/file/v2?session_id={sid}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        if let Some(f) =
            a.body["resources"].as_array().unwrap().iter().find(|f| f["cloud_request_id"] == crid)
        {
            seen_progress |= f["progress"].is_f64();
            if f["complete"] == true {
                assert!(seen_progress);
                return f.clone();
            }
        }
        assert!(started.elapsed() < DEADLINE, "the upload never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unpack(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut r = sevenz_rust2::ArchiveReader::new(
        Cursor::new(archive),
        sevenz_rust2::Password::from(ARCHIVE_PASSWORD),
    )
    .unwrap();
    let mut out = Vec::new();
    r.for_each_entries(|e, rd| {
        let mut b = Vec::new();
        rd.read_to_end(&mut b)?;
        out.push((e.name().to_owned(), b));
        Ok(true)
    })
    .unwrap();
    out
}

#[tokio::test]
async fn get_uploads_then_downloads_as_an_encrypted_7z() {
    for encrypt_archive_headers in [false, true] {
        let (sim, base) =
            spawn(SimConfig { encrypt_archive_headers, ..SimConfig::default() }).await;
        let api = Api::new(&base, RESPONDER_CLIENT_ID).await;
        let sid = api.session(&aid(&sim, "CS-WIN-0001")).await;
        let crid = api.send(RESPONDER, &sid, &format!("get {NOTE_PATH_WINDOWS}")).await;
        assert_eq!(api.wait(RESPONDER, &crid).await["stderr"], "");
        let f = fetch(&api, &sid, &crid).await;
        assert_eq!(f["name"], r"\Device\HarddiskVolume2\evidence\note.txt");
        assert_eq!(f["size"], NOTE_TXT.len());
        let sha = f["sha256"].as_str().unwrap().to_owned();
        let r = api
            .http
            .get(format!("{base}{RTR}/entities/extracted-file-contents/v1?session_id={sid}&sha256={sha}&filename=note.txt"))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/x-7z-compressed");
        assert!(r.headers()["content-disposition"].to_str().unwrap().contains("note.txt.7z"));
        let entries = unpack(&r.bytes().await.unwrap());
        assert_eq!(entries, [("note.txt".to_owned(), NOTE_TXT.to_vec())]);

        let missing = api
            .get(&format!(
                "{RTR}/entities/extracted-file-contents/v1?session_id={sid}&sha256={}",
                "0".repeat(64)
            ))
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.headers["content-type"].to_str().unwrap().starts_with("application/json"));
        let id = f["id"].as_str().unwrap();
        assert_eq!(
            api.delete(&format!("{RTR}/entities/file/v2?session_id={sid}&ids={id}")).await.status,
            StatusCode::NO_CONTENT
        );
        let after = api.get(&format!("{RTR}/entities/file/v2?session_id={sid}")).await;
        assert_eq!(after.body["resources"], json!([]));
    }
}

async fn upload(
    api: &Api,
    path: &str,
    parts: Vec<(&str, String)>,
    file: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in parts {
        form = form.text(k.to_owned(), v);
    }
    if let Some((name, bytes)) = file {
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()));
    }
    let r = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn put_from_the_library_and_scripts_by_permission() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let parts = || {
        vec![("description", "edrgate tool".to_owned()), ("name", "edrgate-tool.exe".to_owned())]
    };
    let (status, body) = upload(
        &api,
        &format!("{RTR}/entities/put-files/v2"),
        parts(),
        Some(("tool.exe", b"MZtool".to_vec())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resources"][0]["name"], "edrgate-tool.exe");
    assert_eq!(body["meta"]["writes"]["resources_affected"], 1);
    let (status, body) = upload(
        &api,
        &format!("{RTR}/entities/put-files/v1"),
        parts(),
        Some(("tool.exe", b"MZtool".to_vec())),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["errors"][0]["message"], "file with given name already exists");
    let ids = api.get(&format!("{RTR}/queries/put-files/v1?filter=name:'edrgate-tool.exe'")).await;
    assert_eq!(ids.body["resources"].as_array().unwrap().len(), 1);
    assert_eq!(log_ops(&base, "put_file_upload").await.len(), 1);
    let id = ids.body["resources"][0].as_str().unwrap().to_owned();
    let entity = api.get(&format!("{RTR}/entities/put-files/v2?ids={id}")).await;
    assert_eq!(
        (entity.resource()["size"].as_u64(), entity.resource()["name"].as_str()),
        (Some(6), Some("edrgate-tool.exe"))
    );
    let r = api
        .http
        .get(format!("{base}{RTR}/entities/put-file-contents/v1?id={id}"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"MZtool");

    let sid = api.session(&aid(&sim, "CS-WIN-0003")).await;
    api.run(READ, &sid, r"cd C:\Windows\Temp").await;
    let put = api.run(ADMIN, &sid, "put edrgate-tool.exe").await;
    assert_eq!(
        (put["stderr"].as_str(), put["base_command"].as_str()),
        (Some(""), Some("DOWNLOAD_RENAME"))
    );
    assert_eq!(
        sim.file_content("CS-WIN-0003", r"C:\Windows\Temp\edrgate-tool.exe").unwrap(),
        b"MZtool"
    );
    let again = api.run(ADMIN, &sid, "put edrgate-tool.exe").await;
    assert_eq!(
        (again["stderr"].as_str(), again["base_command"].as_str()),
        (Some("put: Destination already exists."), Some("DOWNLOAD_RENAME"))
    );
    assert_eq!(api.command(ADMIN, &sid, "put nothing.exe").await.error_code(), 40412);

    // Scripts: a raw one runs with its arguments; a private one of someone else is not found.
    let raw = api.run(ADMIN, &sid, "runscript -Raw=```Write-Output \"got $args[0] and $args[1]\"``` -CommandLine=\"alpha beta\" -Timeout=30").await;
    assert_eq!(raw["stdout"], "got alpha and beta\n");
    sim.add_cloud_script("secret.ps1", &["windows"], "echo secret", "private");
    let private = api.command(ADMIN, &sid, "runscript -CloudFile=\"secret.ps1\"").await;
    assert_eq!(private.error_code(), 40412);
    assert_eq!(private.body["errors"][0]["message"], "The file secret.ps1 could not be found");
    let (status, body) = upload(
        &api,
        &format!("{RTR}/entities/scripts/v1"),
        vec![
            ("description", "d".into()),
            ("name", "mine.ps1".into()),
            ("permission_type", "private".into()),
            ("platform", "windows".into()),
            ("content", "echo mine $1".into()),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(log_ops(&base, "script_upload").await.len(), 1, "seeded scripts are no uploads");
    let mine = api.run(ADMIN, &sid, "runscript -CloudFile=\"mine.ps1\" -CommandLine=\"x\"").await;
    assert_eq!(mine["stdout"], "echo mine x\n".trim_start_matches("echo "));
    let responder = Api::new(&base, RESPONDER_CLIENT_ID).await;
    let rsid = responder.session(&aid(&sim, "CS-WIN-0003")).await;
    assert_eq!(
        responder.command(RESPONDER, &rsid, "runscript -CloudFile=\"mine.ps1\"").await.error_code(),
        40412
    );
    let public = responder
        .run(RESPONDER, &rsid, "runscript -CloudFile=\"edrgate-hello\" -CommandLine=\"edrgate\"")
        .await;
    assert_eq!(public["stdout"], "hello from edrgate\n");
    let scripts = api.get(&format!("{RTR}/queries/scripts/v1")).await;
    assert!(scripts.body["resources"].as_array().unwrap().len() >= 3);
    let (status, _) = upload(
        &api,
        &format!("{RTR}/entities/scripts/v2"),
        vec![
            ("description", "d".into()),
            ("name", "mine.ps1".into()),
            ("permission_type", "public".into()),
            ("content", "echo".into()),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let mine = api.get(&format!("{RTR}/queries/scripts/v1?filter=name:'mine.ps1'")).await;
    let mine_id = mine.body["resources"][0].as_str().unwrap().to_owned();
    let entity = api.get(&format!("{RTR}/entities/scripts/v2?ids={mine_id}")).await;
    assert_eq!(
        (entity.resource()["permission_type"].as_str(), entity.resource()["content"].as_str()),
        (Some("private"), Some("echo mine $1"))
    );
    assert_eq!(entity.resource()["platform"], json!(["windows"]));
    let deleted = api.delete(&format!("{RTR}/entities/scripts/v1?ids={mine_id}")).await;
    assert_eq!(
        (deleted.status, deleted.body["meta"]["writes"]["resources_affected"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let again = api.delete(&format!("{RTR}/entities/scripts/v1?ids={mine_id}")).await;
    assert_eq!(
        (again.status, again.body["errors"][0]["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("Could not find file for deletion"))
    );
    let put_ids = api.get(&format!("{RTR}/queries/put-files/v1")).await;
    let put_id = put_ids.body["resources"][0].as_str().unwrap().to_owned();
    assert_eq!(
        api.delete(&format!("{RTR}/entities/put-files/v1?ids={put_id}")).await.status,
        StatusCode::OK
    );
    let falcon = api.get(&format!("{RTR}/queries/falcon-scripts/v1")).await;
    let first = falcon.body["resources"][0].as_str().unwrap().to_owned();
    let detail = api.get(&format!("{RTR}/entities/falcon-scripts/v1?ids={first}")).await;
    assert!(detail.resource()["name"].is_string());
}

// ---- batches (§7) ----

#[tokio::test]
async fn batches_with_an_offline_host_and_a_slow_one() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let (w1, w2, w3, l) = (
        aid(&sim, "CS-WIN-0001"),
        aid(&sim, "CS-WIN-0002"),
        aid(&sim, "CS-WIN-0003"),
        aid(&sim, "CS-LNX-0001"),
    );
    sim.set_online("CS-WIN-0003", false);
    sim.set_command_delay("CS-WIN-0002", Duration::from_millis(2500));

    let none = api
        .post(&format!("{RTR}/combined/batch-init-session/v1"), &json!({ "host_ids": [] }))
        .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        none.body["errors"][0]["message"],
        "Invalid number of hosts in request: 0. Must be an integer greater than 0 and less than or equal to 10000"
    );
    let offline_only = api
        .post(&format!("{RTR}/combined/batch-init-session/v1"), &json!({ "host_ids": [w3] }))
        .await;
    assert_eq!(offline_only.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (
            offline_only.body["batch_id"].as_str(),
            offline_only.body["errors"][0]["message"].as_str()
        ),
        (Some(""), Some("no successful hosts initialized on RTR"))
    );

    let init = api
        .post(
            &format!("{RTR}/combined/batch-init-session/v1?timeout=30"),
            &json!({ "host_ids": [w1, w2, w3, l], "queue_offline": false }),
        )
        .await;
    assert_eq!(init.status, StatusCode::CREATED, "{}", init.body);
    let batch = init.body["batch_id"].as_str().unwrap().to_owned();
    let res = &init.body["resources"];
    assert_eq!(
        (res[&w1]["stdout"].as_str(), res[&w1]["base_command"].as_str()),
        (Some("C:\\"), Some("pwd"))
    );
    assert_eq!(res[&l]["stdout"], "/");
    assert_eq!(
        res[&w3]["errors"][0],
        json!({ "code": 40401, "message": "Could not establish sensor comms" })
    );
    assert_eq!(res[&w3]["session_id"], "");

    let cmd = api
        .post(
            &format!("{RTR}/combined/batch-active-responder-command/v1?timeout_duration=1s"),
            &json!({ "base_command": "ls", "command_string": "ls", "batch_id": batch, "optional_hosts": [w1, w2], "persist_all": false }),
        )
        .await;
    assert_eq!(cmd.status, StatusCode::CREATED, "{}", cmd.body);
    let combined = cmd.body["combined"]["resources"].as_object().unwrap();
    assert_eq!(combined.len(), 2, "optional_hosts restricts the batch");
    assert_eq!(combined[&w1]["complete"], true);
    assert!(combined[&w1]["stdout"].as_str().unwrap().starts_with("Directory listing for C:\\"));
    assert_eq!(
        (combined[&w2]["complete"].as_bool(), combined[&w2]["stdout"].as_str()),
        (Some(false), Some(""))
    );
    // The straggler finishes later, read through the single-host status of the same tier.
    let task = combined[&w2]["task_id"].as_str().unwrap();
    let late = api.wait(RESPONDER, task).await;
    assert!(late["stdout"].as_str().unwrap().starts_with("Directory listing for C:\\"));

    // PSFalcon's keep-alive: batch-init again with the batch id; same sessions come back.
    let again = api
        .post(&format!("{RTR}/combined/batch-init-session/v1"), &json!({ "batch_id": batch }))
        .await;
    assert_eq!(
        (again.status, again.body["batch_id"].as_str()),
        (StatusCode::CREATED, Some(batch.as_str()))
    );
    assert_eq!(again.body["resources"][&w1]["session_id"], res[&w1]["session_id"]);
    let refresh = api
        .post(
            &format!("{RTR}/combined/batch-refresh-session/v1"),
            &json!({ "batch_id": batch, "hosts_to_remove": [l] }),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::CREATED);
    let refreshed = refresh.body["resources"].as_object().unwrap();
    assert!(refreshed.contains_key(&w1) && !refreshed.contains_key(&l));

    // Batch get: per-host stdout is the path; the status lists hosts once their upload ended.
    let get = api
        .post(
            &format!("{RTR}/combined/batch-get-command/v1?timeout=30"),
            &json!({ "batch_id": batch, "file_path": NOTE_PATH_WINDOWS, "optional_hosts": [w1] }),
        )
        .await;
    assert_eq!(get.status, StatusCode::CREATED, "{}", get.body);
    assert_eq!(get.body["combined"]["resources"][&w1]["stdout"], NOTE_PATH_WINDOWS);
    let req = get.body["batch_get_cmd_req_id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let file = loop {
        let a = api
            .get(&format!("{RTR}/combined/batch-get-command/v1?batch_get_cmd_req_id={req}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        if !a.body["resources"][&w1].is_null() {
            break a.body["resources"][&w1].clone();
        }
        assert!(started.elapsed() < DEADLINE, "the batch-get upload never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(file["name"], r"\Device\HarddiskVolume2\evidence\note.txt");
    // XSOAR downloads with a session of its own for the host (§10.1).
    let sid = api.session(&w1).await;
    let r = api
        .http
        .get(format!(
            "{base}{RTR}/entities/extracted-file-contents/v1?session_id={sid}&sha256={}",
            file["sha256"].as_str().unwrap()
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(unpack(&r.bytes().await.unwrap()), [("note.txt".to_owned(), NOTE_TXT.to_vec())]);

    sim.expire_sessions();
    let expired = api
        .post(
            &format!("{RTR}/combined/batch-command/v1"),
            &json!({ "base_command": "ls", "command_string": "ls", "batch_id": batch }),
        )
        .await;
    assert_eq!(expired.status, StatusCode::CREATED);
    assert_eq!(
        expired.body["combined"]["resources"][&w1]["errors"][0],
        json!({ "code": 50007, "message": "could not get session" })
    );
    let unknown = api.post(&format!("{RTR}/combined/batch-command/v1"), &json!({ "base_command": "ls", "command_string": "ls", "batch_id": "00000000-0000-0000-0000-000000000000" })).await;
    assert_eq!(unknown.error_code(), 50007);
}

// ---- offline queue (§6.7) ----

#[tokio::test]
async fn queued_commands_run_when_the_host_comes_back() {
    let (sim, base) = spawn(SimConfig::default()).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let w = aid(&sim, "CS-WIN-0001");
    sim.set_online("CS-WIN-0001", false);
    let refused =
        api.post(&format!("{RTR}/entities/sessions/v1"), &json!({ "device_id": w })).await;
    assert_eq!(refused.error_code(), 40401);
    let init = api
        .post(
            &format!("{RTR}/entities/sessions/v1"),
            &json!({ "device_id": w, "queue_offline": true }),
        )
        .await;
    assert_eq!(init.resource()["offline_queued"], true);
    let sid = init.resource()["session_id"].as_str().unwrap().to_owned();
    let pid = sim.any_pid("CS-WIN-0001");
    let kill = api.command(RESPONDER, &sid, &format!("kill {pid}")).await;
    assert_eq!(kill.resource()["queued_command_offline"], true);
    let kill_id = kill.resource()["cloud_request_id"].as_str().unwrap().to_owned();
    let cancel = api.send(RESPONDER, &sid, r"rm C:\evidence\note.txt").await;
    let queued =
        api.post(&format!("{RTR}/entities/queued-sessions/GET/v1"), &json!({ "ids": [sid] })).await;
    let job = queued.resource();
    assert_eq!(
        (job["status"].as_str(), job["Commands"][0]["status"].as_str()),
        (Some("PENDING"), Some("PENDING"))
    );
    assert_eq!(job["aid"], w.as_str());
    let del = api
        .delete(&format!(
            "{RTR}/entities/queued-sessions/command/v1?session_id={sid}&cloud_request_id={cancel}"
        ))
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert!(sim.process_running("CS-WIN-0001", pid), "nothing ran while offline");

    let r = http()
        .post(format!("{base}/_sim/hosts/CS-WIN-0001/online"))
        .json(&json!({ "online": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let done = api.wait(RESPONDER, &kill_id).await;
    assert_eq!(done["stderr"], "");
    assert!(!sim.process_running("CS-WIN-0001", pid));
    assert!(
        sim.file_content("CS-WIN-0001", NOTE_PATH_WINDOWS).is_some(),
        "the cancelled rm never ran"
    );
    let job =
        api.post(&format!("{RTR}/entities/queued-sessions/GET/v1"), &json!({ "ids": [sid] })).await;
    let statuses: Vec<&str> = job.resource()["Commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["FINISHED", "CANCELED"]);
    assert_eq!(log_ops(&base, "kill").await.len(), 1);
    assert_eq!(log_ops(&base, "rm").await.len(), 0);
}

// ---- rate limits and faults (§3, §11.12) ----

#[tokio::test]
async fn the_cid_window_answers_429_with_an_epoch_retry_time() {
    let (sim, base) = spawn(SimConfig { rate_limit_per_minute: 3, ..SimConfig::default() }).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    for left in ["2", "1", "0"] {
        let a = api.get("/devices/queries/devices/v1").await;
        assert_eq!(
            (a.status, a.headers["x-ratelimit-remaining"].to_str().unwrap()),
            (StatusCode::OK, left)
        );
    }
    let a = api.get("/devices/queries/devices/v1").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let at: u64 = a.headers["x-ratelimit-retryafter"].to_str().unwrap().parse().unwrap();
    assert!(at > now && at <= now + 61, "{at} vs {now}");
    assert_eq!(a.body["errors"][0]["code"], 429);

    // Injected faults answer the vendor's envelope too.
    let (sim2, base2) = spawn(SimConfig::default()).await;
    let api2 = Api::new(&base2, DEFAULT_CLIENT_ID).await;
    sim2.set_faults(Faults {
        status_429_next: 1,
        retry_after_secs: 5,
        error_5xx_next: 1,
        ..Faults::default()
    });
    let a = api2.get("/devices/queries/devices/v1").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let at: u64 = a.headers["x-ratelimit-retryafter"].to_str().unwrap().parse().unwrap();
    assert!(at >= now + 4, "{at}");
    let a = api2.get("/devices/queries/devices/v1").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        a.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(a.body["meta"]["trace_id"].as_str().unwrap())
    );
    assert_eq!(api2.get("/devices/queries/devices/v1").await.status, StatusCode::OK);
    drop(sim);
}

#[tokio::test]
async fn oversized_or_malformed_bodies_get_the_json_envelope() {
    let (sim, base) = spawn(SimConfig { max_put_file_bytes: 1024, ..SimConfig::default() }).await;
    let api = Api::new(&base, DEFAULT_CLIENT_ID).await;
    let big = json!({ "device_id": aid(&sim, "CS-WIN-0001"), "origin": "x".repeat(5 << 20) });
    let a = api.post(&format!("{RTR}/entities/sessions/v1"), &big).await;
    assert!(a.status.is_client_error(), "{}", a.status);
    assert!(a.headers["content-type"].to_str().unwrap().starts_with("application/json"));
    let (status, body) = upload(
        &api,
        &format!("{RTR}/entities/put-files/v1"),
        vec![("description", "too big".into())],
        Some(("big.bin", vec![0u8; 4096])),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) =
        upload(&api, &format!("{RTR}/entities/put-files/v1"), vec![], Some(("a.bin", vec![1])))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "description is required");
    let a = api.post("/devices/entities/devices/v2", &json!({ "ids": "not a list" })).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let r = http()
        .post(format!("{base}/_sim/hosts/NOPE/online"))
        .json(&json!({ "online": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn https_with_the_self_signed_certificate() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn_tls().await.unwrap();
    let cert = reqwest::Certificate::from_pem(sim.cert_pem().unwrap().as_bytes()).unwrap();
    let https = reqwest::Client::builder().tls_certs_only([cert]).build().unwrap();
    let r = https
        .post(format!("https://localhost:{}/oauth2/token", addr.port()))
        .form(&[("client_id", DEFAULT_CLIENT_ID), ("client_secret", DEFAULT_CLIENT_SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
