//! One request body, three vendors: a Carbon Black sensor, a Defender machine and a Cybereason
//! sensor behind one tenant, every command the three support in common sent unchanged to all
//! three, with the same statuses and result shapes back.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate::app::App;
use edrgate::config::Config;
use edrgate_carbonblack_sim as cb;
use edrgate_cybereason::simulator as cr;
use edrgate_defender_sim as mde;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "vendors-secret-0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bodies_work_on_all_three_vendors() {
    let cb_sim = cb::Simulator::new(cb::SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..cb::SimConfig::default()
    });
    let cb_addr = cb_sim.spawn().await.unwrap();
    let mde_sim = mde::Simulator::new(mde::SimConfig {
        machines: 1,
        pickup_delay: Duration::from_millis(100),
        ..mde::SimConfig::default()
    });
    let mde_addr = mde_sim.spawn().await.unwrap();
    let cr_sim = cr::Simulator::new(cr::SimConfig {
        remediation_delay: Duration::from_millis(100),
        ..cr::SimConfig::default()
    });
    let cr_addr = cr_sim.spawn().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        r#"
        [store]
        path = "{d}/edrgate.db"
        [files]
        dir = "{d}/files"
        [auth]
        allow_hs256 = true
        hs256_secret = "{SECRET}"
        [tenants.acme.backends.cb]
        kind = "carbonblack"
        url = "http://{cb_addr}"
        token = "{cb_token}"
        poll_interval_ms = 20
        [tenants.acme.backends.mde]
        kind = "defender"
        api_url = "http://{mde_addr}"
        token_url = "http://{mde_addr}/{mde_tenant}/oauth2/v2.0/token"
        tenant_id = "{mde_tenant}"
        client_id = "{mde_client}"
        client_secret = "{mde_secret}"
        poll_interval_ms = 100
        max_poll_interval_ms = 500
        [tenants.acme.backends.cr]
        kind = "cybereason"
        url = "http://{cr_addr}"
        username = "{cr_user}"
        password = "{cr_password}"
        totp_secret = "{cr_totp}"
        fetch_zip_password = "{cr_zip}"
        poll_interval_ms = 20
        max_poll_interval_ms = 200
        "#,
        cb_token = cb::DEFAULT_TOKEN,
        mde_tenant = mde::DEFAULT_TENANT,
        mde_client = mde::DEFAULT_CLIENT_ID,
        mde_secret = mde::DEFAULT_CLIENT_SECRET,
        cr_user = cr::DEFAULT_TFA_USERNAME,
        cr_password = cr::DEFAULT_PASSWORD,
        cr_totp = cr::DEFAULT_TOTP_SECRET,
        cr_zip = cr::DEFAULT_ZIP_PASSWORD,
    );
    let app = App::build(Config::parse(&text, |_| None).unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder().build().unwrap();
    let token =
        edrgate::auth::mint(SECRET.as_bytes(), "acme", "soar", Duration::from_secs(600)).unwrap();

    // What the three have in common, according to their capabilities.
    let caps: Value = http
        .get(format!("{base}/v1/capabilities"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let supported = |backend: &str| -> Vec<String> {
        let caps =
            caps["items"].as_array().unwrap().iter().find(|c| c["backend"] == backend).unwrap();
        caps["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap().to_owned())
            .collect()
    };
    let (on_cb, on_mde, on_cr) = (supported("cb"), supported("mde"), supported("cr"));
    let mut common: Vec<String> =
        on_cb.iter().filter(|c| on_mde.contains(c) && on_cr.contains(c)).cloned().collect();
    common.sort();

    let bodies = [
        ("get_file", json!({"type": "get_file", "path": "C:\\evidence\\note.txt"})),
        ("kill_process", json!({"type": "kill_process", "pid": 3012})),
        (
            "delete_file",
            json!({"type": "delete_file", "path": "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"}),
        ),
        (
            "registry_delete_key",
            json!({"type": "registry_delete_key", "key": "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce"}),
        ),
        ("isolate", json!({"type": "isolate"})),
        ("release", json!({"type": "release"})),
    ];
    let mut covered: Vec<String> = bodies.iter().map(|(k, _)| (*k).to_owned()).collect();
    covered.sort();
    assert_eq!(covered, common, "the test must send every command the three have in common");

    let targets =
        json!([{"hostname": "WIN-0001"}, {"hostname": "mde-0001"}, {"hostname": "CR-WS-0001"}]);
    for (kind, command) in bodies {
        let body = json!({"targets": targets, "commands": [command]});
        let r = http
            .post(format!("{base}/v1/actions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{kind}");
        let action: Value = r.json().await.unwrap();
        let url = format!("{base}/v1/actions/{}", action["id"].as_str().unwrap());
        let mut done = Value::Null;
        for _ in 0..120 {
            done = http
                .get(format!("{url}?wait=5"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !["queued", "dispatched", "running"].contains(&done["status"].as_str().unwrap()) {
                break;
            }
        }
        assert_eq!(done["status"], "succeeded", "{kind}: {done:#}");
        let runs = done["runs"].as_array().unwrap();
        let backends: Vec<&str> = runs.iter().map(|r| r["backend"].as_str().unwrap()).collect();
        assert_eq!(backends, ["cb", "mde", "cr"], "{kind}");
        // The same result shape from every vendor.
        let shapes: Vec<&Value> =
            runs.iter().map(|r| &r["commands"][0]["result"]["type"]).collect();
        assert!(shapes.iter().all(|s| *s == shapes[0]), "{kind}: {shapes:?}");
        if kind == "get_file" {
            for run in runs {
                let file = &run["commands"][0]["result"]["file"];
                assert_eq!(file["name"], "note.txt", "{run:#}");
                assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
            }
        }
    }
    assert!(!cb_sim.process_exists(1, 3012));
    assert!(!mde_sim.process_exists(&mde::machine_id(1), 3012));
    assert!(!cr_sim.process_exists("CR-WS-0001", 3012));
    assert!(!mde_sim.is_isolated(&mde::machine_id(1)) && !cr_sim.is_isolated("CR-WS-0001"));
    assert!(!cb_sim.is_isolated(1));
}
