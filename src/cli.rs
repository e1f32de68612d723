//! The `edrgate` command line: `serve`, `migrate`, `demo`, `sim`, `token`, `check-config`,
//! `openapi`.
//!
//! Besides `backends.rs`, this is the only gateway module that names a vendor crate: `demo`
//! and `sim` run the vendors' simulators.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use rand::Rng as _;

use crate::api::openapi;
use crate::app::{self, App};
use crate::auth::{self, Auth, Permission, Permissions};
use crate::backends::Backends;
use crate::config::Config;

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
    /// Run the gateway and the Carbon Black, Defender and Cybereason simulators in one
    /// process, with a demo tenant that has a backend on each, and print a token and curl
    /// commands to try it.
    Demo(DemoArgs),
    /// Run a vendor simulator.
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
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the demo keeps its database and files (default: a temporary directory removed
    /// at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Endpoints of the simulated Carbon Black server (`WIN-0001`, `WIN-0002`, …).
    #[arg(long, default_value_t = 5)]
    pub sensors: usize,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Carbon Black EDR (Live Response API).
    Carbonblack(CarbonBlackSimArgs),
    /// Cybereason (console REST API: login, remediation, isolation, file fetch, IR tools).
    Cybereason(CybereasonSimArgs),
    /// Microsoft Defender for Endpoint (token endpoint, machines, live response, library,
    /// result links, isolation).
    Defender(DefenderSimArgs),
}

#[derive(Debug, Args)]
pub struct DefenderSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8445")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a self-signed certificate for `localhost` and `127.0.0.1`.
    #[arg(long)]
    pub tls: bool,
    /// Write the certificate (PEM) here, for clients to trust; printed when omitted.
    #[arg(long, requires = "tls")]
    pub cert_out: Option<PathBuf>,
    /// Number of machines, hostnames `mde-0001`, `mde-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub machines: usize,
    /// Machine numbers that are offline (repeatable): their actions stay `Pending`.
    #[arg(long)]
    pub offline: Vec<usize>,
    /// Time from a machine action's creation to `InProgress`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub pickup_delay_ms: u64,
    /// Time each live-response command takes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub command_latency_ms: u64,
    /// `runliveresponse` calls allowed per window (Defender: 10 per minute).
    #[arg(long, default_value_t = 10)]
    pub live_response_calls: usize,
    /// The window of `--live-response-calls`, in seconds.
    #[arg(long, default_value_t = 60)]
    pub live_response_window_secs: u64,
    /// Pending + running live-response actions allowed (Defender: 25).
    #[arg(long, default_value_t = 25)]
    pub session_cap: usize,
    /// `expires_in` of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_lifetime_secs: u64,
    /// Lifetime of result download links, in seconds (Defender: 30 minutes).
    #[arg(long, default_value_t = 1800)]
    pub link_lifetime_secs: u64,
}

#[derive(Debug, Args)]
pub struct CybereasonSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a self-signed certificate for `localhost` and `127.0.0.1`.
    #[arg(long)]
    pub tls: bool,
    /// Write the certificate (PEM) here, for clients to trust; printed when omitted.
    #[arg(long, requires = "tls")]
    pub cert_out: Option<PathBuf>,
    /// Number of machines, hostnames `CR-WS-0001`, `CR-WS-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub machines: usize,
    /// Time a remediation takes to end, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub remediation_delay_ms: u64,
    /// Time between IR tool status changes on a sensor, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub ir_step_ms: u64,
    /// Hostname where IR tools fail (repeatable).
    #[arg(long)]
    pub ir_fail_host: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CarbonBlackSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a self-signed certificate for `localhost` and `127.0.0.1`.
    #[arg(long)]
    pub tls: bool,
    /// Write the certificate (PEM) here, for clients to trust; printed when omitted.
    #[arg(long, requires = "tls")]
    pub cert_out: Option<PathBuf>,
    /// API token clients send in `X-Auth-Token`.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// Number of sensors, ids 1..=N, hostnames `WIN-0001`, `WIN-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub sensors: usize,
    /// Concurrent live-response sessions the server allows.
    #[arg(long, default_value_t = 10)]
    pub slots: usize,
    /// Time from a session holding a slot to `active`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub checkin_delay_ms: u64,
    /// Time a command takes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub command_latency_ms: u64,
    /// Size of each endpoint's `C:\evidence\big.bin`, in bytes (generated, not stored).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub file_size_bytes: u64,
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
    /// A permission to grant (repeatable): read, write, execute, contain, files, admin.
    /// Default: all of them.
    #[arg(long = "permission", value_parser = parse_permission)]
    pub permissions: Vec<Permission>,
}

