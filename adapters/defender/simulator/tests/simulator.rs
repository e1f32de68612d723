//! The Defender simulator over HTTP, as a vendor client sees it (defender.md §14).

use std::io::Read as _;
use std::time::Duration;

use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, Faults, LIBRARY_MAX_BYTES, NOTE_TXT,
    PUTFILE_WORKING_DIR, Sim as _, SimConfig, Simulator, machine_id,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn start(cfg: SimConfig) -> Api {
        let sim = Simulator::new(cfg);
        let addr = sim.spawn().await.unwrap();
        let base = format!("http://{addr}");
        let http = reqwest::Client::builder().build().unwrap();
        let mut api = Api { sim, base, http, token: String::new() };
        let (status, body) = api.token_v2(DEFAULT_CLIENT_SECRET).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        api.token = body["access_token"].as_str().unwrap().to_owned();
        api
    }

    async fn token_v2(&self, secret: &str) -> (StatusCode, Value) {
        let body = format!(
            "grant_type=client_credentials&client_id={DEFAULT_CLIENT_ID}&client_secret={secret}&scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default"
        );
        let r = self
            .http
            .post(format!("{}/{DEFAULT_TENANT}/oauth2/v2.0/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value, Option<String>) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        (r.status(), r.json().await.unwrap_or(Value::Null), retry)
    }

    async fn live_response(
        &self,
        machine: usize,
        commands: Value,
    ) -> (StatusCode, Value, Option<String>) {
        self.post(
            &format!("/api/machines/{}/runliveresponse", machine_id(machine)),
            &json!({"Commands": commands, "Comment": "sim test"}),
        )
        .await
    }

    /// Polls until the action is final.
    async fn settle(&self, id: &str) -> Value {
        for _ in 0..200 {
            let (status, a) = self.get(&format!("/api/machineactions/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{a}");
            if ["Succeeded", "Failed", "TimeOut", "Cancelled"]
                .contains(&a["status"].as_str().unwrap())
            {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("action {id} did not end");
    }

    async fn link(&self, id: &str, index: usize) -> (StatusCode, Value) {
        self.get(&format!(
            "/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={index})"
        ))
        .await
    }
}

fn get_file(path: &str) -> Value {
    json!({"type": "GetFile", "params": [{"key": "Path", "value": path}]})
}

fn run_script(name: &str) -> Value {
    json!({"type": "RunScript", "params": [{"key": "ScriptName", "value": name}, {"key": "Args", "value": "a b"}]})
}

#[tokio::test]
async fn token_endpoints_speak_entra() {
    let api =
        Api::start(SimConfig { token_lifetime: Duration::from_secs(600), ..SimConfig::default() })
            .await;
    let (status, ok) = api.token_v2(DEFAULT_CLIENT_SECRET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((ok["token_type"].as_str(), ok["expires_in"].as_u64()), (Some("Bearer"), Some(600)));
    let (status, bad) = api.token_v2("wrong").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"], "invalid_client");
    assert!(bad["error_description"].as_str().unwrap().starts_with("AADSTS7000215"));
    assert_eq!(bad["error_codes"], json!([7000215]));
    assert!(bad["trace_id"].is_string() && bad["correlation_id"].is_string());
    // v1: `resource` instead of `scope`.
    let v1 = api
        .http
        .post(format!("{}/{DEFAULT_TENANT}/oauth2/token", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={DEFAULT_CLIENT_ID}&client_secret={DEFAULT_CLIENT_SECRET}&resource=https%3A%2F%2Fapi.securitycenter.microsoft.com"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), StatusCode::OK);
    // A bearer the simulator never issued, and one that expired.
    let r = api
        .http
        .get(format!("{}/api/machines", api.base))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "Unauthorized");
    api.sim.expire_tokens();
    assert_eq!(api.get("/api/machines").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.sim.counters().tokens_refused, 1);
}

#[tokio::test]
async fn machines_answer_odata_filters() {
    let api = Api::start(SimConfig { offline_machines: vec![2], ..SimConfig::default() }).await;
    let (_, all) = api.get("/api/machines").await;
    assert_eq!(all["value"].as_array().unwrap().len(), 5);
    let (_, one) = api.get("/api/machines?$filter=computerDnsName%20eq%20'MDE-0002'").await;
    let one = one["value"].as_array().unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0]["id"].as_str().unwrap(), one[0]["healthStatus"].as_str()),
        (machine_id(2).as_str(), Some("Inactive"))
    );
    let filter = format!("id in ('{}','{}')", machine_id(1), machine_id(3));
    let (_, two) = api.get(&format!("/api/machines?$filter={}", urlencode(&filter))).await;
    assert_eq!(two["value"].as_array().unwrap().len(), 2);
    // `startswith` is documented on machines (OData samples page); other functions are not.
    let (_, prefixed) =
        api.get("/api/machines?$filter=startswith(computerDnsName,'MDE-000')").await;
    assert_eq!(prefixed["value"].as_array().unwrap().len(), 5);
    let (status, bad) = api.get("/api/machines?$filter=contains(computerDnsName,'m')").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["code"], "");
    // Pages of at most the page size, then `@odata.nextLink` with the same query.
    let paged = Api::start(SimConfig { page_size: 2, ..SimConfig::default() }).await;
    let (_, first) = paged.get("/api/machines?$filter=startswith(computerDnsName,'mde')").await;
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    let next = first["@odata.nextLink"].as_str().unwrap();
    assert!(next.contains("%24skip=2") || next.contains("$skip=2"), "{next}");
    assert!(next.contains("startswith"), "{next}");
    // The docs write `/API/` in one place (§0): the same routes answer there.
    let (status, upper) = api.get("/API/machines?$top=2").await;
    assert_eq!((status, upper["value"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)));
    let (status, by_name) = api.get("/api/machines/mde-0004").await;
    assert_eq!((status, by_name["id"].as_str().unwrap()), (StatusCode::OK, machine_id(4).as_str()));
    let (status, missing) = api.get("/api/machines/123").await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
}

fn urlencode(s: &str) -> String {
    s.replace(' ', "%20").replace('\'', "%27").replace(',', "%2C")
}

#[tokio::test]
async fn runliveresponse_validates_like_the_service() {
    // Refused calls count against the rate limit too; this test makes more than 10.
    let api = Api::start(SimConfig { live_response_calls: 100, ..SimConfig::default() }).await;
    let cases = [
        (json!({"commands": [get_file("C:\\x")], "Comment": "c"}), "MissingRequiredParameter"),
        (json!({"Commands": [], "Comment": "c"}), "InvalidInput"),
        (json!({"Commands": [{"type": "Format", "params": []}], "Comment": "c"}), "InvalidInput"),
        (
            json!({"Commands": [{"type": "GetFile", "params": [{"key": "File", "value": "x"}]}], "Comment": "c"}),
            "InvalidInput",
        ),
        (
            json!({"Commands": [{"type": "GetFile", "params": []}], "Comment": "c"}),
            "MissingRequiredParameter",
        ),
        (
            json!({"Commands": [get_file("C:\\x"), run_script("collect.ps1")], "Comment": "c"}),
            "InvalidInput",
        ),
        (json!({"Commands": [run_script("absent.ps1")], "Comment": "c"}), "InvalidInput"),
        (json!("not an object"), "InvalidRequestBody"),
    ];
    for (body, code) in cases {
        let (status, err, _) =
            api.post(&format!("/api/machines/{}/runliveresponse", machine_id(1)), &body).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
        assert!(err["error"]["target"].is_string());
    }
    let (status, err, _) = api
        .post(
            "/api/machines/ffff/runliveresponse",
            &json!({"Commands": [get_file("C:\\x")], "Comment": "c"}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
    let (status, created, _) =
        api.live_response(1, json!([run_script("collect.ps1"), get_file("C:\\x")])).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["type"].as_str(), created["status"].as_str()),
        (Some("LiveResponse"), Some("Pending"))
    );
    assert_eq!(created["commands"][1]["commandStatus"], "Created");
    assert_eq!(created["requestorComment"], "sim test");
    let (status, busy, _) = api.live_response(1, json!([get_file("C:\\x")])).await;
    assert_eq!(
        (status, busy["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ActiveRequestAlreadyExists"))
    );
}

#[tokio::test]
async fn rate_and_session_limits_answer_429_with_retry_after() {
    let api = Api::start(SimConfig {
        live_response_calls: 3,
        live_response_window: Duration::from_secs(60),
        session_cap: 2,
        pickup_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    assert_eq!(api.live_response(1, json!([get_file("C:\\x")])).await.0, StatusCode::CREATED);
    assert_eq!(api.live_response(2, json!([get_file("C:\\x")])).await.0, StatusCode::CREATED);
    let (status, err, retry) = api.live_response(3, json!([get_file("C:\\x")])).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("TooManyRequests"))
    );
    assert!(retry.is_some());
    let (status, _, retry) = api.live_response(4, json!([get_file("C:\\x")])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let c = api.sim.counters();
    assert_eq!(
        (c.session_cap_rejections, c.live_response_rate_limited, c.responses_429),
        (1, 1, 2)
    );
    assert_eq!(c.max_concurrent_sessions, 2);
}

#[tokio::test]
async fn a_failed_command_stops_the_chain_and_results_come_from_links() {
    let api = Api::start(SimConfig::default()).await;
    let (_, a, _) = api
        .live_response(
            1,
            json!([
                run_script("collect.ps1"),
                get_file("C:\\nope.txt"),
                get_file("C:\\evidence\\note.txt")
            ]),
        )
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    // No link before the command completed.
    assert_eq!(api.link(&id, 0).await.0, StatusCode::NOT_FOUND);
    let done = api.settle(&id).await;
    assert_eq!(done["status"], "Failed");
    assert_eq!(done["errorHResult"], json!(0x8007_0002_u32 as i32));
    let statuses: Vec<&str> = done["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["commandStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Completed", "Failed", "Created"]);
    assert_eq!(done["commands"][1]["errors"][0], "File C:\\nope.txt was not found on the device");
    assert_eq!(api.link(&id, 1).await.0, StatusCode::NOT_FOUND);
    // The RunScript result: JSON with the transcript banner, fetched without a bearer.
    let (_, link) = api.link(&id, 0).await;
    let url = link["value"].as_str().unwrap();
    // Shaped like the documented SAS link (§5): an opaque blob name, `se` in ISO-8601.
    let path = url.split('?').next().unwrap();
    let blob = path.rsplit('/').next().unwrap();
    assert!(
        path.contains(&format!("/investigation-actions-data/{id}/CustomPlaybookCommandOutput/"))
    );
    assert!(blob.len() == 32 && blob.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    assert!(
        url.contains("?se=20")
            && url.contains("%3A")
            && url.contains("&sp=r&sv=2019-07-07&sr=b&sig=")
    );
    let blob: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(
        (blob["script_name"].as_str(), blob["exit_code"].as_i64()),
        (Some("collect.ps1"), Some(0))
    );
    let out = blob["script_output"].as_str().unwrap();
    assert!(
        out.starts_with("Transcript started")
            && out.contains("collected on mde-0001 with a b")
            && out.ends_with('\0')
    );
    // A tampered link is refused.
    let r = reqwest::get(url.replace("sig=", "sig=0")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn get_file_blobs_are_gzip_and_links_expire() {
    let api =
        Api::start(SimConfig { link_lifetime: Duration::from_millis(300), ..SimConfig::default() })
            .await;
    let (_, a, _) = api.live_response(2, json!([get_file("C:\\evidence\\note.txt")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settle(&id).await["status"], "Succeeded");
    let (_, link) = api.link(&id, 0).await;
    let url = link["value"].as_str().unwrap().to_owned();
    let gz = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
    assert_eq!(plain, NOTE_TXT);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = reqwest::get(&url).await.unwrap();
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert!(expired.text().await.unwrap().contains("AuthenticationFailed"));
    // A fresh link works again.
    let (_, again) = api.link(&id, 0).await;
    assert_eq!(
        reqwest::get(again["value"].as_str().unwrap()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(api.sim.counters().expired_downloads, 1);
}

#[tokio::test]
async fn cancel_races_completion_and_offline_machines_queue() {
    let api = Api::start(SimConfig {
        offline_machines: vec![5],
        queue_timeout: Duration::from_millis(600),
        ..SimConfig::default()
    })
    .await;
    let (_, queued, _) = api.live_response(5, json!([get_file("C:\\x")])).await;
    let queued = queued["id"].as_str().unwrap().to_owned();
    let (_, timed, _) = {
        api.sim.set_machine_online(4, false);
        api.live_response(4, json!([get_file("C:\\x")])).await
    };
    let (status, cancelled, _) = api
        .post(&format!("/api/machineactions/{queued}/cancel"), &json!({"Comment": "stop"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["cancellationComment"].as_str()),
        (Some("Cancelled"), Some("stop"))
    );
    // An offline machine's action times out after the queue limit.
    assert_eq!(api.settle(timed["id"].as_str().unwrap()).await["status"], "TimeOut");
    // Cancelling a finished action returns it unchanged.
    let (_, a, _) = api.live_response(1, json!([get_file("C:\\evidence\\note.txt")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    api.settle(&id).await;
    let (status, after, _) =
        api.post(&format!("/api/machineactions/{id}/cancel"), &json!({"Comment": "late"})).await;
    assert_eq!((status, after["status"].as_str()), (StatusCode::OK, Some("Succeeded")));
    assert_eq!(api.sim.counters().cancels, 1);
    // Listing by id in (…), as batched polls do.
    let filter = urlencode(&format!("id in ('{queued}','{id}')"));
    let (_, list) = api.get(&format!("/api/machineactions?$filter={filter}&$count=true")).await;
    assert_eq!(list["@odata.count"], 2);
}

#[tokio::test]
async fn run_script_over_the_limit_times_out() {
    let api = Api::start(SimConfig {
        script_timeout: Duration::from_millis(300),
        library_scripts: vec![(
            "slow.ps1".into(),
            "Start-Sleep -Seconds 5\nWrite-Output done\n".into(),
        )],
        ..SimConfig::default()
    })
    .await;
    let (_, a, _) = api
        .live_response(1, json!([run_script("slow.ps1"), get_file("C:\\evidence\\note.txt")]))
        .await;
    let done = api.settle(a["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "TimeOut");
    assert_eq!(done["commands"][0]["commandStatus"], "Failed");
    assert_eq!(done["commands"][1]["commandStatus"], "Created");
}

#[tokio::test]
async fn library_upload_list_delete_with_its_rules() {
    let api = Api::start(SimConfig { library_max_bytes: 1024, ..SimConfig::default() }).await;
    let upload = |name: &'static str, bytes: Vec<u8>, override_existing: bool| {
        let api = &api;
        async move {
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(bytes).file_name(name))
                .text("Description", "test")
                .text("HasParameters", "false")
                .text("OverrideIfExists", if override_existing { "true" } else { "false" });
            let r = api
                .http
                .post(format!("{}/api/libraryfiles", api.base))
                .bearer_auth(&api.token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, entity) = upload("tool.ps1", b"Write-Output hi".to_vec(), false).await;
    assert_eq!(status, StatusCode::OK, "{entity}");
    assert_eq!(entity["fileName"], "tool.ps1");
    assert_eq!(entity["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(upload("tool.ps1", b"x".to_vec(), false).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(upload("tool.ps1", b"x".to_vec(), true).await.0, StatusCode::OK);
    assert_eq!(upload("bad name.ps1", b"x".to_vec(), false).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(upload("big.bin", vec![0; 1025], false).await.0, StatusCode::BAD_REQUEST);
    let (_, list) = api.get("/api/libraryfiles").await;
    let names: Vec<&str> =
        list["value"].as_array().unwrap().iter().map(|f| f["fileName"].as_str().unwrap()).collect();
    assert_eq!(names, ["collect.ps1", "tool.ps1"]);
    let delete = || {
        api.http
            .delete(format!("{}/api/libraryfiles/tool.ps1", api.base))
            .bearer_auth(&api.token)
            .send()
    };
    assert_eq!(delete().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(delete().await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn isolate_and_unisolate_are_machine_actions() {
    let api = Api::start(SimConfig::default()).await;
    let m = machine_id(3);
    let (status, err, _) =
        api.post(&format!("/api/machines/{m}/isolate"), &json!({"IsolationType": "Full"})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MissingRequiredParameter"))
    );
    let (status, a, _) = api
        .post(
            &format!("/api/machines/{m}/isolate"),
            &json!({"Comment": "c", "IsolationType": "Selective"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!((a["type"].as_str(), a["scope"].as_str()), (Some("Isolate"), Some("Selective")));
    assert_eq!(api.settle(a["id"].as_str().unwrap()).await["status"], "Succeeded");
    assert!(api.sim.is_isolated(&m));
    let (_, u, _) =
        api.post(&format!("/api/machines/{m}/unisolate"), &json!({"Comment": "c"})).await;
    api.settle(u["id"].as_str().unwrap()).await;
    assert!(!api.sim.is_isolated(&m));
}

#[tokio::test]
async fn faults_api_budget_and_read_after_write_lag() {
    let api = Api::start(SimConfig {
        visibility_delay: Duration::from_millis(300),
        api_calls_per_minute: 4,
        ..SimConfig::default()
    })
    .await;
    let (_, a, _) = api.live_response(1, json!([get_file("C:\\x")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let (status, hidden) = api.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(
        (status, hidden["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(api.get(&format!("/api/machineactions/{id}")).await.0, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(api.get("/api/machineactions").await.0, StatusCode::OK);
    }
    assert_eq!(api.get("/api/machineactions").await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another endpoint has its own budget.
    assert_eq!(api.get("/api/machines").await.0, StatusCode::OK);
    api.sim.set_faults(Faults { error_5xx_every: Some(1), ..Faults::default() });
    let (status, err) = api.get("/api/machines").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("InternalServerError"))
    );
    assert!(api.sim.counters().faults_5xx >= 1);
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn_tls().await.unwrap();
    let cert = reqwest::Certificate::from_pem(sim.cert_pem().unwrap().as_bytes()).unwrap();
    let http = reqwest::Client::builder().tls_certs_merge([cert]).build().unwrap();
    let r = http
        .post(format!("https://localhost:{}/{DEFAULT_TENANT}/oauth2/v2.0/token", addr.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_id={DEFAULT_CLIENT_ID}&client_secret={DEFAULT_CLIENT_SECRET}&scope=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Result links are https once the simulator serves HTTPS.
    let token: Value = r.json().await.unwrap();
    let api = Api {
        sim: sim.clone(),
        base: format!("https://localhost:{}", addr.port()),
        http,
        token: token["access_token"].as_str().unwrap().to_owned(),
    };
    let (_, a, _) = api.live_response(1, json!([get_file("C:\\evidence\\note.txt")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    api.settle(&id).await;
    let (_, link) = api.link(&id, 0).await;
    let url = link["value"].as_str().unwrap();
    assert!(url.starts_with("https://localhost:"), "{url}");
    assert_eq!(api.http.get(url).send().await.unwrap().status(), StatusCode::OK);
}

// ---- the simulator's own types against the recorded examples (tests/fixtures) ----

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

#[tokio::test]
async fn documented_runliveresponse_is_accepted_and_answered_in_the_documented_shape() {
    let api = Api::start(SimConfig {
        library_scripts: vec![("minidump.ps1".into(), "Write-Output $args\n".into())],
        ..SimConfig::default()
    })
    .await;
    let doc = fixture("POST_api_machines_id_runliveresponse.json");
    let (status, created, _) = api
        .post(&format!("/api/machines/{}/runliveresponse", machine_id(1)), &doc["request"]["body"])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let example = &doc["body"];
    // Every documented field, spelled the same; nothing beyond the modern field set of a
    // machine action (the offboard capture, which also shows `commands: []` elsewhere).
    let modern = keys(&fixture("POST_api_machines_id_offboard.json")["body"]);
    assert!(keys(example).is_subset(&keys(&created)), "{created}");
    assert_eq!(keys(&created), modern, "{created}");
    assert_eq!(created["requestorComment"], example["requestorComment"]);
    assert_eq!(created["requestSource"], "PublicApi");
    for (got, want) in
        created["commands"].as_array().unwrap().iter().zip(example["commands"].as_array().unwrap())
    {
        assert_eq!(keys(got), keys(want));
        assert_eq!(
            (&got["index"], &got["commandStatus"], &got["command"]),
            (&want["index"], &want["commandStatus"], &want["command"])
        );
    }
    // The single-entity read carries the same shape and the entity context.
    let id = created["id"].as_str().unwrap();
    let (_, read) = api.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(keys(&read), modern);
    assert!(
        read["@odata.context"].as_str().unwrap().ends_with("/api/$metadata#MachineActions/$entity")
    );
    // A non-live-response action: `commands` is `[]`, `scope` the isolation type.
    let (_, iso, _) = api
        .post(
            &format!("/api/machines/{}/isolate", machine_id(2)),
            &json!({"Comment": "c", "IsolationType": "Full"}),
        )
        .await;
    assert_eq!(keys(&iso), modern);
    assert_eq!((iso["commands"].clone(), iso["scope"].clone()), (json!([]), json!("Full")));
    let documented_isolate = fixture("GET_api_machineactions_id.json");
    assert!(keys(&documented_isolate["body"]).is_subset(&keys(&iso)));
}

#[tokio::test]
async fn entities_errors_links_and_blobs_have_the_documented_fields() {
    let api = Api::start(SimConfig::default()).await;
    // Machine (§10): the capture's field set.
    let (_, m) = api.get(&format!("/api/machines/{}", machine_id(1))).await;
    assert_eq!(keys(&m), keys(&fixture("GET_api_machines_id.json")["body"]), "{m}");
    assert!(m["@odata.context"].as_str().unwrap().ends_with("/api/$metadata#Machines/$entity"));
    assert_eq!(
        keys(&m["ipAddresses"][0]),
        keys(&fixture("GET_api_machines_id.json")["body"]["ipAddresses"][0])
    );
    // Error envelope (§7).
    let (_, err) = api.get("/api/machines/123123123").await;
    let documented = fixture("error_404_ResourceNotFound.json");
    assert_eq!(keys(&err), keys(&documented["body"]));
    assert_eq!(keys(&err["error"]), keys(&documented["body"]["error"]));
    assert_eq!(err["error"]["message"], documented["body"]["error"]["message"]);
    let (_, bad, _) =
        api.post(&format!("/api/machines/{}/runliveresponse", machine_id(1)), &json!([])).await;
    assert_eq!(
        bad["error"]["code"],
        fixture("error_400_InvalidRequestBody.json")["body"]["error"]["code"]
    );
    // Library entity (§8.2): the documented entry with a parameters description.
    let form = reqwest::multipart::Form::new()
        .part(
            "File",
            reqwest::multipart::Part::bytes(b"Write-Output 1".to_vec()).file_name("script1.ps1"),
        )
        .text("ParametersDescription", "test")
        .text("HasParameters", "true");
    let r = api
        .http
        .post(format!("{}/api/libraryfiles", api.base))
        .bearer_auth(&api.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let entity: Value = r.json().await.unwrap();
    let library = fixture("GET_api_libraryfiles.json");
    assert_eq!(keys(&entity), keys(&library["body"]["value"][0]), "{entity}");
    assert_eq!(
        (entity["hasParameters"].clone(), entity["parametersDescription"].clone()),
        (json!(true), json!("test"))
    );
    let (_, list) = api.get("/api/libraryfiles").await;
    assert_eq!(keys(&list), keys(&library["body"]));
    // Link (§5) and RunScript blob.
    let (_, a, _) = api.live_response(1, json!([run_script("collect.ps1")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    api.settle(&id).await;
    let (_, link) = api.link(&id, 0).await;
    let documented = fixture("GET_api_machineactions_id_GetLiveResponseResultDownloadLink.json");
    assert_eq!(keys(&link), keys(&documented["body"]));
    assert!(link["@odata.context"].as_str().unwrap().ends_with("/api/$metadata#Edm.String"));
    let blob: Value =
        reqwest::get(link["value"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    assert_eq!(
        keys(&blob),
        keys(&fixture("GET_live-response-result-blob__runscript-transcript.json")["body"])
    );
}

#[tokio::test]
async fn the_documented_order_and_body_rules() {
    let api = Api::start(SimConfig { live_response_calls: 100, ..SimConfig::default() }).await;
    let put = json!({"type": "PutFile", "params": [{"key": "FileName", "value": "collect.ps1"}]});
    let url = |n: usize| format!("/api/machines/{}/runliveresponse", machine_id(n));
    // "PutFile → RunScript → GetFile, with any number of each" (§3.1).
    let ordered = json!([
        put,
        put,
        run_script("collect.ps1"),
        run_script("collect.ps1"),
        get_file("C:\\evidence\\note.txt"),
        get_file("C:\\evidence\\note.txt")
    ]);
    let (status, a, _) = api.post(&url(1), &json!({"Commands": ordered, "Comment": "c"})).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    for bad in [json!([run_script("collect.ps1"), put]), json!([get_file("C:\\x"), put])] {
        let (status, err, _) = api.post(&url(2), &json!({"Commands": bad, "Comment": "c"})).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("InvalidInput"))
        );
    }
    // `Comment` is optional for live response (§3.1); a key in the wrong case is refused.
    let (status, a, _) =
        api.post(&url(3), &json!({"Commands": [get_file("C:\\evidence\\note.txt")]})).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["requestorComment"], Value::Null);
    let (status, err, _) =
        api.post(&url(4), &json!({"Commands": [get_file("C:\\x")], "comment": "c"})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestBody"))
    );
    let (status, err, _) = api
        .post(&url(4), &json!({"Commands": [{"Type": "GetFile", "params": [{"key": "Path", "value": "C:\\x"}]}]}))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestBody"))
    );
    // The EDMX optionals are echoed.
    let (status, a, _) = api
        .post(&url(5), &json!({"Commands": [get_file("C:\\x")], "Comment": "c", "ExternalId": "ext-1", "Title": "t"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!((a["externalId"].as_str(), a["title"].as_str()), (Some("ext-1"), Some("t")));
    // Unknown `$` options are the service's OData error (§4.4).
    let (status, err) = api.get("/api/machineactions?$stop=1").await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("")));
    assert!(err["error"]["details"].is_array());
    // `or` and parentheses, as Akto's "anything running here?" query writes them.
    let filter = urlencode(&format!(
        "machineId eq '{}' and (status eq 'Pending' or status eq 'InProgress')",
        machine_id(1)
    ));
    let (_, running) = api.get(&format!("/api/machineactions?$filter={filter}&$orderby=creationDateTimeUtc%20desc&$top=1&$count=true")).await;
    assert_eq!(running["value"].as_array().unwrap().len(), 1, "{running}");
    assert_eq!(running["@odata.count"], 1);
}

#[tokio::test]
async fn helpers_run_by_content_and_put_file_uses_the_working_folder() {
    use base64::Engine as _;
    use edrgate_defender_helpers::{HELPER_MARKER, Helper, HelperOutput};
    let api = Api::start(SimConfig::default()).await;
    let upload = |name: &'static str, bytes: Vec<u8>| {
        let api = &api;
        async move {
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
            let r = api
                .http
                .post(format!("{}/api/libraryfiles", api.base))
                .bearer_auth(&api.token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    // The file helper under a name of our own: Defender runs content, not names.
    upload("mover.ps1", Helper::File.source().as_bytes().to_vec()).await;
    upload("payload.bin", b"MZ payload".to_vec()).await;
    let params = json!({"op": "place", "source": format!("{PUTFILE_WORKING_DIR}\\payload.bin"), "path": "C:\\Users\\Public\\payload.exe"});
    let args =
        format!("-p {}", base64::engine::general_purpose::STANDARD.encode(params.to_string()));
    let (status, a, _) = api
        .live_response(
            1,
            json!([
                {"type": "PutFile", "params": [{"key": "FileName", "value": "payload.bin"}]},
                {"type": "RunScript", "params": [{"key": "ScriptName", "value": "mover.ps1"}, {"key": "Args", "value": args}]}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settle(&id).await["status"], "Succeeded");
    assert_eq!(
        api.sim.file_content(&machine_id(1), "C:\\Users\\Public\\payload.exe").as_deref(),
        Some(&b"MZ payload"[..])
    );
    // PutFile has no result (§5); the helper printed its line.
    assert_eq!(api.link(&id, 0).await.0, StatusCode::NOT_FOUND);
    let (_, link) = api.link(&id, 1).await;
    let blob: Value =
        reqwest::get(link["value"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    let out = blob["script_output"].as_str().unwrap();
    let line = out.lines().find_map(|l| l.strip_prefix(HELPER_MARKER)).unwrap();
    assert_eq!(
        serde_json::from_str::<HelperOutput>(line).unwrap(),
        HelperOutput { ok: true, ..HelperOutput::default() }
    );
    assert_eq!(api.sim.counters().helper_runs.get("file"), Some(&1));
}

#[tokio::test]
async fn the_admin_routes_serve_what_was_executed() {
    let api = Api::start(SimConfig::default()).await;
    let (_, a, _) =
        api.live_response(2, json!([run_script("collect.ps1"), get_file("C:\\nope.txt")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    api.settle(&id).await;
    let (_, iso, _) = api
        .post(&format!("/api/machines/{}/isolate", machine_id(2)), &json!({"Comment": "c"}))
        .await;
    api.settle(iso["id"].as_str().unwrap()).await;
    let page: Value =
        api.http.get(format!("{}/_sim/log", api.base)).send().await.unwrap().json().await.unwrap();
    let entries = page["entries"].as_array().unwrap();
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["detail"]["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(ops, [("RunScript", "Completed"), ("GetFile", "Failed"), ("Isolate", "")]);
    assert!(entries.iter().all(|e| e["target"] == machine_id(2)));
    assert_eq!(entries[1]["detail"]["params"], json!([{"key": "Path", "value": "C:\\nope.txt"}]));
    assert_eq!(entries[1]["detail"]["errorHResult"], "0x80070002");
    assert_eq!(entries[2]["detail"]["changed"], true);
    let counters: Value = api
        .http
        .get(format!("{}/_sim/counters", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["executed"]["GetFile"], 1);
    assert_eq!(counters["counters"]["live_response_actions"], 1);
    assert_eq!(counters["counters"]["isolation_changes"], 1);
    assert_eq!(api.sim.log().count("RunScript"), 1);
}

#[tokio::test]
async fn dropped_answers_before_or_after_acting() {
    let api = Api::start(SimConfig::default()).await;
    let send = || {
        api.http
            .post(format!("{}/api/machines/{}/runliveresponse", api.base, machine_id(1)))
            .bearer_auth(&api.token)
            .json(&json!({"Commands": [get_file("C:\\evidence\\note.txt")], "Comment": "c"}))
            .send()
    };
    api.sim.set_faults(Faults { drop_every: Some(1), ..Faults::default() });
    assert!(send().await.is_err());
    assert_eq!(api.sim.counters().live_response_actions, 0);
    api.sim.set_faults(Faults {
        drop_every: Some(1),
        drop_after_processing: true,
        ..Faults::default()
    });
    assert!(send().await.is_err());
    api.sim.set_faults(Faults::default());
    let c = api.sim.counters();
    assert_eq!((c.live_response_actions, c.faults_dropped), (1, 2));
}

#[test]
fn the_library_cap_is_the_documented_20_mb() {
    assert_eq!(LIBRARY_MAX_BYTES, 20 * 1024 * 1024);
    assert_eq!(SimConfig::default().library_max_bytes, LIBRARY_MAX_BYTES);
}

/// What `Set-AuthenticodeSignature` appends to a script (the simulator does not verify it).
const SIGNATURE: &str = "\r\n# SIG # Begin signature block\r\n# MIIFuQYJKoZIhvcNAQcCoIIFqjCCBaYCAQExCzAJBgUrDgMCGgUA\r\n# SIG # End signature block\r\n";

#[tokio::test]
async fn a_tenant_without_unsigned_script_execution_runs_only_signed_scripts() {
    use edrgate_defender_helpers::Helper;
    let signed_helper = Helper::ProcessList.library_name();
    let api = Api::start(SimConfig {
        unsigned_scripts: false,
        library_scripts: vec![
            ("collect.ps1".into(), "Write-Output collected\nexit 0\n".into()),
            ("signed.ps1".into(), format!("Write-Output signed{SIGNATURE}")),
            (signed_helper.clone(), format!("{}{SIGNATURE}", Helper::ProcessList.source())),
            (Helper::File.library_name(), Helper::File.source().into()),
        ],
        ..SimConfig::default()
    })
    .await;
    // An unsigned script fails its command with PowerShell's AllSigned refusal.
    let (_, a, _) = api.live_response(1, json!([run_script("collect.ps1")])).await;
    let done = api.settle(a["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "Failed");
    assert_eq!(done["commands"][0]["commandStatus"], "Failed");
    let error = done["commands"][0]["errors"][0].as_str().unwrap();
    assert!(error.contains("collect.ps1 is not digitally signed"), "{error}");
    assert_eq!(done["errorHResult"], json!(0x8013_1500_u32 as i32));
    // So does edrgate's own unsigned helper.
    let (_, a, _) = api.live_response(1, json!([run_script(&Helper::File.library_name())])).await;
    assert_eq!(api.settle(a["id"].as_str().unwrap()).await["status"], "Failed");
    // Signed ones run; a signed copy of a helper is that helper.
    let (_, a, _) = api.live_response(1, json!([run_script("signed.ps1")])).await;
    assert_eq!(api.settle(a["id"].as_str().unwrap()).await["status"], "Succeeded");
    let (_, a, _) = api.live_response(1, json!([run_script(&signed_helper)])).await;
    assert_eq!(api.settle(a["id"].as_str().unwrap()).await["status"], "Succeeded");
    let c = api.sim.counters();
    assert_eq!((c.helper_runs.get("process_list"), c.helper_runs.get("file")), (Some(&1), None));
    // The tenant's default in the simulator: unsigned scripts run.
    let open = Api::start(SimConfig::default()).await;
    let (_, a, _) = open.live_response(1, json!([run_script("collect.ps1")])).await;
    assert_eq!(open.settle(a["id"].as_str().unwrap()).await["status"], "Succeeded");
}

#[tokio::test]
async fn every_machine_has_what_a_responder_looks_at_first() {
    let api = Api::start(SimConfig {
        os_platforms: vec![(2, "Linux".into()), (3, "macOS".into())],
        ..SimConfig::default()
    })
    .await;
    let (win, linux, mac) = (machine_id(1), machine_id(2), machine_id(3));
    let (_, m) = api.get(&format!("/api/machines/{linux}")).await;
    assert_eq!((m["osPlatform"].as_str(), &m["osBuild"]), (Some("Linux"), &Value::Null));
    let (_, m) = api.get(&format!("/api/machines/{win}")).await;
    assert_eq!((m["osPlatform"].as_str(), m["osBuild"].as_u64()), (Some("Windows11"), Some(22631)));
    let (_, list) = api.get("/api/machines?$filter=osPlatform%20eq%20'macOS'").await;
    let ids: Vec<&str> =
        list["value"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [mac.as_str()]);
    for path in [
        "C:\\Windows\\System32\\cmd.exe",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        "C:\\Windows\\System32\\winevt\\Logs\\Security.evtx",
        "C:\\Users\\alice\\Desktop",
        "C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup",
        "C:\\Program Files",
        // The demo's evidence stays.
        "C:\\evidence\\note.txt",
    ] {
        assert!(api.sim.file_exists(&win, path), "{path}");
    }
    for (pid, name) in [
        (4, "System"),
        (388, "smss"),
        (520, "csrss"),
        (612, "wininit"),
        (668, "winlogon"),
        (812, "services"),
        (700, "lsass"),
        (904, "svchost"),
        (3120, "explorer"),
        (3012, "updater"),
    ] {
        assert!(api.sim.process_exists(&win, pid), "{name}");
    }
    assert!(
        api.sim
            .registry_value(
                &win,
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                "SecurityHealth"
            )
            .is_some()
    );
    assert_eq!(
        api.sim.registry_value(
            &win,
            "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
            "CurrentBuild"
        ),
        Some(json!("22631"))
    );
    for path in [
        "/etc/passwd",
        "/etc/hosts",
        "/var/log/syslog",
        "/bin/bash",
        "/home/jdoe/.bash_history",
        "/tmp",
    ] {
        assert!(api.sim.file_exists(&linux, path), "{path}");
    }
    // POSIX paths are case-sensitive; Windows paths are not there.
    assert!(!api.sim.file_exists(&linux, "/ETC/PASSWD"));
    assert!(!api.sim.file_exists(&linux, "C:\\Windows\\System32\\cmd.exe"));
    assert!(api.sim.process_exists(&linux, 1) && api.sim.process_exists(&linux, 880));
    for path in [
        "/Applications",
        "/Users/alice/Downloads",
        "/System/Library/CoreServices/SystemVersion.plist",
        "/etc/hosts",
        "/var/log/system.log",
    ] {
        assert!(api.sim.file_exists(&mac, path), "{path}");
    }
    assert!(api.sim.process_exists(&mac, 1) && api.sim.process_exists(&mac, 620));
    // GetFile reads them like any file.
    let (_, a, _) = api.live_response(2, json!([get_file("/etc/passwd")])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settle(&id).await["status"], "Succeeded");
    let (_, link) = api.link(&id, 0).await;
    let gz = reqwest::get(link["value"].as_str().unwrap()).await.unwrap().bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("root:x:0:0:root:/root:/bin/bash\n") && text.contains("jdoe:x:1000"),
        "{text}"
    );
}
