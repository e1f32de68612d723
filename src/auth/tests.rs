//! Unit tests of token validation, keys, permissions and limits.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edrgate_adapter::{CommandClass, CommandKind};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::Duration;

use super::keys::{jwk_key, pem_key};
use super::tokens::{MAX_TOKEN_LEN, self_test, token_key};
use super::*;
use crate::config::{
    AuthConfig, ScopeNames, TenantLimitsConfig, asymmetric_algorithm, check_jwks_url,
};

const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";

/// An HS256 configuration plus `extra` TOML lines.
fn config(extra: &str) -> AuthConfig {
    let text = format!("allow_hs256 = true\nhs256_secret = \"{SECRET}\"\n{extra}");
    let config: AuthConfig = toml::from_str(&text).unwrap();
    let mut errors = Vec::new();
    config.validate(&mut errors);
    assert_eq!(errors, Vec::<String>::new());
    config
}

fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

async fn refused(auth: &Auth, token: &str) -> Refusal {
    let error = auth.authenticate(token).await.expect_err("the token was accepted");
    assert!(matches!(error, Refusal::BadToken(_)), "{token}: {error:?}");
    error
}

#[tokio::test]
async fn a_dev_token_carries_its_tenant_subject_and_every_permission() {
    let auth = Auth::new(&config("")).unwrap();
    let token = mint(SECRET.as_bytes(), "acme", "alice", Duration::from_secs(60)).unwrap();
    let caller = auth.authenticate(&token).await.unwrap();
    assert_eq!((caller.tenant.as_str(), caller.subject.as_deref()), ("acme", Some("alice")));
    assert_eq!(caller.permissions, Permissions::all());
    // A second time from the cache, same answer.
    assert_eq!(auth.authenticate(&token).await.unwrap(), caller);
    let read_only = TokenSpec::dev(SECRET.as_bytes())
        .only([Permission::Read].into_iter().collect(), &ScopeNames::default());
    let token = mint_with(&read_only, "acme", "bob", Duration::from_secs(60)).unwrap();
    let caller = auth.authenticate(&token).await.unwrap();
    assert!(caller.has(Permission::Read) && !caller.has(Permission::Write));
}

#[tokio::test]
async fn expired_wrong_secret_wrong_alg_and_unsigned_tokens_are_refused() {
    let auth = Auth::new(&config("")).unwrap();
    let claims = |exp: u64| json!({"sub": "s", "tenant": "acme", "exp": exp});
    let expired = sign(&claims(now() - 30 - 60), Algorithm::HS256, SECRET);
    let wrong_secret =
        sign(&claims(now() + 60), Algorithm::HS256, "another-secret-of-enough-length!!");
    let wrong_alg = sign(&claims(now() + 60), Algorithm::HS512, SECRET);
    // `alg: none`, hand-made: no library signs one.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(now() + 60).to_string());
    let unsigned = format!("{header}.{payload}.");
    for token in [expired, wrong_secret, wrong_alg, unsigned, "not.a.jwt".into(), String::new()] {
        refused(&auth, &token).await;
    }
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    refused(&auth, &long).await;
}

#[tokio::test]
async fn tenant_exp_and_nbf_are_enforced_with_the_leeway() {
    let auth = Auth::new(&config("leeway_seconds = 30")).unwrap();
    let no_tenant = sign(&json!({"sub": "s", "exp": now() + 60}), Algorithm::HS256, SECRET);
    let bad_tenant = sign(&json!({"tenant": "../x", "exp": now() + 60}), Algorithm::HS256, SECRET);
    let no_exp = sign(&json!({"tenant": "acme"}), Algorithm::HS256, SECRET);
    let not_yet = sign(
        &json!({"tenant": "acme", "exp": now() + 600, "nbf": now() + 300}),
        Algorithm::HS256,
        SECRET,
    );
    for token in [no_tenant, bad_tenant, no_exp, not_yet] {
        refused(&auth, &token).await;
    }
    // Within the leeway an expired token still passes (clock skew), and is not cached.
    let skewed = sign(&json!({"tenant": "acme", "exp": now() - 5}), Algorithm::HS256, SECRET);
    assert!(auth.authenticate(&skewed).await.is_ok());
    assert!(auth.cache.get(&token_key(&skewed)).await.is_none());
    // And without a scope claim the caller has no permission at all.
    assert_eq!(auth.authenticate(&skewed).await.unwrap().permissions, Permissions::default());
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let cfg = config("issuer = \"https://idp\"\naudience = \"edrgate\"");
    let auth = Auth::new(&cfg).unwrap();
    let base = json!({"tenant": "acme", "exp": now() + 60});
    let with = |extra: Value| {
        let mut claims = base.clone();
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        sign(&claims, Algorithm::HS256, SECRET)
    };
    let good = with(json!({"iss": "https://idp", "aud": "edrgate"}));
    assert!(auth.authenticate(&good).await.is_ok());
    let audiences = with(json!({"iss": "https://idp", "aud": ["other", "edrgate"]}));
    assert!(auth.authenticate(&audiences).await.is_ok());
    for token in [
        with(json!({})),
        with(json!({"iss": "https://idp"})),
        with(json!({"aud": "edrgate"})),
        with(json!({"iss": "https://evil", "aud": "edrgate"})),
        with(json!({"iss": "https://idp", "aud": "other"})),
    ] {
        refused(&auth, &token).await;
    }
    let minted = mint_for(&cfg, "acme", "ops", Duration::from_secs(60)).unwrap();
    assert_eq!(auth.authenticate(&minted).await.unwrap().tenant, "acme");
}