fn parse_permission(name: &str) -> Result<Permission, String> {
    Permission::ALL.into_iter().find(|p| p.as_str() == name).ok_or_else(|| {
        let names: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
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
        Command::Demo(args) => demo(args).await,
        Command::Sim(SimCommand::Carbonblack(args)) => sim_carbonblack(args).await,
        Command::Sim(SimCommand::Cybereason(args)) => sim_cybereason(args).await,
        Command::Sim(SimCommand::Defender(args)) => sim_defender(args).await,
        Command::Token(args) => token(args),
        Command::Migrate { config } => migrate(&config).await,
        Command::CheckConfig { file, connect } => Ok(check_config(&file, connect).await),
        Command::Healthcheck { url } => Ok(healthcheck(&url).await),
        Command::Openapi { write, root } => openapi_command(write, &root),
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
    app::serve(listener, app, app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

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

    // The simulator over HTTPS, as a real server would be; the gateway trusts its certificate.
    let sim = Simulator::new(SimConfig { sensors: args.sensors, ..SimConfig::default() });
    let sim_addr = sim.spawn_tls().await.context("starting the Carbon Black simulator")?;
    let ca_file = dir.join("cb-sim-ca.pem");
    std::fs::write(&ca_file, sim.cert_pem()?)
        .with_context(|| format!("writing {}", ca_file.display()))?;

    let secret = hex::encode(rand::rng().random::<[u8; 32]>());
    let text = format!(
        "[server]\nlisten = {listen}\n\
         [store]\npath = {db}\n\
         [files]\ndir = {files}\n\
         [auth]\nallow_hs256 = true\nhs256_secret = {secret}\n\
         [tenants.demo.backends.cb-lab]\nkind = \"carbonblack\"\nurl = {url}\ntoken = {token}\nca_file = {ca}\n",
        listen = toml_string(&args.listen.to_string()),
        db = toml_string(&dir.join("edrgate.db").display().to_string()),
        files = toml_string(&dir.join("files").display().to_string()),
        secret = toml_string(&secret),
        url = toml_string(&format!("https://127.0.0.1:{}", sim_addr.port())),
        token = toml_string(DEFAULT_TOKEN),
        ca = toml_string(&ca_file.display().to_string()),
    );
    let (cr_toml, cr_banner) = demo_cybereason(&dir).await?;
    let (mde_toml, mde_banner) = demo_defender(&dir).await?;
    let text = text + &cr_toml + &mde_toml;
    let config = Config::parse(&text, |_| None)
        .map_err(|errors| anyhow::anyhow!("demo configuration: {}", errors.join("; ")))?;
    let token = auth::mint_for(&config.auth, "demo", "demo-user", Duration::from_secs(24 * 3600))?;
    let app = App::build(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("{}", demo_banner(&base, &token, &dir, sim_addr, args.sensors));
    println!("{cr_banner}");
    println!("{mde_banner}");
    app::serve(listener, app, app::shutdown_signal()).await?;
    if remove_after && let Err(error) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(%error, dir = %dir.display(), "could not remove the demo directory");
    }
    Ok(ExitCode::SUCCESS)
}

fn demo_banner(base: &str, token: &str, dir: &Path, sim: SocketAddr, sensors: usize) -> String {
    let last = format!("WIN-{sensors:04}");
    format!(
        r#"
edrgate demo on {base}
  tenant "demo", backend "cb-lab": Carbon Black simulator at https://{sim} ({sensors} endpoints, WIN-0001 … {last})
  data in {dir}
  stop with ctrl-c

Paste into a shell:

export EDRGATE_TOKEN='{token}'

# 1. the devices the demo tenant can act on
curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" '{base}/v1/devices'

# 2. list the processes of WIN-0001 (answers 202 with the stored action; its id goes to ACTION_ID)
ACTION_ID=$(curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" -H 'Content-Type: application/json' \
  -d '{{"targets": [{{"hostname": "WIN-0001"}}], "commands": [{{"type": "process_list"}}]}}' \
  '{base}/v1/actions' | grep -o '"id":"[^"]*"' | head -n 1 | cut -d '"' -f 4); echo "$ACTION_ID"

# 3. the action, waiting up to 30 s for its next change (repeat until "status":"succeeded")
curl -s -H "Authorization: Bearer $EDRGATE_TOKEN" "{base}/v1/actions/$ACTION_ID?wait=30"

API description: {base}/openapi.json
"#,
        dir = dir.display(),
    )
}

/// The demo's Cybereason simulator (HTTPS, `CR-WS-0001` … `CR-WS-0005`) as backend `cr-lab`
/// of tenant `demo`: its config table and a banner line.
async fn demo_cybereason(dir: &Path) -> anyhow::Result<(String, String)> {
    use edrgate_cybereason::simulator as cr;
    let sim = cr::Simulator::new(cr::SimConfig::default());
    let addr = sim.spawn_tls().await.context("starting the Cybereason simulator")?;
    let ca_file = dir.join("cr-sim-ca.pem");
    std::fs::write(&ca_file, sim.cert_pem()?)
        .with_context(|| format!("writing {}", ca_file.display()))?;
    let table = format!(
        "[tenants.demo.backends.cr-lab]\nkind = \"cybereason\"\nurl = {url}\nusername = {user}\n\
         password = {password}\ntotp_secret = {totp}\nfetch_zip_password = {zip}\nca_file = {ca}\n",
        url = toml_string(&format!("https://127.0.0.1:{}", addr.port())),
        user = toml_string(cr::DEFAULT_TFA_USERNAME),
        password = toml_string(cr::DEFAULT_PASSWORD),
        totp = toml_string(cr::DEFAULT_TOTP_SECRET),
        zip = toml_string(cr::DEFAULT_ZIP_PASSWORD),
        ca = toml_string(&ca_file.display().to_string()),
    );
    let hosts = sim.hostnames();
    let banner = format!(
        "  backend \"cr-lab\": Cybereason simulator at https://{addr} ({} machines, {} … {}); try\n  \
         {{\"targets\": [{{\"hostname\": \"CR-WS-0001\"}}], \"commands\": [{{\"type\": \"get_file\", \"path\": \"C:\\\\evidence\\\\note.txt\"}}]}}",
        hosts.len(),
        hosts.first().map_or("", String::as_str),
        hosts.last().map_or("", String::as_str),
    );
    Ok((table, banner))
}

/// The demo's Defender simulator (HTTPS, `mde-0001` … `mde-0005`) as backend `mde-lab` of
/// tenant `demo`: its config table and a banner line.
async fn demo_defender(dir: &Path) -> anyhow::Result<(String, String)> {
    use edrgate_defender::simulator as mde;
    let config = mde::SimConfig::default();
    let machines = config.machines;
    let sim = mde::Simulator::new(config);
    let addr = sim.spawn_tls().await.context("starting the Defender simulator")?;
    let ca_file = dir.join("mde-sim-ca.pem");
    std::fs::write(&ca_file, sim.cert_pem()?)
        .with_context(|| format!("writing {}", ca_file.display()))?;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let table = format!(
        "[tenants.demo.backends.mde-lab]\nkind = \"defender\"\napi_url = {url}\n\
         token_url = {token_url}\ntenant_id = {tenant}\nclient_id = {client}\n\
         client_secret = {secret}\nca_file = {ca}\n",
        url = toml_string(&base),
        token_url = toml_string(&format!("{base}/{}/oauth2/v2.0/token", mde::DEFAULT_TENANT)),
        tenant = toml_string(mde::DEFAULT_TENANT),
        client = toml_string(mde::DEFAULT_CLIENT_ID),
        secret = toml_string(mde::DEFAULT_CLIENT_SECRET),
        ca = toml_string(&ca_file.display().to_string()),
    );
    let banner = format!(
        "  backend \"mde-lab\": Defender simulator at https://{addr} ({machines} machines, mde-0001 … mde-{machines:04}); try\n  \
         {{\"targets\": [{{\"hostname\": \"mde-0001\"}}], \"commands\": [{{\"type\": \"process_list\"}}, {{\"type\": \"get_file\", \"path\": \"C:\\\\evidence\\\\note.txt\"}}]}}"
    );
    Ok((table, banner))
}

async fn sim_defender(args: DefenderSimArgs) -> anyhow::Result<ExitCode> {
    use edrgate_defender::simulator as mde;
    let sim = mde::Simulator::new(mde::SimConfig {
        machines: args.machines,
        offline_machines: args.offline.clone(),
        pickup_delay: Duration::from_millis(args.pickup_delay_ms),
        command_latency: Duration::from_millis(args.command_latency_ms),
        live_response_calls: args.live_response_calls,
        live_response_window: Duration::from_secs(args.live_response_window_secs),
        session_cap: args.session_cap,
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        link_lifetime: Duration::from_secs(args.link_lifetime_secs),
        ..mde::SimConfig::default()
    });
    let scheme = if args.tls { "https" } else { "http" };
    println!(
        "Defender simulator on {scheme}://{}\n  token endpoint {scheme}://{}/{}/oauth2/v2.0/token\n  client_id {} client_secret {}\n  {} machines (mde-0001 …), library script collect.ps1",
        args.listen,
        args.listen,
        mde::DEFAULT_TENANT,
        mde::DEFAULT_CLIENT_ID,
        mde::DEFAULT_CLIENT_SECRET,
        args.machines,
    );
    if args.tls {
        let pem = sim.cert_pem()?;
        match &args.cert_out {
            Some(path) => {
                std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?
            }
            None => println!("{pem}"),
        }
        let listener = std::net::TcpListener::bind(args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        sim.serve_tls_on(listener).await?;
    } else {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        sim.serve(listener).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn sim_cybereason(args: CybereasonSimArgs) -> anyhow::Result<ExitCode> {
    use edrgate_cybereason::simulator as cr;
    let sim = cr::Simulator::new(cr::SimConfig {
        machines: args.machines,
        remediation_delay: Duration::from_millis(args.remediation_delay_ms),
        ir_step: Duration::from_millis(args.ir_step_ms),
        ir_fail_hosts: args.ir_fail_host.clone(),
        ..cr::SimConfig::default()
    });
    let scheme = if args.tls { "https" } else { "http" };
    let banner = |addr: SocketAddr| {
        println!(
            "Cybereason simulator on {scheme}://{addr}\n  users: {} (no 2FA) and {} (TOTP secret {}), password {}\n  fetch zip password: {}\n  {} machines (CR-WS-0001 …)",
            cr::DEFAULT_USERNAME,
            cr::DEFAULT_TFA_USERNAME,
            cr::DEFAULT_TOTP_SECRET,
            cr::DEFAULT_PASSWORD,
            cr::DEFAULT_ZIP_PASSWORD,
            args.machines,
        );
    };
    let served = if args.tls {
        let listener = std::net::TcpListener::bind(args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        let pem = sim.cert_pem()?;
        match &args.cert_out {
            Some(path) => {
                std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?
            }
            None => println!("{pem}"),
        }
        banner(listener.local_addr()?);
        tokio::spawn(sim.serve_tls_on(listener))
    } else {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        banner(listener.local_addr()?);
        tokio::spawn(sim.serve(listener))
    };
    tokio::select! {
        result = served => result.context("simulator task")?.context("simulator")?,
        () = app::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn sim_carbonblack(args: CarbonBlackSimArgs) -> anyhow::Result<ExitCode> {
    let sim = Simulator::new(SimConfig {
        token: args.token.clone(),
        sensors: args.sensors,
        slot_limit: args.slots,
        checkin_delay: Duration::from_millis(args.checkin_delay_ms),
        command_latency: Duration::from_millis(args.command_latency_ms),
        file_size: args.file_size_bytes,
        ..SimConfig::default()
    });
    let scheme = if args.tls { "https" } else { "http" };
    let served = if args.tls {
        let listener = std::net::TcpListener::bind(args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let pem = sim.cert_pem()?;
        match &args.cert_out {
            Some(path) => {
                std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?
            }
            None => println!("{pem}"),
        }
        print_sim_banner(scheme, addr, &args);
        tokio::spawn(sim.serve_tls_on(listener))
    } else {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        print_sim_banner(scheme, listener.local_addr()?, &args);
        tokio::spawn(sim.serve(listener))
    };
    tokio::select! {
        result = served => result.context("simulator task")?.context("simulator")?,
        () = app::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn print_sim_banner(scheme: &str, addr: SocketAddr, args: &CarbonBlackSimArgs) {
    println!(
        "Carbon Black simulator on {scheme}://{addr}\n  X-Auth-Token: {}\n  {} sensors (ids 1..={}, WIN-0001 …), {} session slots{}",
        args.token,
        args.sensors,
        args.sensors,
        args.slots,
        match &args.cert_out {
            Some(path) => format!("\n  certificate: {}", path.display()),
            None => String::new(),
        }
    );
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

/// Parses, validates, builds the backends and the token validator; with `connect`, also
/// reaches every backend with its credentials.
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
            let checks = built.all().map(|(tenant, name, adapter)| async move {
                // Looking a device up signs in and reaches the API, and changes nothing.
                let found = adapter.find_devices(Some("edrgate-connectivity-check")).await;
                (format!("tenants.{tenant}.backends.{name}"), found)
            });
            for (path, found) in futures::future::join_all(checks).await {
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
        let Command::Sim(SimCommand::Carbonblack(sim)) =
            parse(&["sim", "carbonblack", "--listen", "127.0.0.1:0", "--tls", "--sensors", "9"])
                .unwrap()
                .command
        else {
            panic!("not sim carbonblack");
        };
        assert!(sim.tls);
        assert_eq!((sim.sensors, sim.slots, sim.token.as_str()), (9, 10, DEFAULT_TOKEN));
        let Command::Sim(SimCommand::Cybereason(cr)) =
            parse(&["sim", "cybereason", "--listen", "127.0.0.1:0"]).unwrap().command
        else {
            panic!("not sim cybereason");
        };
        assert_eq!((cr.tls, cr.machines, cr.remediation_delay_ms), (false, 5, 300));
        let Command::Sim(SimCommand::Defender(mde)) =
            parse(&["sim", "defender", "--listen", "127.0.0.1:0", "--offline", "3"])
                .unwrap()
                .command
        else {
            panic!("not sim defender");
        };
        assert_eq!((mde.machines, mde.live_response_calls, mde.session_cap), (5, 10, 25));
        assert_eq!(mde.offline, [3]);
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
        let Command::Demo(demo) = parse(&["demo"]).unwrap().command else { panic!("not demo") };
        assert_eq!(demo.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn toml_strings_are_escaped() {
        let tricky = r#"C:\x "y" 'z'"#;
        let parsed: toml::Table = toml::from_str(&format!("v = {}", toml_string(tricky))).unwrap();
        assert_eq!(parsed["v"].as_str(), Some(tricky));
    }
}
