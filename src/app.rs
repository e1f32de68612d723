//! Wiring: configuration → store → file store → backends → engine → router, and serving it
//! with a graceful shutdown. Used by `edrgate serve`, `edrgate demo` and the end-to-end tests.
//!
//! The top of the module graph with `cli`: `app` depends on `api` and everything below it,
//! nothing depends on `app` but `cli`. The [`Reloader`] reaches the admin endpoint as the
//! [`api::Reload`] trait object of [`ApiState`], so `api` never names `app`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, Reload};
use crate::auth::Auth;
use crate::backends::Backends;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::files::FileStore;
use crate::store::Store;

/// The reload's outcome types, defined by the endpoint that answers with them.
pub use crate::api::reload::{ReloadError, ReloadReport};

/// A built, started gateway.
pub struct App {
    /// The running engine (already started).
    pub engine: Arc<Engine>,
    /// The complete HTTP application, ready for `axum::serve`.
    pub router: axum::Router,
    /// The validator the router uses (handy for tests and the CLI).
    pub auth: Arc<Auth>,
    /// Cancelled at the start of a shutdown: long-polls answer at once, `/readyz` turns 503.
    pub shutdown: CancellationToken,
    /// Configuration reloads (SIGHUP, the admin endpoint).
    pub reloader: Arc<Reloader>,
    /// How long a shutdown waits for in-flight requests, then for run drivers to hand their
    /// runs back, before cutting them off (`server.shutdown_grace_seconds`).
    pub grace: Duration,
    /// Where `/metrics` is served (`server.metrics_listen`, bound by [`App::build`]).
    pub metrics_addr: Option<SocketAddr>,
    /// The bound metrics listener and its router, served by [`serve`].
    metrics: Option<(TcpListener, axum::Router)>,
}

impl App {
    /// Opens the store and the file store, builds every backend, starts the engine and builds
    /// the router. Fails (without starting anything) on a bad backend or a broken JWT setup.
    pub async fn build(mut config: Config) -> anyhow::Result<App> {
        // Installed first, so vendor calls made while building are counted.
        crate::metrics::handle();
        let auth = Arc::new(Auth::new(&config.auth).context("authentication setup")?);
        auth.set_tenant_limits(config.tenants.iter().map(|(t, c)| (t.as_str(), &c.limits)));
        let store = open_store(&config.store).await?;
        let files = FileStore::from_config(&config.files, store.clone())
            .await
            .with_context(|| format!("opening the file store {}", config.files.dir.display()))?;
        // Before the backends, which take the tenants out of the configuration.
        let webhook_settings = crate::webhooks::Settings::from_config(&config)
            .map_err(|errors| anyhow::anyhow!("invalid webhooks: {}", errors.join("; ")))?;
        let action_retention = crate::store::retention::ActionRetention::from_config(&config);
        let backends = Backends::from_config(&mut config, None)
            .map_err(|errors| anyhow::anyhow!("invalid backends: {}", errors.join("; ")))?;
        let webhooks = crate::webhooks::Webhooks::new(store.clone(), webhook_settings);
        let engine = Engine::new(
            store,
            files,
            Arc::new(backends),
            EngineOptions {
                lease: Duration::from_secs(config.engine.lease_seconds),
                default_timeout: Duration::from_secs(config.engine.default_timeout_seconds),
                max_timeout: Duration::from_secs(config.engine.max_timeout_seconds),
                max_in_flight: config.engine.max_runs_in_flight,
            },
        );
        engine.start();
        let shutdown = CancellationToken::new();
        webhooks.start(engine.subscribe_changes(), shutdown.clone());
        engine.files().spawn_sweeper(
            Duration::from_secs(config.files.sweep_interval_seconds),
            shutdown.clone(),
        );
        engine.store().spawn_action_sweeper(action_retention, shutdown.clone());
        let reloader = Arc::new(Reloader {
            file: OnceLock::new(),
            engine: Arc::clone(&engine),
            auth: Arc::clone(&auth),
            webhooks: Arc::clone(&webhooks),
            lock: tokio::sync::Mutex::new(()),
        });
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| api::request::Cidr::parse(c).ok())
            .collect();
        let state = ApiState {
            prefix: config.server.path_prefix.as_str().into(),
            trusted_proxies,
            reloader: Arc::clone(&reloader) as Arc<dyn Reload>,
            engine: Arc::clone(&engine),
            auth: Arc::clone(&auth),
            max_wait: Duration::from_secs(config.server.max_wait_seconds),
            shutdown: shutdown.clone(),
            webhooks,
        };
        let router = api::router(state.clone(), config.server.max_body_bytes);
        let router = crate::frontdoor::mount(router, &state, &config.server);
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        // Bound here, so a taken address fails the start and the address is known at once.
        let metrics = match config.server.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding server.metrics_listen {addr}"))?;
                Some((listener, api::metrics_router(state)))
            }
            None => None,
        };
        let metrics_addr = match &metrics {
            Some((listener, _)) => Some(listener.local_addr()?),
            None => None,
        };
        Ok(App { engine, router, auth, shutdown, reloader, grace, metrics_addr, metrics })
    }
}

