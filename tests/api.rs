//! The HTTP surface, request by request: status codes, problem+json errors, headers, auth and
//! tenant isolation. Requests go through the complete router (`tower::ServiceExt::oneshot`, no
//! socket; only waiting for an action to finish goes over loopback); the backends are an
//! in-process Carbon Black simulator.

use edrgate_simkit::Sim as _;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use edrgate_carbonblack_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod common;
use common::{Backend, Gateway, SECRET, token};

const MAX_BODY: usize = 64 * 1024;

struct Api {
    gw: Gateway,
    sim: Simulator,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts a problem+json answer with `status` and `code`, and returns it.
    #[track_caller]
    fn problem(&self, status: StatusCode, code: &str) -> Value {
        let problem = self.json();
        assert_eq!((self.status, problem["code"].as_str()), (status, Some(code)), "{problem}");
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(problem["status"], status.as_u16());
        assert_eq!(problem["type"], format!("urn:edrgate:problem:{code}"));
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{problem}");
        // The problem names the request it answers.
        let request_id = self.headers["x-request-id"].to_str().unwrap();
        assert_eq!(problem["request_id"], request_id);
        problem
    }
}

impl Api {
    async fn start() -> Api {
        let sim = Simulator::new(SimConfig {
            checkin_delay: Duration::from_millis(30),
            command_latency: Duration::from_millis(10),
            ..SimConfig::default()
        });
        let cb = Backend::carbonblack(sim.spawn().await.unwrap());
        let gw = Gateway::builder()
            .config(&format!("server.max_body_bytes = {MAX_BODY}\nserver.max_wait_seconds = 2"))
            .backend("acme", "cb", &cb)
            .backend("globex", "cb", &cb)
            .backend("umbrella", "down", &Backend::unreachable())
            .start()
            .await;
        Api { gw, sim }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let (status, headers, body) = self.gw.oneshot(request).await;
        Answer { status, headers, body }
    }

    fn request(
        &self,
        method: Method,
        uri: &str,
        tenant: Option<&str>,
    ) -> axum::http::request::Builder {
        let builder = Request::builder().method(method).uri(uri);
        match tenant {
            Some(t) => builder.header(header::AUTHORIZATION, format!("Bearer {}", token(t))),
            None => builder,
        }
    }