#[tokio::test]
async fn tenant_and_scope_claims_and_scope_names_are_configurable() {
    // Default: `scope` (string) and `scp` (array or string) both count.
    let auth = Auth::new(&config("")).unwrap();
    let token = |claims: Value| sign(&claims, Algorithm::HS256, SECRET);
    let exp = now() + 60;
    let caller = auth
        .authenticate(&token(json!({"tenant": "a", "exp": exp,
            "scope": "openid edrgate:read", "scp": ["edrgate:contain", "unrelated"]})))
        .await
        .unwrap();
    assert_eq!(
        caller.permissions.iter().collect::<Vec<_>>(),
        [Permission::Read, Permission::Contain]
    );

    let cfg = config(
        "tenant_claim = \"https://edrgate/tenant\"\nscope_claim = \"roles\"\n[scopes]\nwrite = \"Responder.Write\"",
    );
    let auth = Auth::new(&cfg).unwrap();
    let caller = auth
        .authenticate(&token(json!({"https://edrgate/tenant": "globex", "exp": exp,
            "roles": ["Responder.Write", "edrgate:read"], "scope": "edrgate:admin",
            "azp": "soar-client"})))
        .await
        .unwrap();
    assert_eq!(caller.tenant, "globex");
    assert_eq!(caller.client_id.as_deref(), Some("soar-client"));
    // Only the configured claim counts, with the configured names.
    assert_eq!(
        caller.permissions.iter().collect::<Vec<_>>(),
        [Permission::Read, Permission::Write]
    );
    let error = caller.require(Permission::Write).and(caller.require(Permission::Admin));
    let Err(Refusal::Forbidden { detail, scopes }) = error else { panic!("{error:?}") };
    assert_eq!(detail, "missing permission admin (token scope edrgate:admin)");
    assert_eq!(scopes, ["edrgate:admin"]);
    // A dev token for this configuration carries the renamed scopes in the right claim.
    let minted = mint_for(&cfg, "globex", "x", Duration::from_secs(60)).unwrap();
    assert_eq!(auth.authenticate(&minted).await.unwrap().permissions, Permissions::all());
    // The default tenant claim is not read any more.
    refused(&auth, &mint(SECRET.as_bytes(), "globex", "x", Duration::from_secs(60)).unwrap()).await;
}

#[test]
fn commands_need_the_permission_of_their_class() {
    let reader = Caller::new("acme", None, [Permission::Read].into_iter().collect());
    for kind in CommandKind::ALL {
        let result = reader.require_commands([kind]);
        assert_eq!(result.is_ok(), kind.class() == CommandClass::Read, "{kind:?}");
        if let Err(error) = result {
            let Refusal::Forbidden { detail, .. } = error else { panic!("{error:?}") };
            let expected = Permission::from(kind.class());
            assert!(detail.contains(expected.as_str()), "{kind:?}");
        }
    }
    let error = reader
        .require_commands([CommandKind::Isolate, CommandKind::Execute, CommandKind::Release])
        .unwrap_err();
    assert_eq!(
        error,
        Refusal::Forbidden {
            detail: "missing permissions execute, contain (token scopes edrgate:execute, \
                     edrgate:contain)"
                .to_owned(),
            scopes: vec!["edrgate:execute".to_owned(), "edrgate:contain".to_owned()],
        }
    );
    assert!(Caller::new("a", None, Permissions::all()).require_all(Permission::ALL).is_ok());
    assert_eq!(format!("{:?}", reader.permissions), r#"{"read"}"#);
}

#[test]
fn only_asymmetric_algorithms_and_safe_jwks_urls_are_accepted() {
    for name in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"] {
        assert!(asymmetric_algorithm(name).is_some(), "{name}");
    }
    for name in ["HS256", "HS512", "none", "rs256", ""] {
        assert!(asymmetric_algorithm(name).is_none(), "{name}");
    }
    for url in [
        "https://idp.example.com/jwks",
        "http://127.0.0.1:8080/j",
        "http://[::1]/j",
        "http://localhost/j",
    ] {
        assert!(check_jwks_url(url).is_ok(), "{url}");
    }
    for url in ["http://idp.example.com/jwks", "ftp://x/", "not a url", "http://10.0.0.1/j"] {
        assert!(check_jwks_url(url).is_err(), "{url}");
    }
}

