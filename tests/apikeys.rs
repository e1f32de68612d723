//! Tenant API keys (`/v1/api-keys`) through HTTP against a gateway process on a Carbon Black
//! simulator: made (the key shown once), listed and read without it, tenant-isolated, no
//! escalation, accepted as `X-Auth-Token` by the Carbon Black front door (`GET /cb/api/info`)
//! and refused there once revoked or expired, never accepted on `/v1`, and never in the logs
//! or the audit trail. The store functions run on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use edrgate::store::Store;
use edrgate::store::apikeys::ApiKeyRow;
use edrgate_carbonblack_sim as cb;
use edrgate_simkit::Sim as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, GatewayProcess, scoped_token, token};

async fn cb_sim() -> SocketAddr {
    let sim = cb::Simulator::new(cb::SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(10),
        command_latency: Duration::from_millis(5),
        ..cb::SimConfig::default()
    });
    sim.spawn().await.unwrap()
}

async fn gateway(dir: &std::path::Path) -> GatewayProcess {
    let sim = cb_sim().await;
    let config = Gateway::builder().backend("acme", "cb", &Backend::carbonblack(sim)).backend(
        "globex",
        "cb",
        &Backend::carbonblack(sim),
    );
    GatewayProcess::start("gateway", dir, &config).await
}

/// `GET /cb/api/info` with `X-Auth-Token: token`: the status.
async fn cb_info(gw: &GatewayProcess, token: &str) -> StatusCode {
    gw.http.get(gw.url("/cb/api/info")).header("x-auth-token", token).send().await.unwrap().status()
}

