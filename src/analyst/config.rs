//! Where the CLI's gateway and token come from: the environment (`EDRGATE_URL`,
//! `EDRGATE_TOKEN`) over a profile of the CLI configuration file.
//!
//! ```toml
//! # ~/.config/edrgate/cli.toml
//! [profiles.default]
//! url = "https://edrgate.example.com"
//! token_file = "~/.config/edrgate/token"   # or token = "…" (then keep the file private)
//! ca_file = "/etc/ssl/certs/private-ca.pem" # a private CA the gateway's certificate is from
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use super::Failure;

/// How to reach the gateway; every analyst command takes these.
#[derive(Debug, Args)]
pub struct Connection {
    /// The gateway's base URL, e.g. `https://edrgate.example.com` (over the profile's `url`).
    #[arg(long, env = "EDRGATE_URL", global = true)]
    pub url: Option<String>,
    /// The profile of the CLI configuration file to use (default: `default`).
    #[arg(long, env = "EDRGATE_PROFILE", global = true)]
    pub profile: Option<String>,
    /// The CLI configuration file (default: `$XDG_CONFIG_HOME/edrgate/cli.toml`, else
    /// `~/.config/edrgate/cli.toml`). The token comes from `EDRGATE_TOKEN` or from it, never
    /// from an argument (arguments are visible to other users).
    #[arg(long, env = "EDRGATE_CLI_CONFIG", global = true, value_name = "FILE")]
    pub cli_config: Option<PathBuf>,
    /// Allow plain `http://` to a host other than loopback. Refused by default: the bearer
    /// token would cross the network readable by anyone on the path.
    #[arg(long, global = true)]
    pub insecure_http: bool,
}

/// A profile of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    url: Option<String>,
    token: Option<SecretString>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, Profile>,
}

/// What the client connects with.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The base URL, without a trailing `/`.
    pub base: String,
    pub token: SecretString,
    /// PEM of a private CA.
    pub ca_pem: Option<String>,
}

impl Connection {
    /// The connection from the process environment and the configuration file.
    pub(crate) fn resolve(&self) -> Result<Resolved, Failure> {
        self.resolve_with(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The same, with `env` for the environment (tests).
    pub(crate) fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Resolved, Failure> {
        let default_path = || {
            let base = env("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
            Some(base.join("edrgate").join("cli.toml"))
        };
        // A file named explicitly must exist; the default one is optional.
        let (path, required) = match &self.cli_config {
            Some(path) => (Some(path.clone()), true),
            None => (default_path(), false),
        };
        let file = match &path {
            Some(path) => read_file(path, required)?,
            None => File::default(),
        };
        let name = self.profile.as_deref().unwrap_or("default");
        let mut profiles = file.profiles;
        let profile = match profiles.remove(name) {
            Some(profile) => profile,
            None if self.profile.is_none() => Profile::default(),
            None => {
                let place = path
                    .as_ref()
                    .map_or("no configuration file".into(), |p| format!("{}", p.display()));
                return Err(Failure::Usage(format!("no profile {name:?} in {place}")));
            }
        };
        let dir = path.as_deref().and_then(Path::parent).unwrap_or(Path::new("."));
        let home = env("HOME");
        let in_dir = |p: &Path| expand(p, dir, home.as_deref());

        let url = self.url.clone().or(profile.url).ok_or_else(|| {
            Failure::Usage("no gateway URL: set EDRGATE_URL, --url or a profile's url".into())
        })?;
        let base = check_url(&url, self.insecure_http)?;
        let token = match (env("EDRGATE_TOKEN"), profile.token, profile.token_file) {
            (Some(token), _, _) => SecretString::from(token.trim().to_owned()),
            (None, Some(token), _) => {
                path.as_deref().map(warn_if_shared);
                token
            }
            (None, None, Some(file)) => {
                let file = in_dir(&file);
                warn_if_shared(&file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    Failure::Usage(format!("cannot read token_file {}: {e}", file.display()))
                })?;
                if text.trim().is_empty() {
                    return Err(Failure::Usage(format!("token_file {} is empty", file.display())));
                }
                SecretString::from(text.trim().to_owned())
            }
            (None, None, None) => {
                return Err(Failure::Usage(
                    "no token: set EDRGATE_TOKEN, or a profile's token_file or token".into(),
                ));
            }
        };
        let ca_pem = match profile.ca_file {
            None => None,
            Some(file) => {
                let file = in_dir(&file);
                Some(std::fs::read_to_string(&file).map_err(|e| {
                    Failure::Usage(format!("cannot read ca_file {}: {e}", file.display()))
                })?)
            }
        };
        Ok(Resolved { base, token, ca_pem })
    }
}

/// The file at `path`; when it is not `required`, an absent file is an empty one.
fn read_file(path: &Path, required: bool) -> Result<File, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(File::default());
        }
        Err(e) => return Err(Failure::Usage(format!("cannot read {}: {e}", path.display()))),
    };
    // toml's message quotes the offending line, which may be a token: only its position is
    // shown.
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
        Failure::Usage(format!("{}: invalid CLI configuration{at}", path.display()))
    })
}