#[test]
fn jwks_entries_give_signing_keys_with_the_algorithm_of_their_type() {
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let x = URL_SAFE_NO_PAD.encode(aws_lc_rs::signature::KeyPair::public_key(&ed).as_ref());
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "e"});
    let (kid, alg, _) = jwk_key(&okp).unwrap();
    assert_eq!((kid.as_deref(), alg), (Some("e"), Algorithm::EdDSA));
    let mut with_alg = okp.clone();
    with_alg["alg"] = json!("EdDSA");
    assert_eq!(jwk_key(&with_alg).unwrap().1, Algorithm::EdDSA);
    // Never HMAC from a JWKS, never an encryption key, never an alg of another key type.
    let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "alg": "HS256"});
    assert!(jwk_key(&oct).is_err());
    let mut enc = okp.clone();
    enc["use"] = json!("enc");
    assert!(jwk_key(&enc).is_err());
    let mut mismatched = okp.clone();
    mismatched["alg"] = json!("RS256");
    assert!(jwk_key(&mismatched).is_err());
    assert!(jwk_key(&json!({"kty": "XYZ"})).is_err());
}

#[test]
fn pem_keys_get_the_algorithm_of_their_type() {
    use aws_lc_rs::encoding::{AsDer as _, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair as _;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
        )
        .unwrap();
        path
    };
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_der: PublicKeyX509Der = rsa.public_key().as_der().unwrap();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let ec_der: PublicKeyX509Der = ec.public_key().as_der().unwrap();
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let ed_der: PublicKeyX509Der = ed.public_key().as_der().unwrap();
    let (rsa, ec, ed) = (
        write("rsa.pem", rsa_der.as_ref()),
        write("ec.pem", ec_der.as_ref()),
        write("ed.pem", ed_der.as_ref()),
    );
    assert_eq!(pem_key(&rsa, None).unwrap().0, Algorithm::RS256);
    assert_eq!(pem_key(&rsa, Some("PS384")).unwrap().0, Algorithm::PS384);
    assert_eq!(pem_key(&ec, None).unwrap().0, Algorithm::ES256);
    assert_eq!(pem_key(&ed, None).unwrap().0, Algorithm::EdDSA);
    assert!(pem_key(&ec, Some("RS256")).is_err());
    assert!(pem_key(&rsa, Some("HS256")).is_err());
    assert!(pem_key(&dir.path().join("missing.pem"), None).is_err());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    assert!(pem_key(&garbage, None).is_err());
}

#[test]
fn hs256_is_only_minted_and_accepted_when_enabled() {
    let cfg: AuthConfig = toml::from_str(&format!("hs256_secret = \"{SECRET}\"")).unwrap();
    let mut errors = Vec::new();
    cfg.validate(&mut errors);
    assert!(errors.iter().any(|e| e.contains("allow_hs256")), "{errors:?}");
    assert!(matches!(
        mint_for(&cfg, "a", "b", Duration::from_secs(1)),
        Err(AuthError::Hs256Disabled)
    ));
    let auth = Auth::new(&cfg).unwrap();
    assert!(auth.static_keys.is_empty(), "an HS256 key without allow_hs256");
    assert!(mint(SECRET.as_bytes(), "not a tenant", "x", Duration::from_secs(1)).is_err());
}

