//! The `edrgate` command line: `serve`, `migrate`, `demo`, `sim`, `token`, `check-config`,
//! `openapi`.
//!
//! `demo` and `sim` run the simulators of `registry::simulators` (cargo feature
//! `simulators`, on by default; production builds have neither): `sim` has one subcommand per
//! simulator, with the arguments that simulator declares, and `demo` gives every simulator a
//! backend of the demo tenant. No vendor is named here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::api::openapi;
use crate::app::{self, App};
use crate::auth::{self, Auth, Permission, Permissions};
use crate::backends::Backends;
use crate::config::Config;
#[cfg(feature = "simulators")]
use crate::registry;

/// One normalized response-action API in front of EDR live-response backends.
#[derive(Debug, Parser)]
#[command(name = "edrgate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "EDRGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run the gateway and every vendor simulator in one process, with a demo tenant that has
    /// a backend on each, and print a token and curl commands to try it.
    #[cfg(feature = "simulators")]
    Demo(DemoArgs),
    /// Run a vendor simulator.
    #[cfg(feature = "simulators")]
    #[command(subcommand)]
    Sim(SimCommand),
    /// Mint a development bearer token (HS256).
    Token(TokenArgs),
    /// Apply the store's database migrations (`serve` also applies them at start), then exit.
    Migrate {
        /// Configuration file (TOML); its `[store]` names the database.
        #[arg(long, short, env = "EDRGATE_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file; prints every problem with its path.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Also sign in to every backend and look a device up, to check credentials and
        /// reachability (network calls; without it nothing leaves the machine).
        #[arg(long)]
        connect: bool,
    },
    /// Probe a running gateway's liveness endpoint; exit 0 when it answers 200 (the
    /// container image's HEALTHCHECK, which has no curl).
    Healthcheck {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Print the OpenAPI document (or rewrite the committed schemas with `--write`).
    Openapi {
        /// Write `schemas/openapi.json` and `schemas/model.schema.json` instead of printing.
        #[arg(long)]
        write: bool,
        /// Repository root the `schemas/` directory is in.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    // The analyst CLI (`devices`, `act`, `action`, `fetch`): a client of a running gateway.
    #[command(flatten)]
    Analyst(crate::analyst::AnalystCommand),
}

#[cfg(feature = "simulators")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Where the demo keeps its database and files (default: a temporary directory removed
    /// at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Endpoints of each simulator (Carbon Black's `WIN-0001`, `WIN-0002`, …).
    #[arg(long, default_value_t = 5)]
    pub sensors: usize,
}

/// `edrgate sim <kind> [ARGS]`: one subcommand per simulator of [`registry::simulators`], with
/// the arguments that simulator declares (`edrgate sim <kind> --help`).
#[cfg(feature = "simulators")]
#[derive(Clone, Debug)]
pub struct SimCommand {
    /// The simulated backend kind (the subcommand's name).
    pub kind: String,
    /// The simulator's arguments, parsed by the command it declared.
    pub matches: clap::ArgMatches,
}

#[cfg(feature = "simulators")]
impl clap::FromArgMatches for SimCommand {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        match matches.subcommand() {
            Some((kind, matches)) => {
                Ok(SimCommand { kind: kind.to_owned(), matches: matches.clone() })
            }
            None => Err(clap::Error::new(clap::error::ErrorKind::MissingSubcommand)),
        }
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(feature = "simulators")]
impl Subcommand for SimCommand {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        command
            .subcommands(registry::simulators().iter().map(|sim| sim.command()))
            .subcommand_required(true)
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        registry::simulators().iter().any(|sim| sim.kind() == name)
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Tenant the token is for.
    #[arg(long)]
    pub tenant: String,
    /// Subject (`sub`): who the caller is.
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Take the secret, tenant claim, issuer and audience from this configuration file.
    #[arg(long, conflicts_with = "secret", required_unless_present = "secret")]
    pub config: Option<PathBuf>,
    /// The HS256 secret (prefer the environment variable: arguments are visible to others).
    #[arg(long, env = "EDRGATE_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A permission to grant (repeatable): read, write, execute, contain, files, admin,
    /// operator. Default: all but operator (the gateway-wide reload is asked for explicitly).
    #[arg(long = "permission", value_parser = parse_permission)]
    pub permissions: Vec<Permission>,
}

fn parse_permission(name: &str) -> Result<Permission, String> {
    Permission::EVERY.into_iter().find(|p| p.as_str() == name).ok_or_else(|| {
        let names: Vec<_> = Permission::EVERY.iter().map(|p| p.as_str()).collect();
        format!("one of {}", names.join(", "))
    })
}