/// A token other users of the machine can read is one they can use: say so, as ssh does of
/// keys, but go on.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            eprintln!(
                "warning: {} holds a token and other users can read it (chmod 600 it)",
                path.display()
            );
        }
    }
}

/// `~/x` under the home directory, a relative path under the configuration file's directory.
fn expand(path: &Path, dir: &Path, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => Path::new(home).join(rest),
        _ => dir.join(path),
    }
}

/// The base URL, checked: `https`, or `http` to loopback only unless `insecure_http`.
fn check_url(text: &str, insecure_http: bool) -> Result<String, Failure> {
    let url = Url::parse(text).map_err(|e| Failure::Usage(format!("gateway URL {text:?}: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Failure::Usage("the gateway URL must not carry credentials".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Failure::Usage("the gateway URL must not have a query or fragment".into()));
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback || insecure_http => {}
        "http" => {
            return Err(Failure::Usage(format!(
                "refusing plain http to {host}: the bearer token would cross the network in clear \
                 text; use https, or --insecure-http on a network you trust"
            )));
        }
        other => return Err(Failure::Usage(format!("gateway URL: unsupported scheme {other:?}"))),
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn conn(url: Option<&str>, profile: Option<&str>, file: Option<&Path>) -> Connection {
        Connection {
            url: url.map(str::to_owned),
            profile: profile.map(str::to_owned),
            cli_config: file.map(Path::to_owned),
            insecure_http: false,
        }
    }

    #[test]
    fn plain_http_goes_to_loopback_only() {
        for ok in
            ["https://gw.example", "http://127.0.0.1:8080", "http://localhost/", "http://[::1]:1"]
        {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        let refused = check_url("http://gw.example:8080", false).unwrap_err().to_string();
        assert!(refused.contains("--insecure-http") && refused.contains("gw.example"), "{refused}");
        assert_eq!(check_url("http://gw.example/x/", true).unwrap(), "http://gw.example/x");
        assert!(check_url("https://u:p@gw.example", false).is_err());
        assert!(check_url("ftp://gw.example", false).is_err());
    }

    #[test]
    fn the_environment_wins_over_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cli.toml");
        std::fs::write(dir.path().join("lab.token"), "from-file\n").unwrap();
        std::fs::write(
            &file,
            "[profiles.default]\nurl = \"https://default.example\"\ntoken = \"inline\"\n\
             [profiles.lab]\nurl = \"https://lab.example/\"\ntoken_file = \"lab.token\"\n",
        )
        .unwrap();
        let none = |_: &str| None;
        let lab = conn(None, Some("lab"), Some(&file)).resolve_with(none).unwrap();
        assert_eq!(
            (lab.base.as_str(), lab.token.expose_secret()),
            ("https://lab.example", "from-file")
        );
        let default = conn(None, None, Some(&file)).resolve_with(none).unwrap();
        assert_eq!(default.token.expose_secret(), "inline");
        let env = |name: &str| (name == "EDRGATE_TOKEN").then(|| "from-env".to_owned());
        let over = conn(Some("https://flag.example"), Some("lab"), Some(&file)).resolve_with(env);
        let over = over.unwrap();
        assert_eq!(
            (over.base.as_str(), over.token.expose_secret()),
            ("https://flag.example", "from-env")
        );
        let missing = conn(None, Some("prod"), Some(&file)).resolve_with(none).unwrap_err();
        assert!(missing.to_string().contains("no profile \"prod\""), "{missing}");
    }

    #[test]
    fn without_a_file_the_environment_is_enough_and_a_token_is_required() {
        let home = tempfile::tempdir().unwrap();
        let home_env = |name: &str| (name == "HOME").then(|| home.path().display().to_string());
        let no_token = conn(Some("https://gw.example"), None, None).resolve_with(home_env);
        assert!(no_token.unwrap_err().to_string().contains("no token"));
        let env = |name: &str| match name {
            "EDRGATE_TOKEN" => Some("t".to_owned()),
            _ => home_env(name),
        };
        assert!(conn(Some("https://gw.example"), None, None).resolve_with(env).is_ok());
    }

    #[test]
    fn a_bad_file_never_shows_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cli.toml");
        std::fs::write(&file, "[profiles.default]\ntoken = \"s3cret\" junk\n").unwrap();
        let error = conn(None, None, Some(&file)).resolve_with(|_| None).unwrap_err();
        assert!(!format!("{error} {error:?}").contains("s3cret"), "{error}");
    }
}
