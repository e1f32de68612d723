//! The hook between a vendor simulator and the gateway's command line: `edrgate sim <kind>`
//! serves one simulator in the foreground, `edrgate demo` starts every simulator in the
//! background and gives each a backend of the demo tenant.
//!
//! A simulator crate implements [`VendorSim`] (typed: its clap arguments, its serve loop, its
//! demo backend); the gateway's registry lists [`plugin`]s of them as [`SimulatorPlugin`]
//! trait objects, so the CLI never names a vendor.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::Context as _;
use clap::{ArgMatches, Args, FromArgMatches};

use crate::serve::Sim;

/// Resolves when the process should stop (ctrl-c, SIGTERM).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The serving flags every `edrgate sim <kind>` has (flatten into the vendor's arguments).
#[derive(Clone, Debug, Default, Args)]
pub struct ServeArgs {
    /// Serve HTTPS with a self-signed certificate for `localhost` and `127.0.0.1`.
    #[arg(long)]
    pub tls: bool,
    /// Write the certificate (PEM) here, for clients to trust; printed when omitted.
    #[arg(long, requires = "tls")]
    pub cert_out: Option<PathBuf>,
}

impl ServeArgs {
    /// Binds `listen`, prints `banner(scheme, address)` (and the certificate, unless written
    /// to `cert_out`), then serves `sim` until `shutdown`.
    pub async fn run<S: Sim>(
        &self,
        sim: S,
        listen: SocketAddr,
        banner: impl FnOnce(&str, SocketAddr) -> String,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let listener =
            std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let scheme = if self.tls { "https" } else { "http" };
        println!("{}", banner(scheme, addr));
        let served = if self.tls {
            let pem = sim.cert_pem()?;
            match &self.cert_out {
                Some(path) => {
                    std::fs::write(path, &pem)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("  certificate: {}", path.display());
                }
                None => println!("{pem}"),
            }
            tokio::spawn(sim.serve_tls_on(listener))
        } else {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(sim.serve(listener))
        };
        tokio::select! {
            result = served => result.context("simulator task")?.context("simulator")?,
            () = shutdown => {}
        }
        Ok(())
    }
}

/// A backend of the demo tenant, on a simulator the demo started.
#[derive(Clone, Debug)]
pub struct DemoBackend {
    /// The backend's name in the demo tenant (`cb-lab`).
    pub name: String,
    /// The body of its `[tenants.demo.backends.<name>]` table, `kind` included (TOML).
    pub toml: String,
    /// One line for the demo's banner: what runs where.
    pub summary: String,
    /// A request body (JSON) to try on it.
    pub example: String,
}

/// A vendor simulator as the gateway's command line runs it.
pub trait VendorSim: Send + Sync + 'static {
    /// The backend kind it simulates, which is also the `edrgate sim` subcommand.
    const KIND: &'static str;
    /// The subcommand's one-line help.
    const ABOUT: &'static str;
    /// Its command-line arguments.
    type Args: Args + FromArgMatches + Send + 'static;

    /// `edrgate sim <kind>`: serves until `shutdown`.
    fn serve(
        args: Self::Args,
        shutdown: Shutdown,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// `edrgate demo`: starts the simulator over HTTPS in a background task with `endpoints`
    /// endpoints, writes what the gateway must trust into `dir`, and returns the backend.
    fn demo(
        dir: &Path,
        endpoints: usize,
    ) -> impl Future<Output = anyhow::Result<DemoBackend>> + Send;
}

/// [`VendorSim`] without its types, for a list of every vendor.
pub trait SimulatorPlugin: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// The `edrgate sim <kind>` subcommand with its arguments.
    fn command(&self) -> clap::Command;
    /// Runs the subcommand parsed with [`SimulatorPlugin::command`].
    fn serve<'a>(
        &'a self,
        matches: &'a ArgMatches,
        shutdown: Shutdown,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    fn demo<'a>(
        &'a self,
        dir: &'a Path,
        endpoints: usize,
    ) -> BoxFuture<'a, anyhow::Result<DemoBackend>>;
}

/// The plugin of simulator `S`.
pub struct Plugin<S>(PhantomData<fn() -> S>);

/// The plugin of simulator `S`, for the registry's list.
pub const fn plugin<S: VendorSim>() -> Plugin<S> {
    Plugin(PhantomData)
}

impl<S: VendorSim> SimulatorPlugin for Plugin<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn command(&self) -> clap::Command {
        S::Args::augment_args(clap::Command::new(S::KIND).about(S::ABOUT))
    }

    fn serve<'a>(
        &'a self,
        matches: &'a ArgMatches,
        shutdown: Shutdown,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let args = S::Args::from_arg_matches(matches).map_err(|e| anyhow::anyhow!("{e}"))?;
            S::serve(args, shutdown).await
        })
    }

    fn demo<'a>(
        &'a self,
        dir: &'a Path,
        endpoints: usize,
    ) -> BoxFuture<'a, anyhow::Result<DemoBackend>> {
        Box::pin(S::demo(dir, endpoints))
    }
}

/// A TOML basic string (quoted and escaped), for [`DemoBackend::toml`].
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts `sim` over HTTPS in the background and writes its certificate to `dir/<file>`;
/// returns the URL (`https://127.0.0.1:<port>`) and the certificate's path. The demo's common
/// first step.
pub async fn demo_spawn<S: Sim>(
    sim: &S,
    dir: &Path,
    file: &str,
) -> anyhow::Result<(String, PathBuf)> {
    let addr =
        sim.spawn_tls().await.with_context(|| format!("starting the {} simulator", sim.name()))?;
    let ca = dir.join(file);
    std::fs::write(&ca, sim.cert_pem()?).with_context(|| format!("writing {}", ca.display()))?;
    Ok((format!("https://127.0.0.1:{}", addr.port()), ca))
}

#[cfg(test)]
mod tests {
    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(super::toml_string(r#"C:\x "y""#), r#""C:\\x \"y\"""#);
        assert_eq!(super::toml_string("a\nb"), r#""a\u000Ab""#);
    }
}