async fn delete(gw: &GatewayProcess, token: &str, path: &str) -> StatusCode {
    gw.request(Method::DELETE, token, path).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_made_once_isolated_revoked_and_never_shown_again() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path()).await;
    let (acme, globex) = (token("acme"), token("globex"));

    // Made: 201, Location, the key in this answer only.
    let res = gw
        .request(Method::POST, &acme, "/v1/api-keys")
        .json(&json!({"name": "cb-soar", "permissions": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let made: Value = res.json().await.unwrap();
    let (id, key) = (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap());
    let key = key.to_owned();
    assert!(location.ends_with(&format!("/v1/api-keys/{id}")), "{location}");
    assert!(key.starts_with("edrg_") && key.len() == 5 + 43, "{key}");
    assert_eq!(made["prefix"], key[..12]);
    assert_eq!(made["permissions"], json!(["read"]));
    assert_eq!(made["name"], "cb-soar");

    // Listed and read without the key.
    let (status, list) = gw.get(&acme, "/v1/api-keys").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, one) = gw.get(&acme, &format!("/v1/api-keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], id.as_str());
    for body in [&list, &one] {
        assert!(!body.to_string().contains(&key[12..]), "{body}");
        assert!(body.to_string().find("\"key\"").is_none(), "{body}");
    }

    // Another tenant neither sees nor revokes it.
    let (status, list) = gw.get(&globex, "/v1/api-keys").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"], json!([]));
    let (status, problem) = gw.get(&globex, &format!("/v1/api-keys/{id}")).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert_eq!(delete(&gw, &globex, &format!("/v1/api-keys/{id}")).await, StatusCode::NOT_FOUND);

    // Without admin: 403; and no permission the caller lacks can be handed out.
    let reader = scoped_token("acme", "reader", &["edrgate:read"]);
    let (status, problem) = gw.get(&reader, "/v1/api-keys").await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let admin_only = scoped_token("acme", "ops", &["edrgate:admin", "edrgate:read"]);
    let (status, problem) = gw
        .post(&admin_only, "/v1/api-keys", &json!({"name": "x", "permissions": ["contain"]}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("contain"), "{problem}");
    // `operator` is never a key's; bad names and expiries are 422; unknown fields 400/422.
    for (body, expected) in [
        (json!({"name": "x", "permissions": ["operator"]}), [400, 422]),
        (json!({"name": " ", "permissions": ["read"]}), [422, 422]),
        (json!({"name": "x".repeat(101), "permissions": ["read"]}), [422, 422]),
        (json!({"name": "x", "permissions": []}), [422, 422]),
        (json!({"name": "x", "permissions": ["read"], "expires_in_days": 3651}), [422, 422]),
        (json!({"name": "x", "permissions": ["read"], "expires_in_days": 0}), [422, 422]),
    ] {
        let (status, problem) = gw.post(&acme, "/v1/api-keys", &body).await;
        assert!(expected.contains(&status.as_u16()), "{body}: {status} {problem}");
    }

    // The key works where static tokens are taken, and only there.
    assert_eq!(cb_info(&gw, &key).await, StatusCode::OK);
    let (status, problem) = gw.get(&key, "/v1/actions").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    // Unknown, malformed and over-long keys are refused alike.
    let forged = format!("edrg_{}", "A".repeat(43));
    for bad in [forged.as_str(), "edrg_", &format!("edrg_{}", "A".repeat(5000))] {
        assert_eq!(cb_info(&gw, bad).await, StatusCode::UNAUTHORIZED, "{bad:.20}");
    }

    // Revoked: 204, twice; refused at once; gone from the API (404, not listed).
    assert_eq!(delete(&gw, &acme, &format!("/v1/api-keys/{id}")).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(&gw, &acme, &format!("/v1/api-keys/{id}")).await, StatusCode::NO_CONTENT);
    assert_eq!(cb_info(&gw, &key).await, StatusCode::UNAUTHORIZED);
    let (status, _) = gw.get(&acme, &format!("/v1/api-keys/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = gw.get(&acme, "/v1/api-keys").await;
    assert!(list["items"].as_array().unwrap().iter().all(|k| k["id"] != id.as_str()), "{list}");

    // An expired key is refused too (written straight into the gateway's store).
    let store = Store::open(&dir.path().join("edrgate.db")).await.unwrap();
    let expired = "edrg_expiredexpiredexpiredexpiredexpiredexpir";
    let now = edrgate::store::now_ms();
    store.insert_api_key(&row("acme", expired, Some(now - 1_000))).await.unwrap();
    assert_eq!(cb_info(&gw, expired).await, StatusCode::UNAUTHORIZED);

    // Audited with the key's id, never the key.
    let (status, audit) = gw.get(&acme, "/v1/audit?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> =
        audit["items"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"apikey.create") && events.contains(&"apikey.revoke"), "{events:?}");
    let created = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "apikey.create" && e["outcome"] == "ok")
        .unwrap();
    assert_eq!(created["detail"]["api_key_id"], id.as_str());
    assert!(!audit.to_string().contains(&key[5..]), "the key is in the audit trail");

    // Never in the logs.
    let logs = gw.logs_containing("API key created", Duration::from_secs(10)).await;
    assert!(!logs.contains(&key[5..]), "the key is in the logs:\n{logs}");
}

fn row(tenant: &str, key: &str, expires_at: Option<i64>) -> ApiKeyRow {
    use sha2::Digest as _;
    ApiKeyRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.to_owned(),
        name: "test".to_owned(),
        key_sha256: hex::encode(sha2::Sha256::digest(key.as_bytes())),
        prefix: key[..12].to_owned(),
        permissions: r#"["read"]"#.to_owned(),
        created_at: edrgate::store::now_ms(),
        created_by: Some("tester".to_owned()),
        expires_at,
        revoked_at: None,
    }
}

async fn store_functions(s: &Store) {
    let now = edrgate::store::now_ms();
    let live = row("acme", "edrg_liveliveliveliveliveliveliveliveliveliveli", None);
    let old = row("acme", "edrg_oldoldoldoldoldoldoldoldoldoldoldoldoldol", Some(now - 1));
    let other = row("globex", "edrg_otherotherotherotherotherotherotherother", None);
    for r in [&live, &old, &other] {
        s.insert_api_key(r).await.unwrap();
    }
    assert_eq!(s.api_keys("acme").await.unwrap().len(), 2);
    assert_eq!(s.active_api_keys("acme", now).await.unwrap(), 1);
    assert!(s.api_key("globex", &live.id).await.unwrap().is_none());
    let found = s.api_key_by_hash(&live.key_sha256).await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), found.tenant.as_str()), (live.id.as_str(), "acme"));
    assert!(s.revoke_api_key("globex", &live.id).await.unwrap().is_none());
    let revoked = s.revoke_api_key("acme", &live.id).await.unwrap().unwrap();
    let first = revoked.revoked_at.unwrap();
    let again = s.revoke_api_key("acme", &live.id).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(first), "a second revocation keeps the first time");
    assert_eq!(s.active_api_keys("acme", now).await.unwrap(), 0);
    // A key's hash is unique.
    assert!(
        s.insert_api_key(&ApiKeyRow { id: uuid::Uuid::now_v7().to_string(), ..live })
            .await
            .is_err()
    );
}

#[tokio::test]
async fn store_functions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    store_functions(&Store::open(&dir.path().join("edrgate.db")).await.unwrap()).await;
}

#[tokio::test]
async fn store_functions_on_postgres() {
    let Some(url) = common::fresh_postgres_database("apikeys_store_functions").await else {
        return;
    };
    store_functions(&Store::connect(&url, 2).await.unwrap()).await;
}