/// Opens the configured store (PostgreSQL with `url`, else the SQLite file) and applies its
/// migrations.
pub async fn open_store(config: &crate::config::StoreConfig) -> anyhow::Result<Store> {
    if config.url.is_some() {
        // The URL may carry a password: never in messages.
        return Store::from_config(config).await.context("opening the PostgreSQL store");
    }
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Store::from_config(config)
        .await
        .with_context(|| format!("opening the store {}", config.path.display()))
}

/// Re-reads the configuration file and swaps in the tenants' new backends and routing. Only
/// `tenants` is reloaded; the other sections are read at start. A configuration that does not
/// validate, or whose backends cannot be built, is refused and the running one keeps serving.
/// Backends whose settings are unchanged keep their adapter (sessions, tokens, budgets), and
/// runs being driven finish on the adapter they started with.
pub struct Reloader {
    file: OnceLock<PathBuf>,
    engine: Arc<Engine>,
    /// Takes the tenants' new inbound limits.
    auth: Arc<Auth>,
    /// Takes the new webhook settings.
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// One reload at a time: two racing reloads could install the older file last.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Makes `file` the configuration that reloads read.
    pub fn watch_file(&self, file: PathBuf) {
        let _ = self.file.set(file);
    }

    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let file = self.file.get().ok_or(ReloadError::NoFile)?;
        let _one = self.lock.lock().await;
        let mut config = Config::load(file).map_err(ReloadError::Invalid)?;
        // Read before the backends take the tenants' settings.
        let limits: Vec<_> =
            config.tenants.iter().map(|(t, c)| (t.clone(), c.limits.clone())).collect();
        let old = self.engine.backends();
        let webhooks =
            crate::webhooks::Settings::from_config(&config).map_err(ReloadError::Invalid)?;
        let new = Backends::from_config(&mut config, Some(&old)).map_err(ReloadError::Invalid)?;
        let (rebuilt, removed) = new.changes_since(&old);
        let report = ReloadReport {
            tenants: new.tenant_count(),
            backends: new.all().count(),
            rebuilt,
            removed,
        };
        self.engine.replace_backends(Arc::new(new));
        self.webhooks.replace_settings(webhooks);
        self.auth.set_tenant_limits(limits.iter().map(|(t, l)| (t.as_str(), l)));
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }
}

/// What the admin endpoint calls (`api` sees the reloader through this trait only).
#[async_trait::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        Reloader::reload(self).await
    }
}

/// Serves `app` on `listener` until `signal` resolves, then shuts down gracefully: stop
/// accepting, let long-polls answer, drain in-flight requests, hand the runs back; all within
/// the app's `grace`, so the next process (or replica) resumes them at once.
pub async fn serve(
    listener: TcpListener,
    app: App,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let App { engine, router, shutdown, reloader, grace, metrics, .. } = app;
    let metrics = metrics.map(|(listener, router)| {
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stopping.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the metrics listener failed");
            }
        })
    });
    let deadline = std::sync::Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let started = std::sync::Arc::clone(&deadline);
    let stopping = shutdown.clone();
    let reloads = tokio::spawn(reload_on_sighup(reloader));
    // The peer address feeds the audit trail (through trusted proxies only).
    let router = router.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        signal.await;
        let _ = started.set(tokio::time::Instant::now() + grace);
        tracing::info!(grace_seconds = grace.as_secs(), "shutting down: no new connections");
        stopping.cancel();
    });
    let mut server = std::pin::pin!(server.into_future());
    let served = tokio::select! {
        served = &mut server => served,
        // Once the shutdown started, the drain gets a bounded time.
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight requests did not finish in time");
            Ok(())
        }
    };
    reloads.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // What is left of the grace goes to the run drivers.
    let left =
        deadline.get().map_or(grace, |d| d.saturating_duration_since(tokio::time::Instant::now()));
    engine.shutdown(left.max(Duration::from_millis(100))).await;
    tracing::info!("stopped");
    served.context("http server")
}

/// Reloads the configuration on every SIGHUP; a refused reload is logged and changes nothing.
async fn reload_on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload through the admin endpoint");
                return;
            }
        };
        while hup.recv().await.is_some() {
            if let Err(error) = reloader.reload().await {
                tracing::error!(%error, "configuration reload refused; the running configuration stays");
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