/// Sets up logging: `RUST_LOG` filters (default `info`); `EDRGATE_LOG_FORMAT=json` logs JSON
/// lines. Logs go to stderr, so commands that print (`openapi`, `token`) stay pipeable.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let json = std::env::var("EDRGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // `try_init`: a second initialization (tests) is not an error worth failing for.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        #[cfg(feature = "simulators")]
        Command::Demo(args) => demo(args).await,
        #[cfg(feature = "simulators")]
        Command::Sim(sim) => simulate(sim).await,
        Command::Token(args) => token(args),
        Command::Migrate { config } => migrate(&config).await,
        Command::CheckConfig { file, connect } => Ok(check_config(&file, connect).await),
        Command::Healthcheck { url } => Ok(healthcheck(&url).await),
        Command::Openapi { write, root } => openapi_command(write, &root),
        Command::Analyst(command) => Ok(crate::analyst::run(command).await),
    }
}

async fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            print_problems(path, &errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let listen = config.server.listen;
    let app = App::build(config).await?;
    app.reloader.watch_file(path.to_owned());
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "edrgate listening");
    if let Some(metrics) = app.metrics_addr {
        tracing::info!(address = %metrics, "metrics listening");
    }
    // What `check-config --connect` checks, once, in the background: a backend whose
    // credentials or vendor-side set-up are wrong (a Defender library without the signed
    // helpers, or with another content version of them) is named in the log at start, not at
    // its first action. Serving does not wait for it, and a failure stops nothing.
    let backends = app.engine.backends();
    tokio::spawn(async move {
        for (path, found) in check_backends(&backends).await {
            match found {
                Ok(()) => tracing::info!(backend = %path, "backend checked: reachable, set up"),
                Err(e) => tracing::warn!(
                    backend = %path, code = e.code().as_str(), error = %e.info.message,
                    "backend check failed; its actions will fail the same way until it is fixed"
                ),
            }
        }
    });
    app::serve(listener, app, app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// [`Adapter::check`] of every backend at once (a minute at most each), by configuration path.
async fn check_backends(
    backends: &Backends,
) -> Vec<(String, Result<(), edrgate_adapter::error::AdapterError>)> {
    use edrgate_adapter::error::AdapterError;
    let checks = backends.all().map(|(tenant, name, adapter)| async move {
        let found = tokio::time::timeout(Duration::from_secs(60), adapter.check())
            .await
            .unwrap_or_else(|_| {
                Err(AdapterError::new(
                    edrgate_adapter::model::ErrorCode::VendorUnavailable,
                    "no answer within 60 s",
                ))
            });
        (format!("tenants.{tenant}.backends.{name}"), found)
    });
    futures::future::join_all(checks).await
}

/// `edrgate sim <kind>`: the simulator in the foreground until ctrl-c or SIGTERM.
#[cfg(feature = "simulators")]
async fn simulate(sim: SimCommand) -> anyhow::Result<ExitCode> {
    let plugin = registry::simulators()
        .iter()
        .find(|p| p.kind() == sim.kind)
        .with_context(|| format!("no simulator of kind {:?}", sim.kind))?;
    plugin.serve(&sim.matches, Box::pin(app::shutdown_signal())).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "simulators")]
