//! The in-process test gateway: configured by [`GatewayBuilder`] (tenants' backends by kind,
//! settings as TOML), written to a configuration file in a temporary directory and served on
//! a loopback port as `edrgate serve --config FILE` serves it.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use edrgate::app::{self, App};
use edrgate::config::Config;
use edrgate::engine::Engine;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::backend::Backend;
use super::client::Client;
use super::token::SECRET;

/// A gateway's configuration. Each tenant and backend is named by the test; the store (SQLite)
/// and the files live in the gateway's directory; tokens are HS256 with [`SECRET`] unless
/// [`GatewayBuilder::auth`] says otherwise.
#[derive(Clone, Debug, Default)]
pub(crate) struct GatewayBuilder {
    auth: Option<toml::Table>,
    config: toml::Table,
}

impl GatewayBuilder {
    /// `backend` as backend `name` of `tenant`.
    pub(crate) fn backend(mut self, tenant: &str, name: &str, backend: &Backend) -> Self {
        let backends = table([(name, toml::Value::Table(backend.0.clone()))]);
        let tenants = table([(tenant, table([("backends", backends)]))]);
        merge(&mut self.config, toml::Table::from_iter([("tenants".to_owned(), tenants)]));
        self
    }

    /// Any other settings, as TOML merged over the defaults and what is set so far
    /// (`[server]`, `engine.lease_seconds = 1`, a tenant's `routing` or `limits`, …).
    pub(crate) fn config(mut self, toml: &str) -> Self {
        merge(&mut self.config, parse(toml));
        self
    }

    /// The `[auth]` table, instead of HS256 tokens with [`SECRET`].
    pub(crate) fn auth(mut self, toml: &str) -> Self {
        self.auth = Some(parse(toml));
        self
    }

    /// The configuration file of a gateway whose data (database, files) are in `dir`.
    pub(crate) fn render(&self, dir: &Path) -> String {
        let auth = self
            .auth
            .clone()
            .unwrap_or_else(|| parse(&format!("allow_hs256 = true\nhs256_secret = \"{SECRET}\"")));
        let path = |name: &str| toml::Value::String(dir.join(name).display().to_string());
        let mut config = toml::Table::from_iter([
            ("store".to_owned(), table([("path", path("edrgate.db"))])),
            ("files".to_owned(), table([("dir", path("files"))])),
            ("auth".to_owned(), toml::Value::Table(auth)),
        ]);
        merge(&mut config, self.config.clone());
        toml::to_string(&config).unwrap()
    }

    /// Writes the configuration into a new temporary directory and serves it.
    pub(crate) async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), self.render(dir.path())).unwrap();
        Gateway::launch(Arc::new(dir)).await
    }
}

const CONFIG_FILE: &str = "edrgate.toml";

/// A running gateway: its API on loopback ([`Client`], which it derefs to), and the parts a
/// test reaches past the API for. It runs on a runtime of its own, as its own process would:
/// a crash, or dropping it, ends everything it holds.
pub(crate) struct Gateway {
    client: Client,
    pub(crate) addr: SocketAddr,
    /// Where `/metrics` is served (`server.metrics_listen`; not on the API's listener).
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// The complete router, for requests without a socket ([`Gateway::oneshot`]).
    pub(crate) router: axum::Router,
    pub(crate) engine: Arc<Engine>,
    /// The app's shutdown token: cancelled, the gateway drains (`/readyz` answers 503).
    pub(crate) shutdown: CancellationToken,
    dir: Arc<tempfile::TempDir>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Gateway {
    pub(crate) fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// Where its configuration file, database and files are.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces its configuration file (for a reload) with `config`.
    pub(crate) fn rewrite(&self, config: &GatewayBuilder) {
        std::fs::write(self.dir().join(CONFIG_FILE), config.render(self.dir())).unwrap();
    }

    /// Stops it as a crash would (no lease released, no step finished) and starts a new one
    /// on the same configuration, database and files, on another port.
    pub(crate) async fn crash_and_restart(&mut self) {
        self.engine.kill();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        *self = Gateway::launch(Arc::clone(&self.dir)).await;
    }

    /// Shuts it down gracefully, as SIGTERM does; returns once it has stopped.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        (&mut self.server).await.unwrap();
    }

    /// Sends `request` through the router, without a socket.
    pub(crate) async fn oneshot(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap().to_vec();
        (parts.status, parts.headers, body)
    }

    async fn launch(dir: Arc<tempfile::TempDir>) -> Gateway {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let file = dir.path().join(CONFIG_FILE);
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let (started, parts) = tokio::sync::oneshot::channel();
        let server = runtime.spawn(async move {
            let config = Config::load(&file).unwrap_or_else(|e| panic!("{e:?}"));
            let app = App::build(config).await.unwrap();
            app.reloader.watch_file(file);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let _ = started.send((
                addr,
                app.metrics_addr,
                app.router.clone(),
                Arc::clone(&app.engine),
                app.shutdown.clone(),
            ));
            app::serve(listener, app, signal).await.unwrap();
        });
        let Ok((addr, metrics_addr, router, engine, shutdown)) = parts.await else {
            std::panic::resume_unwind(server.await.unwrap_err().into_panic());
        };
        let client = Client::new(
            format!("http://{addr}"),
            // No idle connection reused: a refusal answered before its body was read (413)
            // closes its connection, and a pooled next request would race that close.
            reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        );
        Gateway {
            client,
            addr,
            metrics_addr,
            router,
            engine,
            shutdown,
            dir,
            stop,
            server,
            runtime: Some(runtime),
        }
    }
}

impl Deref for Gateway {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Value {
    toml::Value::Table(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn parse(toml: &str) -> toml::Table {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// Merges `from` into `into`, table by table; any other value of `from` replaces `into`'s.
pub(crate) fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
