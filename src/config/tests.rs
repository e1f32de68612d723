//! The parsing and validation of whole files, and the shipped configurations.

use super::*;

const EXAMPLE: &str = r#"
    [auth]
    allow_hs256 = true
    hs256_secret = "${SECRET}"
    [tenants.acme.backends.cb]
    kind = "carbonblack"
    url = "https://cb.example.com"
    token = "${CB_TOKEN}"
"#;

#[test]
fn parses_with_environment_references() {
    let env = |name: &str| match name {
        "SECRET" => Some("x".repeat(32)),
        "CB_TOKEN" => Some("t".into()),
        _ => None,
    };
    let config = Config::parse(EXAMPLE, env).unwrap();
    assert_eq!(config.tenants["acme"].backends["cb"].kind(), "carbonblack");
    assert_eq!(config.engine.lease_seconds, 30);
}

#[test]
fn reports_every_problem_with_its_path() {
    let errors = Config::parse(EXAMPLE, |_| None).unwrap_err();
    assert_eq!(
        errors,
        [
            "auth.hs256_secret: environment variable SECRET is not set",
            "tenants.acme.backends.cb.token: environment variable CB_TOKEN is not set"
        ]
    );
    let errors = Config::parse(
        "[auth]\nallow_hs256 = true\nhs256_secret = \"short\"\n[tenants.\"a/b\"]\n",
        |_| None,
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let errors = Config::parse(&EXAMPLE.replace("https://cb.example.com", "ftp:nowhere"), |_| {
        Some("x".repeat(32))
    })
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("tenants.acme.backends.cb.url"), "{errors:?}");
}

#[test]
fn every_malformed_section_is_reported_with_its_path() {
    let text = r#"
        [auth]
        allow_hs256 = true
        hs256_secret = "0123456789abcdef0123456789abcdef"
        [engine]
        lease_seconds = "soon"
        [tenants.acme.backends.cb]
        kind = "carbonblack"
        token = "t"
        [tenants.acme.backends.cb2]
        kind = "carbonblack"
        url = "https://cb"
        token = "t"
        colour = "blue"
        [[tenants.acme.routing.rules]]
        hostname = "a*"
        [tenants.acme.routing]
        default = "cb"
        [tenants.globex.backends.x]
        kind = "nonesuch"
        [metrics]
    "#;
    let errors = Config::parse(text, |_| None).unwrap_err();
    let expected = [
        "engine: ",
        "tenants.acme.backends.cb.url: missing",
        "tenants.acme.backends.cb2.colour: unknown setting",
        "tenants.acme.routing.rules",
        "tenants.globex.backends.x: unknown kind \"nonesuch\" (expected one of carbonblack, ",
        "metrics: unknown section",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for prefix in expected {
        assert!(errors.iter().any(|e| e.starts_with(prefix)), "{prefix} not in {errors:#?}");
    }
}

#[test]
fn secrets_come_from_files_and_routing_names_known_backends() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("cb-token");
    std::fs::write(&token, "from-a-file\n").unwrap();
    let text = format!(
        r#"
        [auth]
        allow_hs256 = true
        hs256_secret = "0123456789abcdef0123456789abcdef"
        [tenants.acme.backends.cb]
        kind = "carbonblack"
        url = "https://cb"
        token_file = "{}"
        [tenants.acme.routing]
        order = ["cb", "nope"]
        "#,
        token.display()
    );
    let errors = Config::parse(&text, |_| None).unwrap_err();
    assert_eq!(errors, ["tenants.acme.routing.order[1]: no backend named \"nope\" in this tenant"]);
    let config = Config::parse(&text.replace(", \"nope\"", ""), |_| None).unwrap();
    // The backend got the file's text as its token, one trailing newline (what `echo` writes)
    // removed: its settings are those of the same backend with the token written inline.
    let inline = text
        .replace(", \"nope\"", "")
        .replace(&format!("token_file = \"{}\"", token.display()), "token = \"from-a-file\"");
    let inline = Config::parse(&inline, |_| None).unwrap();
    let key = ("acme".to_owned(), "cb".to_owned());
    assert_eq!(config.backend_fingerprints[&key], inline.backend_fingerprints[&key]);
    let missing = text.replace(&token.display().to_string(), "/nonexistent/token");
    let errors = Config::parse(&missing, |_| None).unwrap_err();
    assert!(
        errors[0].starts_with("tenants.acme.backends.cb.token_file: cannot read"),
        "{errors:?}"
    );
}

#[test]
fn a_backend_needs_a_known_kind() {
    let text = |backend: &str| {
        format!(
            "[auth]\nallow_hs256 = true\nhs256_secret = \"{}\"\n[tenants.acme.backends.b]\n{backend}",
            "x".repeat(32)
        )
    };
    let errors = Config::parse(&text("url = \"https://x\""), |_| None).unwrap_err();
    assert_eq!(errors, ["tenants.acme.backends.b.kind: missing"]);
    let errors = Config::parse(&text("kind = 3"), |_| None).unwrap_err();
    assert_eq!(errors, ["tenants.acme.backends.b: kind: 3 is not a string"]);
    let errors = Config::parse(&text("kind = \"x\""), |_| None).unwrap_err();
    let kinds: Vec<&str> = crate::registry::adapters().iter().map(|f| f.kind()).collect();
    assert_eq!(
        errors,
        [format!(
            "tenants.acme.backends.b: unknown kind \"x\" (expected one of {})",
            kinds.join(", ")
        )]
    );
}

