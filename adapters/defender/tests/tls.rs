//! One TLS policy per host (issue 12, point 3): the token endpoint, the API and the result
//! download host are three hosts with three certificates, each verified with its own settings
//! (config.rs, "TLS: one policy per host"). The simulator serves the three roles on three
//! listeners, each with its own self-signed certificate (`Simulator::spawn_split_tls`).

use std::path::{Path, PathBuf};

use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Adapter, Command, CommandResult, ErrorCode, Status};
use edrgate_defender::{DefenderAdapter, DefenderConfig, HostTls};
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, NOTE_TXT, SimConfig, Simulator,
    SplitTls, machine_id,
};
use secrecy::SecretString;

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// A backend on the split simulator with no TLS settings at all yet.
fn config(split: &SplitTls) -> DefenderConfig {
    let mut cfg = DefenderConfig::new(
        split.api.url(),
        DEFAULT_TENANT,
        DEFAULT_CLIENT_ID,
        SecretString::from(DEFAULT_CLIENT_SECRET),
    );
    cfg.token_url = Some(split.token_url());
    cfg.poll_interval_ms = 50;
    cfg.max_poll_interval_ms = 200;
    cfg.visibility_grace_secs = 2;
    cfg.download_link_retries = 1;
    cfg
}

async fn split() -> (Simulator, SplitTls, tempfile::TempDir) {
    let sim = Simulator::new(SimConfig::default());
    let split = sim.spawn_split_tls().await.unwrap();
    assert_ne!(split.api.cert_sha256, split.token.cert_sha256);
    assert_ne!(split.api.cert_sha256, split.blob.cert_sha256);
    (sim, split, tempfile::tempdir().unwrap())
}

fn note() -> Vec<Command> {
    vec![Command::GetFile { path: "C:\\evidence\\note.txt".into(), offset: None, length: None }]
}

fn trust(ca: PathBuf) -> HostTls {
    HostTls { ca_file: Some(ca), ..HostTls::default() }
}

#[tokio::test]
async fn a_pinned_api_certificate_leaves_the_token_and_download_hosts_their_own() {
    let (sim, split, dir) = split().await;
    let mut cfg = config(&split);
    cfg.pinned_cert_sha256 = Some(split.api.cert_sha256.clone());
    cfg.token_tls = trust(write_pem(dir.path(), "token.pem", &split.token.cert_pem));
    cfg.download_tls = trust(write_pem(dir.path(), "blob.pem", &split.blob.cert_pem));
    assert!(cfg.validate().is_ok());
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let mut run = RunHarness::new(&machine_id(1), note());
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let CommandResult::File { file } = run.result(0) else { panic!("{:?}", run.result(0)) };
    assert_eq!(run.files.bytes(file), NOTE_TXT);
    let c = sim.counters();
    assert!(c.tokens_issued >= 1 && c.downloads >= 1, "{c:?}");
    assert_eq!(c.downloads_with_bearer, 0);
}

#[tokio::test]
async fn skip_verify_on_the_api_still_verifies_the_token_host() {
    let (sim, split, dir) = split().await;
    let mut cfg = config(&split);
    cfg.insecure_skip_verify = true;
    // The token host's certificate is trusted nowhere: the secret must not go there.
    let adapter = DefenderAdapter::new("mde", cfg.clone()).unwrap();
    let e = adapter.find_devices(None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VendorAuthFailed, "{e:?}");
    assert!(!e.is_retryable(), "a refused certificate is configuration, not a passing fault");
    assert!(e.info.message.contains("token_tls"), "{}", e.info.message);
    assert!(!format!("{e:?}").contains(DEFAULT_CLIENT_SECRET));
    let c = sim.counters();
    assert_eq!(c.token_requests, 0, "a token request reached the untrusted host: {c:?}");
    assert_eq!(c.tokens_issued + c.tokens_refused, 0);

    // With the token host's own CA, skip-verify on the API works, and only there.
    cfg.token_tls = trust(write_pem(dir.path(), "token.pem", &split.token.cert_pem));
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    assert!(!adapter.find_devices(None).await.unwrap().is_empty());
    assert_eq!(sim.counters().token_requests, 1);
}

#[tokio::test]
async fn the_download_host_has_its_own_ca() {
    let (sim, split, dir) = split().await;
    let mut cfg = config(&split);
    // The API's CA and the token host's CA, but none for the download host.
    cfg.ca_file = Some(write_pem(dir.path(), "api.pem", &split.api.cert_pem));
    cfg.token_tls = trust(write_pem(dir.path(), "token.pem", &split.token.cert_pem));
    let adapter = DefenderAdapter::new("mde", cfg.clone()).unwrap();
    let mut run = RunHarness::new(&machine_id(2), note());
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Failed);
    let e = run.error(0);
    assert_eq!(e.code, ErrorCode::VendorAuthFailed, "{e:?}");
    assert!(e.message.contains("download_tls"), "{}", e.message);
    assert_eq!(sim.counters().downloads, 0, "no blob request got through");

    // The download host's CA in download_tls: the same read succeeds.
    cfg.download_tls = trust(write_pem(dir.path(), "blob.pem", &split.blob.cert_pem));
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let mut run = RunHarness::new(&machine_id(2), note());
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert!(sim.counters().downloads >= 1);
}

#[test]
fn per_host_tables_parse_and_the_token_host_is_never_skip_verified() {
    let cfg: DefenderConfig = serde_json::from_value(serde_json::json!({
        "tenant_id": "t", "client_id": "c", "client_secret": "s",
        "pinned_cert_sha256": "ab".repeat(32),
        "token_tls": {"ca_file": "/etc/edrgate/proxy-ca.pem"},
        "download_tls": {"pinned_cert_sha256": "cd".repeat(32)},
    }))
    .unwrap();
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    assert_eq!(cfg.token_tls.ca_file.as_deref(), Some(Path::new("/etc/edrgate/proxy-ca.pem")));

    let mut bad = cfg.clone();
    bad.token_tls.insecure_skip_verify = true;
    bad.download_tls.pinned_cert_sha256 = Some("not-hex".into());
    let errors = bad.validate().unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("token_tls.insecure_skip_verify")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("download_tls.pinned_cert_sha256")), "{errors:?}");

    let typo = serde_json::from_value::<DefenderConfig>(serde_json::json!({
        "tenant_id": "t", "client_id": "c", "client_secret": "s",
        "token_tls": {"ca_fle": "x.pem"},
    }));
    assert!(typo.is_err());
}