#[tokio::test]
async fn the_request_rate_is_limited_per_tenant_and_survives_unchanged_reloads() {
    let auth = Auth::new(&config("")).unwrap();
    let limited =
        TenantLimitsConfig { requests_per_minute: Some(60), burst: Some(2), ..Default::default() };
    let none = TenantLimitsConfig::default();
    auth.set_tenant_limits([("acme", &limited), ("globex", &none)]);
    assert!(auth.check_rate("acme").is_ok() && auth.check_rate("acme").is_ok());
    let error = auth.check_rate("acme").unwrap_err();
    let Refusal::RateLimited { retry_after, .. } = error else { panic!("{error:?}") };
    // One request a second: the next one is at most a second away (`Retry-After: 1`).
    assert!(!retry_after.is_zero() && retry_after <= Duration::from_secs(1), "{retry_after:?}");
    for _ in 0..100 {
        assert!(auth.check_rate("globex").is_ok() && auth.check_rate("initech").is_ok());
    }
    // The same limits again (a reload): the spent burst stays spent.
    auth.set_tenant_limits([("acme", &limited)]);
    assert!(auth.check_rate("acme").is_err());
    // New limits: a new budget.
    let raised = TenantLimitsConfig { burst: Some(5), ..limited.clone() };
    auth.set_tenant_limits([("acme", &raised)]);
    assert!(auth.check_rate("acme").is_ok());
    // Removed: unlimited.
    auth.set_tenant_limits([]);
    for _ in 0..10 {
        assert!(auth.check_rate("acme").is_ok());
    }
}

#[tokio::test]
async fn actions_in_flight_are_admitted_up_to_the_limit() {
    let auth = Auth::new(&config("")).unwrap();
    let limits = TenantLimitsConfig { max_actions_in_flight: Some(2), ..Default::default() };
    auth.set_tenant_limits([("acme", &limits)]);
    let count = |n: u64| move || async move { Ok::<u64, String>(n) };
    let admitted = auth.admit_action("acme", count(1)).await.unwrap();
    drop(admitted);
    let error = auth.admit_action("acme", count(2)).await.unwrap_err();
    assert!(matches!(error, Refusal::RateLimited { .. }), "{error:?}");
    assert!(error.to_string().contains("2 actions in flight (limit 2)"));
    // A tenant without the limit is not even counted.
    let uncounted = || async { Err::<u64, String>("must not be called".into()) };
    assert!(auth.admit_action("globex", uncounted).await.is_ok());
    // A failing count is an internal error, not an admission.
    let failing = || async { Err::<u64, String>("database is locked".into()) };
    let error = auth.admit_action("acme", failing).await.unwrap_err();
    assert_eq!(error, Refusal::Internal);
    // Admissions of one tenant are serialized: the second waits for the first.
    let held = auth.admit_action("acme", count(0)).await.unwrap();
    let waiting =
        tokio::time::timeout(Duration::from_millis(50), auth.admit_action("acme", count(0)));
    assert!(waiting.await.is_err(), "two admissions at once");
    drop(held);
    assert!(auth.admit_action("acme", count(0)).await.is_ok());
}

#[test]
fn auth_settings_are_checked_with_their_paths() {
    let problems = |text: &str| {
        let config: AuthConfig = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        config.validate(&mut errors);
        errors
    };
    assert_eq!(
        problems("[[jwks]]\nurl = \"https://idp/jwks\""),
        [
            "auth.issuer: required with auth.keys or auth.jwks",
            "auth.audience: required with auth.keys or auth.jwks"
        ]
    );
    let errors = problems(
        r#"
        issuer = "i"
        audience = "a"
        tenant_claim = ""
        leeway_seconds = 301
        [[keys]]
        pem_file = "k.pem"
        algorithm = "HS256"
        kid = ""
        [[jwks]]
        url = "http://idp.example.com/jwks"
        cache_seconds = 0
        [scopes]
        write = "edrgate:read"
        admin = "two words"
        "#,
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "auth.keys[0].algorithm",
            "auth.keys[0].kid",
            "auth.jwks[0].url",
            "auth.jwks[0].cache_seconds",
            "auth.tenant_claim",
            "auth.leeway_seconds",
            "auth.scopes.write",
            "auth.scopes.admin"
        ],
        "{errors:?}"
    );
    assert!(problems("").iter().any(|e| e.starts_with("auth: no token key")));
    assert!(problems("allow_hs256 = true").iter().any(|e| e.contains("missing")));
}

#[test]
fn the_crypto_backend_works() {
    // The self-test in `Auth::new` is what catches a missing or doubled crypto feature.
    assert!(self_test().is_ok());
}