    async fn get(&self, tenant: &str, uri: &str) -> Answer {
        self.send(self.request(Method::GET, uri, Some(tenant)).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, tenant: &str, uri: &str, body: &Value) -> Answer {
        let request = self
            .request(Method::POST, uri, Some(tenant))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn post_raw(&self, body: impl Into<Body>) -> Answer {
        let request = self
            .request(Method::POST, "/v1/actions", Some("acme"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap();
        self.send(request).await
    }

    async fn submit(&self, tenant: &str, body: &Value) -> Value {
        let answer = self.post(tenant, "/v1/actions", body).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json());
        answer.json()
    }

    async fn finished(&self, tenant: &str, id: &str) -> Value {
        self.gw.wait_terminal(&token(tenant), id).await
    }
}

fn process_list_on(hostname: &str) -> Value {
    json!({"targets": [{"hostname": hostname}], "commands": [{"type": "process_list"}]})
}

#[tokio::test]
async fn malformed_bodies_are_problems_never_500() {
    let api = Api::start().await;
    let cases: Vec<(Body, StatusCode, &str)> = vec![
        (Body::from("{\"targets\": ["), StatusCode::BAD_REQUEST, "invalid_request"),
        (Body::from("[]"), StatusCode::BAD_REQUEST, "invalid_request"),
        (Body::from(""), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Body::from(
                json!({"targets": [{"hostname": "x"}], "commands": [{"type": "format_c"}]})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Body::from(
                json!({"targets": [{"hostname": "x"}], "commands": [{"type": "process_list"}], "priority": 1})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Body::from(
                json!({"targets": [{"hostname": "x"}], "commands": [{"type": "kill_process", "pid": 1, "force": true}]})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Well-formed but invalid: refused by the engine's validation.
        (
            Body::from(json!({"targets": [], "commands": [{"type": "process_list"}]}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Body::from(
                json!({"targets": [{"hostname": "x"}], "commands": [{"type": "delete_file", "path": "C:\\a\\..\\b"}]})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Supported by the model, not by Carbon Black.
        (
            Body::from(
                json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "run_script", "script": "x"}]})
                    .to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_command",
        ),
        (Body::from(vec![b' '; MAX_BODY + 1]), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    ];
    for (body, status, code) in cases {
        api.post_raw(body).await.problem(status, code);
    }
    // A body over the limit without a Content-Length (chunked) is cut off while read.
    let chunks = futures::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 4096]))),
    );
    api.post_raw(Body::from_stream(chunks))
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Not JSON at all.
    let request = api
        .request(Method::POST, "/v1/actions", Some("acme"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("process_list WIN-0001"))
        .unwrap();
    api.send(request).await.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request");
    // Nothing was stored.
    assert_eq!(api.get("acme", "/v1/actions").await.json()["items"], json!([]));
}

#[tokio::test]
async fn bad_ids_unknown_routes_and_wrong_methods_are_problems() {
    let api = Api::start().await;
    for uri in [
        "/v1/actions/not-a-uuid",
        "/v1/actions/0190b3a1-0000-7000-8000-000000000000",
        "/v1/actions/0190b3a1-0000-7000-8000-000000000000?wait=1",
        "/v1/files/..%2F..%2Fetc%2Fpasswd",
        "/v1/files/0123456789abcdef0123456789abcdef",
        "/v1/files/0123456789abcdef0123456789abcdef/content",
        "/v1/nothing-here",
        "/",
    ] {
        api.get("acme", uri).await.problem(StatusCode::NOT_FOUND, "not_found");
    }
    api.post("acme", "/v1/actions/not-a-uuid/cancel", &json!({}))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    let request =
        api.request(Method::DELETE, "/v1/actions", Some("acme")).body(Body::empty()).unwrap();
    let answer = api.send(request).await;
    answer.problem(StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    assert!(answer.headers[header::ALLOW].to_str().unwrap().contains("POST"));
    for uri in [
        "/v1/actions?limit=0",
        "/v1/actions?status=done",
        "/v1/actions?cursor=zzz",
        "/v1/actions?since=today",
    ] {
        api.get("acme", uri).await.problem(StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn every_v1_route_requires_a_valid_bearer_token() {
    let api = Api::start().await;
    let doc: Value = serde_json::from_str(&edrgate::api::openapi::openapi_json()).unwrap();
    let expired = {
        let claims = json!({"tenant": "acme", "exp": jsonwebtoken::get_current_timestamp() - 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let uri = path.replace("{id}", "0190b3a1-0000-7000-8000-000000000000");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let missing = api
                .send(api.request(method.clone(), &uri, None).body(Body::empty()).unwrap())
                .await;
            missing.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
            assert!(
                missing.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer")
            );
            for authorization in [
                "Bearer not.a.jwt".to_owned(),
                format!("Bearer {expired}"),
                format!("Basic {SECRET}"),
            ] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header(header::AUTHORIZATION, authorization)
                    .body(Body::empty())
                    .unwrap();
                let bad = api.send(request).await;
                bad.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
                let challenge = bad.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
                assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} operations checked");
    // Health, readiness and the document need no token.
    for uri in ["/healthz", "/readyz", "/openapi.json"] {
        let answer = api.send(Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn submission_is_202_and_a_replay_answers_with_the_same_action() {
    let api = Api::start().await;
    let body = process_list_on("WIN-0001");
    let submit = |key: &'static str, request_id: &'static str, body: Value| {
        api.request(Method::POST, "/v1/actions", Some("acme"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .header("X-Request-ID", request_id)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = api.send(submit("k-1", "req-1", body.clone())).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json());
    assert_eq!(first.headers["x-request-id"], "req-1");
    assert!(first.headers.get("idempotent-replayed").is_none());
    let action = first.json();
    let id = action["id"].as_str().unwrap();
    assert_eq!(first.headers[header::LOCATION], format!("/v1/actions/{id}/status").as_str());
    assert_eq!(first.headers[header::CONTENT_LOCATION], format!("/v1/actions/{id}").as_str());
    assert_eq!(action["request_id"], "req-1");
    assert_eq!(action["runs"].as_array().unwrap().len(), 1);

    let replay = api.send(submit("k-1", "req-2", body.clone())).await;
    // As the status URL answers: 202 while the action runs, 200 once it is finished.
    let finished = ["succeeded", "partially_succeeded", "failed", "cancelled", "timed_out"]
        .contains(&replay.json()["status"].as_str().unwrap());
    let expected = if finished { StatusCode::OK } else { StatusCode::ACCEPTED };
    assert_eq!(replay.status, expected, "{}", replay.json());
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.headers["x-request-id"], "req-2");
    assert_eq!(replay.json()["id"], id);

    // The same key for another request is a conflict.
    api.send(submit("k-1", "req-3", process_list_on("WIN-0002")))
        .await
        .problem(StatusCode::CONFLICT, "conflict");
    // Another tenant's key space is its own.
    let other = api
        .send(
            api.request(Method::POST, "/v1/actions", Some("globex"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "k-1")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert_ne!(other.json()["id"], id);
    // A generated request id when none is sent.
    let generated = api.post("acme", "/v1/actions", &process_list_on("WIN-0003")).await;
    let request_id = generated.headers["x-request-id"].to_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(request_id).unwrap().get_version_num(), 7);
    assert_eq!(generated.json()["request_id"], request_id);

    let done = api.finished("acme", id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

#[tokio::test]
async fn another_tenant_sees_nothing_of_acme() {
    let api = Api::start().await;
    let action = api
        .submit(
            "acme",
            &json!({"targets": [{"hostname": "WIN-0001"}],
                    "commands": [{"type": "get_file", "path": "C:\\evidence\\note.txt"}]}),
        )
        .await;
    let id = action["id"].as_str().unwrap();
    let done = api.finished("acme", id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let file_id = done["runs"][0]["commands"][0]["result"]["file"]["file_id"].as_str().unwrap();
    for uri in [
        format!("/v1/actions/{id}"),
        format!("/v1/actions/{id}?wait=1"),
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
    ] {
        api.get("globex", &uri).await.problem(StatusCode::NOT_FOUND, "not_found");
        assert_eq!(api.get("acme", &uri).await.status, StatusCode::OK, "{uri}");
    }
    api.post("globex", &format!("/v1/actions/{id}/cancel"), &json!({}))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(api.get("globex", "/v1/actions").await.json()["items"], json!([]));
    // A tenant without configuration is refused submissions and sees nothing.
    api.post("initech", "/v1/actions", &process_list_on("WIN-0001"))
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");
    api.get("initech", &format!("/v1/actions/{id}"))
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn file_content_is_streamed_with_its_digests() {
    let api = Api::start().await;
    let action = api
        .submit(
            "acme",
            &json!({"targets": [{"backend": "cb", "device_id": "2"}],
                    "commands": [{"type": "get_file", "path": "C:\\evidence\\note.txt"}]}),
        )
        .await;
    let done = api.finished("acme", action["id"].as_str().unwrap()).await;
    let file = &done["runs"][0]["commands"][0]["result"]["file"];
    let file_id = file["file_id"].as_str().unwrap();
    let expected = api.sim.file_content(2, "C:\\evidence\\note.txt").unwrap();

    let meta = api.get("acme", &format!("/v1/files/{file_id}")).await;
    assert_eq!(meta.status, StatusCode::OK);
    let meta = meta.json();
    assert_eq!(meta["size"], expected.len());
    assert_eq!(meta["name"], "note.txt");
    assert_eq!(meta["origin"]["action_id"], action["id"]);
    assert_eq!(meta["origin"]["backend"], "cb");
    assert_eq!(meta["origin"]["device_id"], "2");
    assert_eq!(meta["origin"]["command_index"], 0);

    let content = api.get("acme", &format!("/v1/files/{file_id}/content")).await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(content.body, expected);
    let h = &content.headers;
    assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(h[header::CONTENT_LENGTH], expected.len().to_string().as_str());
    assert_eq!(h[header::CONTENT_DISPOSITION], r#"attachment; filename="note.txt""#);
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&expected);
    assert_eq!(h[header::ETAG], format!("\"{}\"", hex::encode(digest)).as_str());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    assert_eq!(h["repr-digest"], format!("sha-256=:{b64}:").as_str());

    // A conditional download of an unchanged file is a 304 without a body.
    let request = api
        .request(Method::GET, &format!("/v1/files/{file_id}/content"), Some("acme"))
        .header(header::IF_NONE_MATCH, h[header::ETAG].clone())
        .body(Body::empty())
        .unwrap();
    let unchanged = api.send(request).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.body.is_empty());
}

#[tokio::test]
async fn long_polls_return_on_change_and_are_capped() {
    let api = Api::start().await;
    // Tenant `umbrella`'s backend is unreachable: the run retries without changing anything.
    let stuck = api
        .submit(
            "umbrella",
            &json!({"targets": [{"backend": "down", "device_id": "3"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    let id = stuck["id"].as_str().unwrap();
    // Let the engine claim it and reach its retry loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `wait=30` is capped by `max_wait_seconds = 2`.
    let started = Instant::now();
    let answer = api.get("umbrella", &format!("/v1/actions/{id}?wait=30")).await;
    let waited = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // A change ends the wait early: a cancel from elsewhere.
    let poll = {
        let router = api.gw.router.clone();
        let request = api
            .request(Method::GET, &format!("/v1/actions/{id}?wait=2"), Some("umbrella"))
            .body(Body::empty())
            .unwrap();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = router.oneshot(request).await.unwrap();
            (response.status(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancelled = api.post("umbrella", &format!("/v1/actions/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.json());
    assert_eq!(cancelled.json()["cancel_requested"], true);
    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(waited < Duration::from_millis(1500), "the long-poll missed the change: {waited:?}");

    let done = api.finished("umbrella", id).await;
    assert_eq!(done["status"], "cancelled");
    // A finished action answers a long-poll at once and cannot be cancelled again.
    let started = Instant::now();
    assert_eq!(
        api.get("umbrella", &format!("/v1/actions/{id}?wait=2")).await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    api.post("umbrella", &format!("/v1/actions/{id}/cancel"), &json!({}))
        .await
        .problem(StatusCode::CONFLICT, "conflict");
    api.get("umbrella", &format!("/v1/actions/{id}?wait=-1"))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn the_status_url_answers_202_until_the_action_is_finished() {
    let api = Api::start().await;
    // Tenant `umbrella`'s backend is unreachable: the action stays unfinished.
    let submitted = api
        .post(
            "umbrella",
            "/v1/actions",
            &json!({"targets": [{"backend": "down", "device_id": "3"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED);
    let id = submitted.json()["id"].as_str().unwrap().to_owned();
    let status_url = format!("/v1/actions/{id}/status");
    assert_eq!(submitted.headers[header::LOCATION], status_url.as_str());
    assert_eq!(submitted.headers[header::RETRY_AFTER], "5");

    let pending = api.get("umbrella", &status_url).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{}", pending.json());
    assert_eq!(pending.headers[header::LOCATION], status_url.as_str());
    assert_eq!(pending.headers[header::RETRY_AFTER], "5");
    assert_eq!(pending.headers[header::CONTENT_TYPE], "application/json");
    let progress = pending.json();
    assert_eq!(progress["id"], id.as_str());
    assert!(["queued", "dispatched", "running"].contains(&progress["status"].as_str().unwrap()));
    assert_eq!(progress["retry_after_seconds"], 5);
    assert_eq!(progress["action_url"], format!("/v1/actions/{id}"));
    // The action itself answers 200 as before, whatever its status.
    let action = api.get("umbrella", &format!("/v1/actions/{id}")).await;
    assert_eq!(action.status, StatusCode::OK);
    assert!(
        ["queued", "dispatched", "running"].contains(&action.json()["status"].as_str().unwrap())
    );

    // Another tenant's id is unknown; reading needs the `read` permission; bad ids name nothing.
    api.get("acme", &status_url).await.problem(StatusCode::NOT_FOUND, "not_found");
    let unread = common::scoped_token("umbrella", "analyst-7", &["edrgate:write"]);
    let request = Request::get(&status_url)
        .header(header::AUTHORIZATION, format!("Bearer {unread}"))
        .body(Body::empty())
        .unwrap();
    api.send(request).await.problem(StatusCode::FORBIDDEN, "forbidden");
    api.get("umbrella", "/v1/actions/nope/status")
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    let unknown = format!("/v1/actions/{}/status", uuid::Uuid::now_v7());
    api.get("umbrella", &unknown).await.problem(StatusCode::NOT_FOUND, "not_found");

    // Finished: `200` with the action, the same body as `GET /v1/actions/{id}`.
    let cancel = api.post("umbrella", &format!("/v1/actions/{id}/cancel"), &json!({})).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.json());
    let done = api.finished("umbrella", &id).await;
    let finished = api.get("umbrella", &status_url).await;
    assert_eq!(finished.status, StatusCode::OK);
    assert!(finished.headers.get(header::RETRY_AFTER).is_none());
    assert_eq!(finished.headers[header::CONTENT_LOCATION], format!("/v1/actions/{id}").as_str());
    assert_eq!(finished.json(), done);
    assert_eq!(finished.json()["status"], "cancelled");
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let api = Api::start().await;
    let before = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for sensor in 1..=3 {
        let action = api
            .submit("acme", &json!({"targets": [{"backend": "cb", "device_id": sensor.to_string()}], "commands": [{"type": "process_list"}]}))
            .await;
        ids.push(action["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.finished("acme", id).await;
    }
    let page = api.get("acme", "/v1/actions?limit=2").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["id"], ids[2].as_str(), "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let last = api.get("acme", &format!("/v1/actions?limit=2&cursor={cursor}")).await.json();
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert_eq!(last["items"][0]["id"], ids[0].as_str());
    assert_eq!(last["next_cursor"], Value::Null);

    let by_device = api.get("acme", "/v1/actions?device=2&status=succeeded").await.json();
    assert_eq!(by_device["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_device["items"][0]["id"], ids[1].as_str());
    assert_eq!(api.get("acme", "/v1/actions?status=failed").await.json()["items"], json!([]));
    let since = before.format(&time::format_description::well_known::Rfc3339).unwrap();
    let recent = api.get("acme", &format!("/v1/actions?since={}", since.replace('+', "%2B"))).await;
    assert_eq!(recent.status, StatusCode::OK, "{}", recent.json());
    assert_eq!(recent.json()["items"].as_array().unwrap().len(), 3);
    let future = api.get("acme", "/v1/actions?since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(future["items"], json!([]));
}

#[tokio::test]
async fn devices_and_capabilities_of_the_tenant() {
    let api = Api::start().await;
    let devices = api.get("acme", "/v1/devices?hostname=WIN-0004").await;
    assert_eq!(devices.status, StatusCode::OK, "{}", devices.json());
    let items = devices.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0]["backend"].as_str(), items[0]["device_id"].as_str()),
        (Some("cb"), Some("4"))
    );
    let all = api.get("acme", "/v1/devices").await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    let caps = api.get("acme", "/v1/capabilities").await;
    assert_eq!(caps.status, StatusCode::OK);
    let caps = caps.json();
    assert_eq!(caps["items"][0]["backend"], "cb");
    assert_eq!(caps["items"][0]["kind"], "carbonblack");
    assert!(caps.to_string().contains("memory_dump"));
}

#[tokio::test]
async fn vendor_failures_on_device_lookup_are_mapped() {
    let api = Api::start().await;
    api.sim.set_live_response_enabled(false);
    api.sim.set_faults(edrgate_carbonblack_sim::Faults {
        error_5xx_every: Some(1),
        ..Default::default()
    });
    let answer = api.get("acme", "/v1/devices").await;
    let problem = answer.json();
    assert!(answer.status.is_server_error(), "{problem}");
    assert_ne!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    assert!(problem["code"].as_str().unwrap().starts_with("vendor_"), "{problem}");
}

#[tokio::test]
async fn health_readiness_and_the_served_document() {
    let api = Api::start().await;
    let health = api.send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(health.json(), json!({"status": "ok"}));
    let ready = api.send(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.json(), json!({"status": "ready"}));
    let doc = api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(doc.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(String::from_utf8(doc.body).unwrap(), edrgate::api::openapi::openapi_json());
    // Shutting down: unready, so a load balancer drains the instance.
    api.gw.shutdown.cancel();
    let draining = api.send(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.headers[header::CONTENT_TYPE], "application/problem+json");
}

#[tokio::test]
async fn over_a_socket_with_graceful_shutdown() {
    let mut api = Api::start().await;
    let acme = token("acme");
    let gw = &mut api.gw;
    assert_eq!(gw.get(&acme, "/v1/devices").await.0, StatusCode::OK);
    let id = gw.submit(&acme, &process_list_on("WIN-0001")).await;
    // A long-poll in flight when the shutdown starts is answered at once, not after its wait.
    let poll = {
        let request = gw.request(Method::GET, &acme, &format!("/v1/actions/{id}?wait=2"));
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), gw.stop()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::OK);
    // The engine was stopped and the action survives in the store.
    assert!(gw.engine.action("acme", id.parse().unwrap()).await.is_ok());
}

/// An action over more targets than an answer carries: the first 100 runs, a summary over all
/// of them, and the rest page by page (filterable), each run also on its own; another tenant
/// sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_action_is_read_as_a_summary_and_pages_of_runs() {
    const TARGETS: usize = 150;
    let sim = Simulator::new(SimConfig {
        sensors: TARGETS,
        checkin_delay: Duration::from_millis(5),
        command_latency: Duration::from_millis(2),
        ..SimConfig::default()
    });
    let cb = Backend::carbonblack(sim.spawn().await.unwrap()).with("poll_interval_ms = 20");
    let gw =
        Gateway::builder().backend("acme", "cb", &cb).backend("globex", "cb", &cb).start().await;
    let acme = token("acme");
    let targets: Vec<Value> =
        (1..=TARGETS).map(|i| json!({"backend": "cb", "device_id": i.to_string()})).collect();
    let body = json!({"targets": targets, "commands": [{"type": "process_list"}]});
    let (status, submitted) = gw.post(&acme, "/v1/actions", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(submitted["runs"].as_array().unwrap().len(), 100);
    assert_eq!(submitted["summary"]["runs"], TARGETS);
    assert_eq!(submitted["summary"]["runs_by_status"]["queued"], TARGETS);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let action = gw.wait_terminal(&acme, &id).await;
    assert_eq!(action["status"], "succeeded", "{}", action["summary"]);
    let summary = &action["summary"];
    assert_eq!(summary["runs_by_status"]["succeeded"], TARGETS, "{summary}");
    assert_eq!(summary["commands"][0]["type"], "process_list");
    assert_eq!(summary["commands"][0]["by_status"]["succeeded"], TARGETS, "{summary}");
    let inline = action["runs"].as_array().unwrap();
    assert_eq!(inline.len(), 100);
    let cursor = action["runs_next_cursor"].as_str().expect("a cursor past the first 100 runs");

    // The rest, in target order, then nothing more.
    let (status, page) = gw.get(&acme, &format!("/v1/actions/{id}/runs?cursor={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rest = page["items"].as_array().unwrap();
    assert_eq!(rest.len(), TARGETS - 100);
    assert!(page["next_cursor"].is_null());
    let devices: Vec<&str> =
        inline.iter().chain(rest).map(|r| r["device_id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (1..=TARGETS).map(|i| i.to_string()).collect();
    assert_eq!(devices, expected.iter().map(String::as_str).collect::<Vec<_>>());
    // Small pages and a status filter.
    let (_, first) = gw.get(&acme, &format!("/v1/actions/{id}/runs?limit=7")).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 7);
    let (_, second) = gw
        .get(
            &acme,
            &format!(
                "/v1/actions/{id}/runs?limit=7&cursor={}",
                first["next_cursor"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(second["items"][0]["device_id"], "8");
    let (_, failed) = gw.get(&acme, &format!("/v1/actions/{id}/runs?status=failed")).await;
    assert_eq!(failed["items"], json!([]));
    // One run on its own, with its results.
    let run = &rest[10];
    let (status, one) =
        gw.get(&acme, &format!("/v1/actions/{id}/runs/{}", run["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, run);
    assert!(one["commands"][0]["result"]["processes"].as_array().is_some_and(|p| !p.is_empty()));
    // Bad cursors are refused; another tenant finds nothing.
    let (status, _) = gw.get(&acme, &format!("/v1/actions/{id}/runs?cursor=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let globex = token("globex");
    let (status, _) = gw.get(&globex, &format!("/v1/actions/{id}/runs")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        gw.get(&globex, &format!("/v1/actions/{id}/runs/{}", run["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
