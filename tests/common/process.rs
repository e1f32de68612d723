//! A gateway as its own `edrgate serve` process: what the replica tests and the fault harness
//! crash (SIGKILL), stop (SIGTERM) and restart, as an operator's supervisor would.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::client::Client;
use super::gateway::GatewayBuilder;

/// One `edrgate serve` process; its API is [`Client`]'s (it derefs to it).
pub(crate) struct GatewayProcess {
    name: String,
    child: Option<std::process::Child>,
    config: PathBuf,
    log: PathBuf,
    client: Client,
}

impl GatewayProcess {
    /// Serves `config` on a free loopback port, its configuration and log named `name` in
    /// `dir` (which also holds its SQLite database unless `config` names another store).
    pub(crate) async fn start(name: &str, dir: &Path, config: &GatewayBuilder) -> GatewayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = dir.join(format!("{name}.toml"));
        let config = config.clone().config(&format!("server.listen = \"127.0.0.1:{port}\""));
        std::fs::write(&file, config.render(dir)).unwrap();
        // Long-polls answer within 60 s: a request that takes longer is a hung gateway, and
        // the test fails saying so instead of hanging CI.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
        let mut process = GatewayProcess {
            name: name.to_owned(),
            child: None,
            config: file,
            log: dir.join(format!("{name}.log")),
            client: Client::new(format!("http://127.0.0.1:{port}"), http),
        };
        process.spawn().await;
        process
    }

    /// Starts the process (appending to its log) and waits until it is ready.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edrgate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn,edrgate=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // A restarted replica opens its store, migrates and reclaims before it is ready; on a
        // loaded machine that can take seconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway {} exited ({status}):\n{}", self.name, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway {} did not become ready:\n{}", self.name, self.logs());
    }

    /// What the process logged so far (all its lives).
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the process logged, once it contains `needle`: a thread of the gateway writes its
    /// log lines, a moment after the event. Panics after `within`.
    pub(crate) async fn logs_containing(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(Instant::now() < deadline, "{} never logged {needle:?}:\n{logs}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: a crash, nothing released.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A crash and a restart on the same configuration, port and data.
    pub(crate) async fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGTERM, then the time it took to exit and how; panics after `patience`.
    pub(crate) async fn terminate(
        &mut self,
        patience: Duration,
    ) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        let child = self.child.as_mut().expect("a running gateway");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (started.elapsed(), status);
            }
            assert!(
                started.elapsed() < patience,
                "gateway {} did not exit after SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Deref for GatewayProcess {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // A test that failed must not leave its gateway running, and shows what it logged.
        self.kill();
        if std::thread::panicking() {
            eprintln!("gateway {} logged:\n{}", self.name, self.logs());
        }
    }
}