#[test]
fn every_factorys_secrets_can_come_from_files() {
    let secrets = secret_settings();
    for factory in crate::registry::adapters() {
        for secret in factory.secret_fields() {
            assert!(secrets.contains(secret), "{}: {secret}", factory.kind());
        }
    }
    for own in ["hs256_secret", "secret_access_key", "url"] {
        assert!(secrets.contains(&own), "{own}");
    }
}

/// The configurations shipped in `deploy/` stay valid.
mod shipped {
    use super::Config;

    #[test]
    fn every_shipped_configuration_is_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let secrets = tempfile::tempdir().unwrap();
        for name in ["acme-cb-token", "hs256", "edrgate/acme-cb-token", "edrgate/acme-cb-ca.pem"] {
            let path = secrets.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "0123456789abcdef0123456789abcdef\n").unwrap();
        }
        let env = |name: &str| {
            Some(match name {
                n if n.contains("PROXIES") => "10.0.0.0/8".to_owned(),
                n if n.contains("DATABASE_URL") => "postgres://u:p@db:5432/edrgate".to_owned(),
                n if n.contains("URL") || n.contains("ISSUER") => "https://idp.example".to_owned(),
                _ => "0123456789abcdef0123456789abcdef".to_owned(),
            })
        };
        let configmap = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
        let embedded: String = configmap
            .split_once("edrgate.toml: |\n")
            .unwrap()
            .1
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let files =
            ["deploy/edrgate.example.toml", "deploy/compose/edrgate.toml", "deploy/container.toml"];
        let mut texts: Vec<(String, String)> = files
            .iter()
            .map(|f| ((*f).to_owned(), std::fs::read_to_string(root.join(f)).unwrap()))
            .collect();
        texts.push(("deploy/k8s/configmap.yaml".to_owned(), embedded));
        for (file, text) in texts {
            let text = text.replace("/run/secrets/", &format!("{}/", secrets.path().display()));
            if let Err(errors) = Config::parse(&text, env) {
                panic!("{file}: {errors:#?}");
            }
        }
    }
}

#[test]
fn syntax_errors_name_the_place_and_key_but_never_the_line() {
    let secret = "s3cr3t-0123456789abcdef0123456789";
    // The closing quote is missing: the parser's own message would quote the whole line.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[auth]\nallow_hs256 = true\nhs256_secret = \"{secret}\n"
    );
    let errors = Config::parse_from(&text, "/etc/edrgate.toml", |_| None).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert!(error.starts_with("/etc/edrgate.toml:6:"), "{error}");
    assert!(error.contains("(key auth.hs256_secret)"), "{error}");
    assert!(!error.contains(secret) && !error.contains("s3cr3t"), "{error}");
    // Without a file name: `line:column`.
    let errors = Config::parse(&text, |_| None).unwrap_err();
    assert!(errors[0].starts_with("6:"), "{errors:?}");
    // A broken multi-line string: its `x=` lines are not keys.
    let text = "[auth]\nhs256_secret = \"\"\"\nQUJDREVGR0hJSktMTU5PUA==\n\\q\n\"\"\"\n";
    let errors = Config::parse(text, |_| None).unwrap_err();
    assert!(!errors[0].contains("QUJD"), "{errors:?}");
}

#[test]
fn type_errors_do_not_quote_the_value() {
    let text = "[auth]\nallow_hs256 = true\nhs256_secret = 987654321987654321\n";
    let errors = Config::parse(text, |_| None).unwrap_err();
    assert!(errors.iter().all(|e| !e.contains("987654321")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("auth: invalid type: integer, expected")),
        "{errors:?}"
    );
    let text = "[auth]\nallow_hs256 = \"secret-looking-text\"\n";
    let errors = Config::parse(text, |_| None).unwrap_err();
    assert!(errors.iter().all(|e| !e.contains("secret-looking")), "{errors:?}");
}

#[test]
fn the_carbonblack_prefix_stays_clear_of_the_api() {
    let env = |name: &str| match name {
        "SECRET" => Some("x".repeat(32)),
        _ => Some("t".into()),
    };
    let with = |server: &str| Config::parse(&format!("[server]\n{server}\n{EXAMPLE}"), env);
    assert_eq!(with("").unwrap().server.carbonblack_prefix, "/cb");
    for ok in [r#"carbonblack_prefix = """#, r#"carbonblack_prefix = "/edr/cb""#] {
        assert!(with(ok).is_ok(), "{ok}");
    }
    for bad in [
        r#"carbonblack_prefix = "cb""#,
        r#"carbonblack_prefix = "/cb/""#,
        r#"carbonblack_prefix = "/v1""#,
        r#"carbonblack_prefix = "/v1/cb""#,
        r#"carbonblack_prefix = "/healthz""#,
        "path_prefix = \"/edrgate\"\ncarbonblack_prefix = \"/edrgate\"",
        "path_prefix = \"/edrgate\"\ncarbonblack_prefix = \"/edrgate/cb\"",
    ] {
        let errors = with(bad).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("server.carbonblack_prefix")),
            "{bad}: {errors:?}"
        );
    }
}