async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // A fresh temporary directory unless one was given; only a directory made here is removed.
    let (dir, remove_after) = match args.data_dir {
        Some(dir) => (dir, false),
        None => {
            let dir = std::env::temp_dir().join(format!("edrgate-demo-{}", std::process::id()));
            (dir, true)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;

    let (app, token, backends) = demo_app(&dir, args.sensors, args.listen).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("{}", demo_banner(&base, &token, &dir, &backends));
    app::serve(listener, app, app::shutdown_signal()).await?;
    if remove_after && let Err(error) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(%error, dir = %dir.display(), "could not remove the demo directory");
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo gateway: every simulator of the registry started (over HTTPS, as a real server
/// would be; the gateway trusts its certificate), a backend of tenant "demo" on each, and a
/// day-long token for that tenant.
#[cfg(feature = "simulators")]
async fn demo_app(
    dir: &Path,
    sensors: usize,
    listen: std::net::SocketAddr,
) -> anyhow::Result<(App, String, Vec<edrgate_simkit::DemoBackend>)> {
    use rand::Rng as _;
    let mut backends = Vec::new();
    for sim in registry::simulators() {
        backends.push(sim.demo(dir, sensors).await?);
    }
    let secret = hex::encode(rand::rng().random::<[u8; 32]>());
    let mut text = format!(
        "[server]\nlisten = {listen}\n\
         [store]\npath = {db}\n\
         [files]\ndir = {files}\n\
         [auth]\nallow_hs256 = true\nhs256_secret = {secret}\n",
        listen = toml_string(&listen.to_string()),
        db = toml_string(&dir.join("edrgate.db").display().to_string()),
        files = toml_string(&dir.join("files").display().to_string()),
        secret = toml_string(&secret),
    );
    for backend in &backends {
        text +=
            &format!("[tenants.demo.backends.{}]\n{}", toml_string(&backend.name), backend.toml);
    }
    let config = Config::parse(&text, |_| None)
        .map_err(|errors| anyhow::anyhow!("demo configuration: {}", errors.join("; ")))?;
    let token = auth::mint_for(&config.auth, "demo", "demo-user", Duration::from_secs(24 * 3600))?;
    Ok((App::build(config).await?, token, backends))
}

/// One action on every demo backend: the targets of all their examples, a process list and
/// the demo's evidence file (every simulator's Windows endpoints hold `C:\evidence\note.txt`).
#[cfg(feature = "simulators")]
fn every_backend_example(backends: &[edrgate_simkit::DemoBackend]) -> String {
    let targets: Vec<serde_json::Value> = backends
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(&b.example).ok())
        .filter_map(|e| e.get("targets").and_then(|t| t.as_array()).cloned())
        .flatten()
        .collect();
    serde_json::json!({
        "targets": targets,
        "commands": [{"type": "process_list"}, {"type": "get_file", "path": "C:\\evidence\\note.txt"}],
    })
    .to_string()
}

/// What the demo prints: where everything runs, the token, and curl calls that submit one
/// action on every backend and follow it, then each backend's own example.
#[cfg(feature = "simulators")]
fn demo_banner(
    base: &str,
    token: &str,
    dir: &Path,
    backends: &[edrgate_simkit::DemoBackend],
) -> String {
    // Inside single quotes in a shell, only `'` needs care.
    let quoted = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut out = format!("\nedrgate demo on {base}, tenant \"demo\"\n");
    for b in backends {
        out += &format!("  backend {:?}: {}\n", b.name, b.summary);
    }
    out += &format!("  data in {}\n  stop with ctrl-c\n", dir.display());
    out += &format!(
        r#"
Paste into a shell:

export EDRGATE_TOKEN='{token}'

# 1. the devices the demo tenant can act on
curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" '{base}/v1/devices'
"#
    );
    if !backends.is_empty() {
        out += &format!(
            r#"
# 2. one action on every backend: a process list and a file (answers 202 with the stored
#    action; its id goes to ACTION_ID)
ACTION_ID=$(curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" -H 'Content-Type: application/json' \
  -d {example} \
  '{base}/v1/actions' | grep -o '"id":"[^"]*"' | head -n 1 | cut -d '"' -f 4); echo "$ACTION_ID"

# 3. the action, waiting up to 30 s for its next change (repeat until "status":"succeeded")
curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" "{base}/v1/actions/$ACTION_ID?wait=30"
"#,
            example = quoted(&every_backend_example(backends)),
        );
        out +=
            "\n# 4. each backend on its own, the same way: submit one of these bodies as in 2.\n";
        for b in backends {
            out += &format!("#   {}: {}\n", b.name, b.example);
        }
    }
    out += &format!("\nAPI description: {base}/openapi.json\n");
    out
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let ttl = Duration::from_secs(args.ttl);
    let permissions: Permissions = if args.permissions.is_empty() {
        Permissions::all()
    } else {
        args.permissions.iter().copied().collect()
    };
    let token = match (&args.config, &args.secret) {
        (Some(path), _) => {
            let config = match Config::load(path) {
                Ok(config) => config,
                Err(errors) => {
                    print_problems(path, &errors);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let spec =
                auth::TokenSpec::for_config(&config.auth)?.only(permissions, &config.auth.scopes);
            auth::mint_with(&spec, &args.tenant, &args.sub, ttl)?
        }
        (None, Some(secret)) => {
            if secret.len() < 32 {
                bail!("the secret must be at least 32 bytes, as auth.hs256_secret");
            }
            let spec = auth::TokenSpec::dev(secret.as_bytes())
                .only(permissions, &crate::config::ScopeNames::default());
            auth::mint_with(&spec, &args.tenant, &args.sub, ttl)?
        }
        (None, None) => bail!("give --config FILE or --secret (or EDRGATE_JWT_SECRET)"),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

async fn migrate(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            print_problems(path, &errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = app::open_store(&config.store).await?;
    let applied = store.migrate().await?;
    let last = applied.last().map_or_else(|| "none".to_owned(), i64::to_string);
    println!("{:?} store: {} migrations applied (latest {last})", store.dialect(), applied.len());
    Ok(ExitCode::SUCCESS)
}

/// Parses, validates, builds the backends and the token validator; with `connect`, also
/// reaches every backend with its credentials.
async fn check_config(path: &Path, connect: bool) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            print_problems(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    match Auth::new(&config.auth) {
        Err(error) => problems.push(format!("auth: {error}")),
        // The JWKS endpoints answer with usable signing keys.
        Ok(auth) if connect => problems.extend(auth.prefetch().await),
        Ok(_) => {}
    }
    let tenants = config.tenants.len();
    let backends: usize = config.tenants.values().map(|t| t.backends.len()).sum();
    match Backends::from_config(&mut config, None) {
        Err(errors) => problems.extend(errors),
        Ok(built) if connect => {
            for (path, found) in check_backends(&built).await {
                match found {
                    Ok(_) => println!("{path}: reachable, credentials accepted"),
                    Err(e) => {
                        problems.push(format!("{path}: {}: {}", e.code().as_str(), e.info.message))
                    }
                }
            }
        }
        Ok(_) => {}
    }
    if !problems.is_empty() {
        print_problems(path, &problems);
        return ExitCode::FAILURE;
    }
    println!("{}: ok ({tenants} tenants, {backends} backends)", path.display());
    ExitCode::SUCCESS
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = match edrgate_adapter::http::client(&Default::default(), Duration::from_secs(3)) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("healthcheck: {error}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).timeout(Duration::from_secs(3)).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn openapi_command(write: bool, root: &Path) -> anyhow::Result<ExitCode> {
    if write {
        for path in openapi::write_all(root).context("writing the schemas")? {
            println!("wrote {}", path.display());
        }
    } else {
        print!("{}", openapi::openapi_json());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_problems(path: &Path, problems: &[String]) {
    eprintln!("{}: {} problem(s)", path.display(), problems.len());
    for problem in problems {
        eprintln!("  {problem}");
    }
}

/// A TOML basic string (quoted and escaped).
#[cfg(feature = "simulators")]
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("edrgate").chain(args.iter().copied()))
        };
        assert!(matches!(
            parse(&["serve", "--config", "x.toml"]).unwrap().command,
            Command::Serve { .. }
        ));
        assert!(matches!(
            parse(&["migrate", "--config", "x.toml"]).unwrap().command,
            Command::Migrate { .. }
        ));
        assert!(matches!(
            parse(&["check-config", "x.toml"]).unwrap().command,
            Command::CheckConfig { .. }
        ));
        assert!(matches!(
            parse(&["openapi", "--write"]).unwrap().command,
            Command::Openapi { write: true, .. }
        ));
        let Command::Token(t) =
            parse(&["token", "--tenant", "acme", "--secret", "s"]).unwrap().command
        else {
            panic!("not token");
        };
        assert_eq!((t.sub.as_str(), t.ttl), ("dev", 3600));
        assert!(t.permissions.is_empty(), "all permissions by default");
        let args = ["token", "--tenant", "a", "--secret", "s", "--permission", "read"];
        let Command::Token(t) =
            parse(&[&args[..], &["--permission", "contain"]].concat()).unwrap().command
        else {
            panic!("not token");
        };
        assert_eq!(t.permissions, [Permission::Read, Permission::Contain]);
        assert!(parse(&[&args[..6], &["root"]].concat()).is_err());
        assert!(parse(&["token", "--tenant", "acme", "--secret", "s", "--config", "c"]).is_err());
    }

    /// `sim` and `demo` exist only with the simulators, and `sim` has the arguments each
    /// simulator declares.
    #[cfg(feature = "simulators")]
    #[test]
    fn simulator_subcommands_parse() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("edrgate").chain(args.iter().copied()))
        };
        let sim = |args: &[&str]| match parse(args).unwrap().command {
            Command::Sim(sim) => sim,
            other => panic!("not sim: {other:?}"),
        };
        let cb = sim(&["sim", "carbonblack", "--listen", "127.0.0.1:0", "--tls", "--sensors", "9"]);
        assert_eq!(cb.kind, "carbonblack");
        let m = &cb.matches;
        assert!(m.get_flag("tls"));
        assert_eq!(
            (m.get_one::<usize>("sensors"), m.get_one::<usize>("slots")),
            (Some(&9), Some(&10))
        );
        assert!(m.get_one::<String>("token").is_some_and(|t| !t.is_empty()), "a default token");
        let cr = sim(&["sim", "cybereason", "--listen", "127.0.0.1:0"]);
        assert_eq!(cr.kind, "cybereason");
        let m = &cr.matches;
        assert!(!m.get_flag("tls"));
        assert_eq!(
            (m.get_one::<usize>("machines"), m.get_one::<u64>("remediation_delay_ms")),
            (Some(&5), Some(&300))
        );
        let mde = sim(&["sim", "defender", "--listen", "127.0.0.1:0", "--offline", "3"]);
        assert_eq!(mde.kind, "defender");
        let m = &mde.matches;
        assert_eq!(
            [
                m.get_one::<usize>("machines"),
                m.get_one("live_response_calls"),
                m.get_one("session_cap")
            ],
            [Some(&5), Some(&10), Some(&25)]
        );
        assert_eq!(m.get_many::<usize>("offline").unwrap().collect::<Vec<_>>(), [&3]);
        // A simulator's own arguments are checked by its command.
        assert!(parse(&["sim", "carbonblack", "--machines", "3"]).is_err());
        assert!(parse(&["sim", "nonesuch"]).is_err());
        assert!(parse(&["sim"]).is_err());
        let Command::Demo(demo) = parse(&["demo"]).unwrap().command else { panic!("not demo") };
        assert_eq!((demo.listen.to_string().as_str(), demo.sensors), ("127.0.0.1:8080", 5));
    }

    #[cfg(feature = "simulators")]
    #[test]
    fn the_demo_banner_shows_every_backend_and_a_pasteable_first_action() {
        let backend = |name: &str, example: &str| edrgate_simkit::DemoBackend {
            name: name.into(),
            toml: String::new(),
            summary: format!("{name} simulator"),
            example: example.into(),
        };
        let backends = [
            backend("a-lab", r#"{"targets": [{"hostname": "it's"}]}"#),
            backend("b-lab", r#"{"targets": [{"hostname": "B-1"}]}"#),
        ];
        let banner = demo_banner("http://127.0.0.1:1", "TOKEN", Path::new("/d"), &backends);
        assert!(banner.contains("backend \"a-lab\": a-lab simulator"), "{banner}");
        assert!(banner.contains("backend \"b-lab\": b-lab simulator"), "{banner}");
        assert!(
            banner.contains(r#""targets":[{"hostname":"it'\''s"},{"hostname":"B-1"}]"#),
            "{banner}"
        );
        assert!(banner.contains(r#"#   b-lab: {"targets": [{"hostname": "B-1"}]}"#), "{banner}");
        assert!(banner.contains("export EDRGATE_TOKEN='TOKEN'"), "{banner}");
    }

    /// The demo as the README runs it: every simulator, a backend on each, and the printed
    /// action on all of them (a process list and a file) succeeds.
    #[cfg(feature = "simulators")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_action_succeeds_on_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let listen: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (app, token, backends) = demo_app(dir.path(), 2, listen).await.unwrap();
        assert_eq!(backends.len(), registry::simulators().len());
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let engine = std::sync::Arc::clone(&app.engine);
        tokio::spawn(app::serve(listener, app, std::future::pending()));
        let http = reqwest::Client::builder().build().unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&every_backend_example(&backends)).unwrap();
        let action: serde_json::Value = http
            .post(format!("{base}/v1/actions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = action["id"].as_str().unwrap_or_else(|| panic!("{action}")).to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let done = loop {
            let a: serde_json::Value = http
                .get(format!("{base}/v1/actions/{id}?wait=10"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap_or("")) {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "{a:#}");
        };
        assert_eq!(done["status"], "succeeded", "{done:#}");
        let runs = done["runs"].as_array().unwrap();
        assert_eq!(runs.len(), backends.len(), "{done:#}");
        engine.kill();
    }

    #[cfg(feature = "simulators")]
    #[test]
    fn toml_strings_are_escaped() {
        let tricky = r#"C:\x "y" 'z'"#;
        let parsed: toml::Table = toml::from_str(&format!("v = {}", toml_string(tricky))).unwrap();
        assert_eq!(parsed["v"].as_str(), Some(tricky));
    }
}
