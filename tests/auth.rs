//! Authentication and authorization through the complete router: tokens signed with RSA, EC
//! P-256 and Ed25519 keys generated here, from PEM files and from a JWKS served over loopback
//! (with key rotation); hostile tokens; tenant isolation on every id route; the permission of
//! every command class; the per-tenant inbound limits.

use edrgate_simkit::Sim as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use edrgate::auth::{Permission, Permissions};
use edrgate::config::ScopeNames;
use edrgate_adapter::{Command, CommandKind};
use edrgate_carbonblack_sim::{SimConfig, Simulator};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

mod common;
use common::Backend;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "edrgate";

/// A signing key made for the test, with what the gateway is given of it.
struct TestKey {
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
}

fn pem(tag: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n", lines.join("\n"))
}

fn rsa_key() -> TestKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
    TestKey {
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
            .unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

fn ec_key() -> TestKey {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let private = pair.to_pkcs8v1().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
    TestKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
            .unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

fn ed_key() -> TestKey {
    let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let private = pair.to_pkcs8v1().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
    TestKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
            .unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

impl TestKey {
    /// The public JWK, with `alg` unless `with_alg` is false (the gateway infers it then).
    fn jwk(&self, kid: &str, with_alg: bool) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        if !with_alg {
            jwk.common.key_algorithm = None;
        }
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn scopes_of(permissions: Permissions) -> String {
    let names = ScopeNames::default();
    permissions.iter().map(|p| p.scope(&names).to_owned()).collect::<Vec<_>>().join(" ")
}

/// Valid claims for `tenant` with `permissions`.
fn claims(tenant: &str, permissions: Permissions) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "analyst", "tenant": tenant,
        "iat": now(), "nbf": now(), "exp": now() + 600,
        "scope": scopes_of(permissions),
    })
}

fn with(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// A JWKS endpoint on loopback whose document the test changes, counting fetches.
struct JwksServer {
    url: String,
    keys: Arc<std::sync::Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let keys = Arc::new(std::sync::Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (Arc::clone(&keys), Arc::clone(&fetches));
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                f.fetch_add(1, Ordering::SeqCst);
                let document = json!({ "keys": *k.lock().unwrap() });
                async move { axum::Json(document) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        JwksServer { url, keys, fetches }
    }

    fn publish(&self, jwk: Value) {
        self.keys.lock().unwrap().push(jwk);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

struct Gateway {
    gw: common::Gateway,
    _sim: Simulator,
    _keys: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts a problem with `status` and `code`; returns its detail.
    #[track_caller]
    fn problem(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/problem+json");
        self.body["detail"].as_str().unwrap().to_owned()
    }

    fn challenge(&self) -> &str {
        self.headers.get(header::WWW_AUTHENTICATE).map_or("", |v| v.to_str().unwrap())
    }
}

impl Gateway {
    /// A gateway that trusts `rsa` (PEM file, no kid), `ec` (PEM file, kid `ec-file`) and the
    /// JWKS at `jwks` (refreshed at most once a second), for tenants `acme` and `globex` on a
    /// Carbon Black simulator, plus `extra` configuration.
    async fn start(rsa: &TestKey, ec: &TestKey, jwks: Option<&str>, extra: &str) -> Gateway {
        let sim = Simulator::new(SimConfig {
            checkin_delay: Duration::from_millis(20),
            command_latency: Duration::from_millis(5),
            ..SimConfig::default()
        });
        let cb = Backend::carbonblack(sim.spawn().await.unwrap());
        let keys = tempfile::tempdir().unwrap();
        let k = keys.path().display().to_string();
        std::fs::write(keys.path().join("rsa.pem"), &rsa.public_pem).unwrap();
        std::fs::write(keys.path().join("ec.pem"), &ec.public_pem).unwrap();
        let jwks = jwks.map_or(String::new(), |url| {
            format!("[[jwks]]\nurl = \"{url}\"\nmin_refresh_seconds = 1\n")
        });
        let gw = common::Gateway::builder()
            .config("server.max_wait_seconds = 2")
            .auth(&format!(
                r#"
                issuer = "{ISSUER}"
                audience = "{AUDIENCE}"
                leeway_seconds = 5
                [[keys]]
                pem_file = "{k}/rsa.pem"
                [[keys]]
                pem_file = "{k}/ec.pem"
                kid = "ec-file"
                {jwks}
                "#
            ))
            .backend("acme", "cb", &cb)
            .backend("globex", "cb", &cb)
            .config(extra)
            .start()
            .await;
        Gateway { gw, _sim: sim, _keys: keys }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let (status, headers, body) = self.gw.oneshot(request).await;
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    async fn get(&self, uri: &str, token: &str) -> Answer {
        self.call(Method::GET, uri, Some(token), None).await
    }

    async fn submit(&self, token: &str, body: &Value) -> Value {
        let answer = self.call(Method::POST, "/v1/actions", Some(token), Some(body)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        answer.body
    }

    async fn finished(&self, token: &str, id: &str) -> Value {
        self.gw.wait_terminal(token, id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ec_and_ed25519_keys_from_pem_files_and_jwks_are_accepted() {
    let (rsa, ec, ed, rsa2) = (rsa_key(), ec_key(), ed_key(), rsa_key());
    // The RSA JWK has no `alg`: its type says RS256.
    let jwks = JwksServer::start(vec![ed.jwk("ed-1", true), rsa2.jwk("rsa-1", false)]).await;
    let gw = Gateway::start(&rsa, &ec, Some(&jwks.url), "").await;
    let all = claims("acme", Permissions::all());
    for (name, token) in [
        ("RSA, PEM file, no kid", rsa.sign(None, &all)),
        ("EC P-256, PEM file, kid", ec.sign(Some("ec-file"), &all)),
        ("Ed25519, JWKS", ed.sign(Some("ed-1"), &all)),
        ("RSA, JWKS, alg inferred", rsa2.sign(Some("rsa-1"), &all)),
        // Without a kid every key is tried, each with its own algorithm.
        ("Ed25519, JWKS, no kid", ed.sign(None, &all)),
    ] {
        let answer = gw.get("/v1/capabilities", &token).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.body);
    }
    // One fetch served every JWKS key (the set is cached).
    assert_eq!(jwks.fetches(), 1);
    // The scopes may also come as an `scp` array (Entra ID, Okta).
    let scp = with(&all, json!({"scope": null, "scp": ["edrgate:read"]}));
    assert_eq!(gw.get("/v1/devices", &rsa.sign(None, &scp)).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid_at_most_once_per_interval() {
    let (rsa, ec) = (rsa_key(), ec_key());
    let (first, second, third) = (rsa_key(), ec_key(), ed_key());
    let jwks = JwksServer::start(vec![first.jwk("k1", true)]).await;
    let gw = Gateway::start(&rsa, &ec, Some(&jwks.url), "").await;
    let all = claims("acme", Permissions::all());
    assert_eq!(
        gw.get("/v1/capabilities", &first.sign(Some("k1"), &all)).await.status,
        StatusCode::OK
    );
    assert_eq!(jwks.fetches(), 1);

    // The identity provider rotates: k2 appears. Right after the first fetch the set is not
    // fetched again (at most once per second), so k2 is still unknown.
    jwks.publish(second.jwk("k2", true));
    let k2 = second.sign(Some("k2"), &all);
    let early = gw.get("/v1/capabilities", &k2).await;
    assert_eq!(
        early.problem(StatusCode::UNAUTHORIZED, "unauthenticated"),
        "the token's signing key is unknown"
    );
    assert_eq!(jwks.fetches(), 1, "refreshed within the interval");

    // After the interval the unknown kid fetches the set again, and k2 is accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.get("/v1/capabilities", &k2).await.status, StatusCode::OK);
    assert_eq!(jwks.fetches(), 2);
    // k1 is still published and still accepted, without another fetch.
    let k1 = first.sign(Some("k1"), &with(&all, json!({"sub": "other"})));
    assert_eq!(gw.get("/v1/capabilities", &k1).await.status, StatusCode::OK);

    // A flood of tokens with a kid nobody publishes costs no fetch within the interval.
    let stranger = ed_key();
    for i in 0..20 {
        let token = stranger.sign(Some("nobody"), &with(&all, json!({"sub": format!("s{i}")})));
        gw.get("/v1/capabilities", &token)
            .await
            .problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    assert_eq!(jwks.fetches(), 2);

    // Concurrent requests with a newly published kid share one fetch.
    jwks.publish(third.jwk("k3", true));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gw = Arc::new(gw);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let gw = Arc::clone(&gw);
            let token = third.sign(Some("k3"), &with(&all, json!({"sub": format!("c{i}")})));
            tokio::spawn(async move { gw.get("/v1/capabilities", &token).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(jwks.fetches(), 3, "one fetch for all concurrent unknown-kid requests");

    // A key the provider withdraws is refused for new tokens once the set is fetched again
    // (after `cache_seconds`, or here on the next unknown kid).
    jwks.keys.lock().unwrap().retain(|k| k["kid"] != "k1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = stranger.sign(Some("nobody"), &with(&all, json!({"sub": "trigger"})));
    gw.get("/v1/capabilities", &unknown).await.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(jwks.fetches(), 4);
    let k1 = first.sign(Some("k1"), &with(&all, json!({"sub": "after-withdrawal"})));
    gw.get("/v1/capabilities", &k1).await.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_with_a_bearer_challenge() {
    let (rsa, ec, ed) = (rsa_key(), ec_key(), ed_key());
    let jwks = JwksServer::start(vec![ed.jwk("ed-1", true)]).await;
    let gw = Gateway::start(&rsa, &ec, Some(&jwks.url), "").await;
    let good = claims("acme", Permissions::all());
    assert_eq!(gw.get("/v1/devices", &rsa.sign(None, &good)).await.status, StatusCode::OK);

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
    let unsigned_kid = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "ed-1"})), b64(&good));
    // The classic confusion: HS256 keyed with the bytes of the RSA public key, which a
    // gateway that took the algorithm from the header would verify with that same "secret".
    let confused = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(rsa.public_pem.as_bytes()))
            .unwrap()
    };
    let tampered = {
        let token = rsa.sign(None, &good);
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&with(&good, json!({"tenant": "globex"}))), parts[2])
    };
    // A valid signature whose header claims another algorithm of the same family.
    let alg_swapped = {
        let token = rsa.sign(None, &good);
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}.{}", b64(&json!({"alg": "RS512", "typ": "JWT"})), parts[1], parts[2])
    };
    let cases = [
        ("alg none", unsigned),
        ("alg none with a known kid", unsigned_kid),
        ("HS256 keyed with the RSA public key", confused(None)),
        ("HS256 keyed with the RSA public key, JWKS kid", confused(Some("ed-1"))),
        ("expired", rsa.sign(None, &with(&good, json!({"exp": now() - 60})))),
        ("not yet valid", rsa.sign(None, &with(&good, json!({"nbf": now() + 600})))),
        ("no exp", rsa.sign(None, &with(&good, json!({"exp": null})))),
        ("wrong issuer", rsa.sign(None, &with(&good, json!({"iss": "https://evil.test"})))),
        ("no issuer", rsa.sign(None, &with(&good, json!({"iss": null})))),
        ("wrong audience", rsa.sign(None, &with(&good, json!({"aud": "another-app"})))),
        ("no audience", rsa.sign(None, &with(&good, json!({"aud": null})))),
        ("missing tenant", rsa.sign(None, &with(&good, json!({"tenant": null})))),
        ("tenant not an id", rsa.sign(None, &with(&good, json!({"tenant": "../acme"})))),
        ("unknown kid", ed_key().sign(Some("who-knows"), &good)),
        ("unknown key, no kid", rsa_key().sign(None, &good)),
        ("EC key's token under the RSA key's kid", ec.sign(Some("ed-1"), &good)),
        ("tampered payload", tampered),
        ("alg swapped", alg_swapped),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        let answer = gw.get("/v1/devices", &token).await;
        let detail = answer.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
        let challenge = answer.challenge();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains(&format!(r#"error_description="{detail}""#)),
            "{name}: {challenge}"
        );
        // Why, but nothing about the keys.
        for secret in ["BEGIN", "pem", "rsa", "127.0.0.1", "jwks"] {
            assert!(!detail.to_lowercase().contains(secret), "{name}: {detail}");
        }
    }
    // No token at all: a challenge without an error (RFC 6750 §3.1).
    let missing = gw.call(Method::GET, "/v1/devices", None, None).await;
    missing.problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(missing.challenge(), r#"Bearer realm="edrgate""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_is_refused_unless_enabled_and_the_jwks_being_down_is_not_the_callers_fault() {
    let (rsa, ec) = (rsa_key(), ec_key());
    // A JWKS URL where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let gw = Gateway::start(&rsa, &ec, Some(&url), "").await;
    let good = claims("acme", Permissions::all());
    let secret = "a-secret-that-is-long-enough-for-hs256-0123456789";
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    // Not enabled: no key verifies it; with the JWKS down, that is a 503, not a 401.
    let answer = gw.get("/v1/devices", &hs).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    // A PEM key still serves while the JWKS is down.
    assert_eq!(gw.get("/v1/devices", &rsa.sign(None, &good)).await.status, StatusCode::OK);
    // A token naming a PEM key's kid does not wait for the JWKS either.
    assert_eq!(
        gw.get("/v1/devices", &ec.sign(Some("ec-file"), &good)).await.status,
        StatusCode::OK
    );
}

/// A command of `kind` with valid arguments (the match keeps up with new kinds).
fn sample(kind: CommandKind) -> Value {
    let command = match kind {
        CommandKind::ProcessList => json!({"type": "process_list"}),
        CommandKind::KillProcess => json!({"type": "kill_process", "pid": 4242}),
        CommandKind::GetFile => json!({"type": "get_file", "path": "C:\\evidence\\note.txt"}),
        CommandKind::PutFile => {
            json!({"type": "put_file", "file_id": "0123456789abcdef0123456789abcdef", "path": "C:\\x.txt"})
        }
        CommandKind::DeleteFile => json!({"type": "delete_file", "path": "C:\\x.txt"}),
        CommandKind::QuarantineFile => json!({"type": "quarantine_file", "path": "C:\\x.txt"}),
        CommandKind::UnquarantineFile => {
            json!({"type": "unquarantine_file", "path": "C:\\x.txt"})
        }
        CommandKind::ListDirectory => json!({"type": "list_directory", "path": "C:\\"}),
        CommandKind::CreateDirectory => json!({"type": "create_directory", "path": "C:\\x"}),
        CommandKind::Execute => json!({"type": "execute", "command_line": "cmd /c ver"}),
        CommandKind::RunScript => json!({"type": "run_script", "script": "collect.ps1"}),
        CommandKind::RegistryList => json!({"type": "registry_list", "key": "HKLM\\SOFTWARE"}),
        CommandKind::RegistryGet => {
            json!({"type": "registry_get", "key": "HKLM\\SOFTWARE", "value": "x"})
        }
        CommandKind::RegistrySet => {
            json!({"type": "registry_set", "key": "HKLM\\SOFTWARE\\x", "value": "v", "value_type": "REG_SZ", "data": "d"})
        }
        CommandKind::RegistryCreateKey => {
            json!({"type": "registry_create_key", "key": "HKLM\\SOFTWARE\\x"})
        }
        CommandKind::RegistryDeleteKey => {
            json!({"type": "registry_delete_key", "key": "HKLM\\SOFTWARE\\x"})
        }
        CommandKind::RegistryDeleteValue => {
            json!({"type": "registry_delete_value", "key": "HKLM\\SOFTWARE\\x", "value": "v"})
        }
        CommandKind::MemoryDump => json!({"type": "memory_dump"}),
        CommandKind::Isolate => json!({"type": "isolate"}),
        CommandKind::Release => json!({"type": "release"}),
    };
    let parsed: Command = serde_json::from_value(command.clone()).unwrap();
    assert_eq!(parsed.kind(), kind);
    command
}

fn all_but(permission: Permission) -> Permissions {
    Permission::ALL.into_iter().filter(|p| *p != permission).collect()
}

fn only(permissions: &[Permission]) -> Permissions {
    permissions.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_class_needs_its_permission() {
    let (rsa, ec) = (rsa_key(), ec_key());
    let gw = Gateway::start(&rsa, &ec, None, "").await;
    let token = |permissions: Permissions| rsa.sign(None, &claims("acme", permissions));
    for kind in CommandKind::ALL {
        let permission = Permission::from(kind.class());
        let scope = permission.scope(&ScopeNames::default()).to_owned();
        // An unknown host: the permission is all this checks, nothing runs.
        let body = json!({"targets": [{"hostname": "NO-SUCH-HOST"}], "commands": [sample(kind)]});
        let refused = gw
            .call(Method::POST, "/v1/actions", Some(&token(all_but(permission))), Some(&body))
            .await;
        let detail = refused.problem(StatusCode::FORBIDDEN, "forbidden");
        assert!(
            detail.contains(permission.as_str()) && detail.contains(&scope),
            "{kind:?}: {detail}"
        );
        assert_eq!(
            refused.challenge(),
            format!(r#"Bearer realm="edrgate", error="insufficient_scope", scope="{scope}""#)
        );
        let allowed = gw
            .call(Method::POST, "/v1/actions", Some(&token(only(&[permission]))), Some(&body))
            .await;
        assert_ne!(allowed.status, StatusCode::FORBIDDEN, "{kind:?}: {}", allowed.body);
    }
    // Every missing permission of a mixed action is named.
    let mixed = json!({"targets": [{"hostname": "WIN-0001"}],
                       "commands": [sample(CommandKind::Execute), sample(CommandKind::Isolate)]});
    let answer = gw
        .call(Method::POST, "/v1/actions", Some(&token(only(&[Permission::Read]))), Some(&mixed))
        .await;
    let detail = answer.problem(StatusCode::FORBIDDEN, "forbidden");
    assert!(
        detail.contains("execute, contain") && detail.contains("edrgate:execute, edrgate:contain"),
        "{detail}"
    );
    // Refused submissions stored nothing.
    let listed = gw.get("/v1/actions", &token(Permissions::all())).await;
    assert!(
        listed.body["items"].as_array().unwrap().iter().all(|a| a["commands"]
            .as_array()
            .unwrap()
            .len()
            == 1)
    );

    // Cancelling needs what submitting needed.
    let full = token(Permissions::all());
    let isolate = gw
        .submit(&full, &json!({"targets": [{"hostname": "WIN-0001"}], "commands": [sample(CommandKind::Isolate)]}))
        .await;
    let cancel = format!("/v1/actions/{}/cancel", isolate["id"].as_str().unwrap());
    let reader = token(only(&[Permission::Read]));
    let detail = gw
        .call(Method::POST, &cancel, Some(&reader), None)
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");
    assert!(detail.contains("contain"), "{detail}");
    let container = token(only(&[Permission::Contain]));
    let answer = gw.call(Method::POST, &cancel, Some(&container), None).await;
    assert!([StatusCode::OK, StatusCode::CONFLICT].contains(&answer.status), "{}", answer.body);

    // Reading needs read; stored files need files; administration needs admin.
    let get_file = gw
        .submit(&full, &json!({"targets": [{"hostname": "WIN-0001"}], "commands": [sample(CommandKind::GetFile)]}))
        .await;
    let id = get_file["id"].as_str().unwrap();
    let done = gw.finished(&full, id).await;
    let file_id =
        done["runs"][0]["commands"][0]["result"]["file"]["file_id"].as_str().unwrap().to_owned();
    let no_read = token(all_but(Permission::Read));
    for uri in [
        "/v1/actions".to_owned(),
        format!("/v1/actions/{id}"),
        "/v1/devices".into(),
        "/v1/capabilities".into(),
    ] {
        let detail = gw.get(&uri, &no_read).await.problem(StatusCode::FORBIDDEN, "forbidden");
        assert!(detail.contains("read") && detail.contains("edrgate:read"), "{uri}: {detail}");
    }
    let no_files = token(all_but(Permission::Files));
    for uri in [format!("/v1/files/{file_id}"), format!("/v1/files/{file_id}/content")] {
        let detail = gw.get(&uri, &no_files).await.problem(StatusCode::FORBIDDEN, "forbidden");
        assert!(detail.contains("edrgate:files"), "{uri}: {detail}");
        assert_eq!(
            gw.get(&uri, &token(only(&[Permission::Files]))).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }
    // The reload acts on every tenant: a tenant's permissions, admin included, do not reach it.
    let detail = gw
        .call(Method::POST, "/v1/admin/reload", Some(&full), None)
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");
    assert!(detail.contains("edrgate:operator"), "{detail}");
    let operator = token(only(&[Permission::Operator]));
    let answer = gw.call(Method::POST, "/v1/admin/reload", Some(&operator), None).await;
    assert_ne!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found_on_every_id_route() {
    let (rsa, ec) = (rsa_key(), ec_key());
    let gw = Gateway::start(&rsa, &ec, None, "").await;
    let acme = rsa.sign(None, &claims("acme", Permissions::all()));
    let globex = rsa.sign(None, &claims("globex", Permissions::all()));
    let action = gw
        .submit(&acme, &json!({"targets": [{"hostname": "WIN-0001"}], "commands": [sample(CommandKind::GetFile)]}))
        .await;
    let action_id = action["id"].as_str().unwrap().to_owned();
    let done = gw.finished(&acme, &action_id).await;
    let file_id =
        done["runs"][0]["commands"][0]["result"]["file"]["file_id"].as_str().unwrap().to_owned();

    // Every route of the API description that takes an id.
    let doc = gw.call(Method::GET, "/openapi.json", None, None).await.body;
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        if !path.contains("{id}") {
            continue;
        }
        let id = if path.starts_with("/v1/files") { &file_id } else { &action_id };
        let uri = path.replace("{id}", id);
        for method in operations.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method == Method::POST || method == Method::PUT).then(|| json!({}));
            let answer = gw.call(method.clone(), &uri, Some(&globex), body.as_ref()).await;
            answer.problem(StatusCode::NOT_FOUND, "not_found");
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} id routes");
    // The ids are real: their tenant reads them.
    assert_eq!(gw.get(&format!("/v1/actions/{action_id}"), &acme).await.status, StatusCode::OK);
    assert_eq!(gw.get(&format!("/v1/files/{file_id}"), &acme).await.status, StatusCode::OK);
    // Lists are per tenant too.
    let listed = gw.get("/v1/actions", &globex).await;
    assert_eq!(listed.body["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_answer_429_with_retry_after() {
    let (rsa, ec) = (rsa_key(), ec_key());
    let extra = r#"
        [tenants.acme.limits]
        requests_per_minute = 3
        burst = 3
        [tenants.busy.backends.down]
        kind = "carbonblack"
        url = "http://127.0.0.1:1"
        token = "t"
        [tenants.busy.limits]
        max_actions_in_flight = 1
    "#;
    let gw = Gateway::start(&rsa, &ec, None, extra).await;
    let acme = rsa.sign(None, &claims("acme", Permissions::all()));
    let globex = rsa.sign(None, &claims("globex", Permissions::all()));
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/capabilities", &acme).await.status, StatusCode::OK);
    }
    let limited = gw.get("/v1/capabilities", &acme).await;
    let detail = limited.problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(detail.contains("3 per minute"), "{detail}");
    let after: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "Retry-After: {after}");
    // Another tenant is not affected; callers without a valid token are not counted.
    assert_eq!(gw.get("/v1/capabilities", &globex).await.status, StatusCode::OK);

    // Actions in flight: the backend is down, so the first action stays queued.
    let busy = rsa.sign(None, &claims("busy", Permissions::all()));
    let body = json!({"targets": [{"backend": "down", "device_id": "1"}], "commands": [{"type": "process_list"}]});
    let first = gw.submit(&busy, &body).await;
    let refused = gw.call(Method::POST, "/v1/actions", Some(&busy), Some(&body)).await;
    let detail = refused.problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(detail.contains("limit 1"), "{detail}");
    assert_eq!(refused.headers[header::RETRY_AFTER], "5");
    // Once the first one is finished (cancelled), there is room again.
    let id = first["id"].as_str().unwrap();
    let cancel =
        gw.call(Method::POST, &format!("/v1/actions/{id}/cancel"), Some(&busy), None).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    assert_eq!(gw.finished(&busy, id).await["status"], "cancelled");
    gw.submit(&busy, &body).await;
}
