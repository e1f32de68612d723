//! The analyst CLI end to end: the compiled `edrgate` binary against a test gateway in front
//! of the Carbon Black simulator, configured as an analyst would (`EDRGATE_URL`,
//! `EDRGATE_TOKEN`, or a profile of the CLI configuration file).

use std::time::Duration;

use edrgate_adapter::{Action, CommandResult, Status};
use edrgate_carbonblack_sim::{SimConfig, Simulator};
use edrgate_simkit::Sim as _;
use serde_json::Value;

mod common;
use common::{Backend, Gateway, token};

const NOTE: &str = r"C:\evidence\note.txt";

/// A gateway with tenant `acme` on a fast simulator of 5 sensors, and tenant `umbrella` on
/// a backend that never answers (its actions stay unfinished until cancelled).
async fn start() -> (Gateway, Simulator) {
    let sim = Simulator::new(SimConfig {
        checkin_delay: Duration::from_millis(30),
        command_latency: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let gw = Gateway::builder()
        .config("server.max_wait_seconds = 2")
        .backend("acme", "cb", &cb)
        .backend("umbrella", "down", &Backend::unreachable())
        .start()
        .await;
    (gw, sim)
}

/// What a run of the binary gave.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Runs `edrgate ARGS` with `env` only (plus PATH): no configuration of the machine's user
/// leaks in (HOME is an empty directory).
async fn edrgate(env: &[(&str, &str)], args: &[&str]) -> Out {
    let home = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edrgate"));
    command.args(args).env_clear().env("HOME", home.path()).env("RUST_LOG", "warn");
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    drop(home);
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `edrgate ARGS` against `gw` as `tenant`'s analyst.
async fn cli(gw: &Gateway, tenant: &str, args: &[&str]) -> Out {
    let token = token(tenant);
    edrgate(&[("EDRGATE_URL", &gw.base), ("EDRGATE_TOKEN", &token)], args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_as_a_table_and_as_json() {
    let (gw, _sim) = start().await;
    let table = cli(&gw, "acme", &["devices"]).await;
    assert_eq!(table.code, 0, "{table:#?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("HOSTNAME  BACKEND  DEVICE  ONLINE"), "{table:#?}");
    assert_eq!(lines.len(), 6, "a header and 5 sensors: {table:#?}");
    assert!(lines.iter().any(|l| l.starts_with("WIN-0001  cb       1       yes")), "{table:#?}");

    let one = cli(&gw, "acme", &["devices", "--hostname", "WIN-0002", "--json"]).await;
    assert_eq!(one.code, 0, "{one:#?}");
    let items = one.json::<Value>()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{one:#?}");
    assert_eq!(
        (items[0]["hostname"].as_str(), items[0]["device_id"].as_str()),
        (Some("WIN-0002"), Some("2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_on_three_hosts_prints_json_or_plain_tables() {
    let (gw, _sim) = start().await;
    let hosts = ["WIN-0001", "WIN-0002", "WIN-0003"];
    let json =
        cli(&gw, "acme", &[&["act"], &hosts[..], &["process-list", "--json"]].concat()).await;
    assert_eq!(json.code, 0, "{json:#?}");
    let action: Action = json.json();
    assert_eq!(action.status, Status::Succeeded);
    assert_eq!(action.runs.len(), 3);
    for run in &action.runs {
        let Some(CommandResult::Processes { processes }) = &run.commands[0].result else {
            panic!("{run:?}");
        };
        assert!(processes.iter().any(|p| p.pid == 3012 && p.name == "updater.exe"), "{run:?}");
    }

    // The same from a hosts file, as tables: one line per run, then the processes of all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.txt");
    std::fs::write(&file, format!("# the lab\n{}\n", hosts.join("\n"))).unwrap();
    let file = file.to_str().unwrap();
    let plain = cli(&gw, "acme", &["act", "--hosts-file", file, "process-list"]).await;
    assert_eq!(plain.code, 0, "{plain:#?}");
    let out = &plain.stdout;
    assert!(out.contains("HOST      BACKEND  DEVICE  STATUS     DETAIL\n"), "{out}");
    for (i, host) in hosts.iter().enumerate() {
        let row = format!("{host}  cb       {}       succeeded  process_list: ", i + 1);
        assert!(out.contains(&row), "{row} in {out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with(host) && l.contains(" 3012 ") && l.contains("updater.exe")),
            "{out}"
        );
    }
    // Not a terminal: the progress is plain lines on stderr, no bar, no colours.
    for host in hosts {
        assert!(
            plain.stderr.lines().any(|l| l.starts_with(&format!("{host}  succeeded"))),
            "{plain:#?}"
        );
    }
    assert!(!plain.stderr.contains('\u{1b}') && !plain.stderr.contains("#>"), "{plain:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_file_is_verified_and_saved() {
    let (gw, sim) = start().await;
    let got = cli(&gw, "acme", &["act", "WIN-0001", "get-file", NOTE, "--json"]).await;
    assert_eq!(got.code, 0, "{got:#?}");
    let action: Action = got.json();
    let Some(CommandResult::File { file }) = &action.runs[0].commands[0].result else {
        panic!("{action:?}");
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("note.txt");
    let out_arg = out.to_str().unwrap();
    let fetched = cli(&gw, "acme", &["fetch", &file.file_id, "-o", out_arg]).await;
    assert_eq!(fetched.code, 0, "{fetched:#?}");
    let expected = sim.file_content(1, NOTE).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), expected);
    assert!(fetched.stderr.contains(&format!("SHA-256 {} verified", file.sha256)), "{fetched:#?}");

    // An existing output is kept unless --force; only the output is in the directory.
    std::fs::write(&out, "mine").unwrap();
    let kept = cli(&gw, "acme", &["fetch", &file.file_id, "-o", out_arg]).await;
    assert_eq!(kept.code, 2, "{kept:#?}");
    assert!(kept.stderr.contains("--force"), "{kept:#?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    let forced = cli(&gw, "acme", &["fetch", &file.file_id, "-o", out_arg, "--force"]).await;
    assert_eq!(forced.code, 0, "{forced:#?}");
    assert_eq!(std::fs::read(&out).unwrap(), expected);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

    // To stdout, and another tenant's file is not found.
    let piped = cli(&gw, "acme", &["fetch", &file.file_id, "-o", "-"]).await;
    assert_eq!((piped.code, piped.stdout.as_bytes()), (0, &expected[..]), "{piped:#?}");
    let other = cli(&gw, "umbrella", &["fetch", &file.file_id, "-o", out_arg, "--force"]).await;
    assert_eq!(other.code, 3, "{other:#?}");
    assert!(other.stderr.contains("not_found (404)"), "{other:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_followed_shown_and_cancelled() {
    let (gw, _sim) = start().await;
    let submitted = cli(
        &gw,
        "acme",
        &["act", "WIN-0004", "list-directory", r"C:\evidence", "--no-follow", "--json"],
    )
    .await;
    assert_eq!(submitted.code, 0, "{submitted:#?}");
    let id = submitted.json::<Action>().id.to_string();
    let followed = cli(&gw, "acme", &["action", "follow", &id]).await;
    assert_eq!(followed.code, 0, "{followed:#?}");
    assert!(followed.stdout.starts_with(&format!("action {id}  succeeded")), "{followed:#?}");
    assert!(followed.stdout.contains("note.txt"), "{followed:#?}");
    let shown = cli(&gw, "acme", &["action", "show", &id, "--json"]).await;
    assert_eq!((shown.code, shown.json::<Action>().status), (0, Status::Succeeded), "{shown:#?}");
    let listed = cli(&gw, "acme", &["action", "list"]).await;
    assert!(
        listed.stdout.lines().nth(1).is_some_and(|l| l.starts_with(&format!("{id}  succeeded"))),
        "{listed:#?}"
    );

    // A backend that never answers: the action stays unfinished until cancelled.
    let stuck =
        cli(&gw, "umbrella", &["act", "--device", "down:1", "process-list", "--no-follow"]).await;
    assert_eq!(stuck.code, 0, "{stuck:#?}");
    let id = stuck.stdout.split_whitespace().nth(1).unwrap().to_owned();
    let unfinished = cli(&gw, "umbrella", &["action", "show", &id]).await;
    assert_eq!(unfinished.code, 6, "{unfinished:#?}");
    let cancelled = cli(&gw, "umbrella", &["action", "cancel", &id]).await;
    assert_eq!(cancelled.code, 0, "{cancelled:#?}");
    assert!(cancelled.stdout.contains("cancel requested"), "{cancelled:#?}");
    let ended = cli(&gw, "umbrella", &["action", "follow", &id]).await;
    assert_eq!(ended.code, 1, "cancelled is not success: {ended:#?}");
    assert!(ended.stdout.starts_with(&format!("action {id}  cancelled")), "{ended:#?}");
    let again = cli(&gw, "umbrella", &["action", "cancel", &id]).await;
    assert_eq!(again.code, 3, "{again:#?}");
    assert!(again.stderr.contains("error: conflict (409)"), "{again:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_readable_and_exit_non_zero() {
    let (gw, _sim) = start().await;
    let unknown = cli(&gw, "acme", &["act", "WIN-0001", "WIN-9999", "process-list"]).await;
    assert_eq!(unknown.code, 1, "{unknown:#?}");
    assert!(unknown.stdout.contains("partially_succeeded"), "{unknown:#?}");
    let row = unknown.stdout.lines().find(|l| l.starts_with("WIN-9999")).unwrap();
    assert!(row.contains("failed") && row.contains("device_not_found: "), "{row}");

    let missing =
        cli(&gw, "acme", &["action", "show", "01a20000-0000-7000-8000-000000000000"]).await;
    assert_eq!(missing.code, 3, "{missing:#?}");
    assert!(missing.stderr.starts_with("error: not_found (404): "), "{missing:#?}");
    assert!(missing.stderr.contains("[request "), "{missing:#?}");

    let bad = "not-a-valid-token-0123456789";
    let refused = edrgate(&[("EDRGATE_URL", &gw.base), ("EDRGATE_TOKEN", bad)], &["devices"]).await;
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(refused.stderr.contains("unauthenticated (401)"), "{refused:#?}");
    assert!(!format!("{refused:?}").contains(bad), "the token is never printed");

    // Plain http off loopback is refused before anything is sent (nothing listens there).
    let remote =
        edrgate(&[("EDRGATE_URL", "http://192.0.2.1:9"), ("EDRGATE_TOKEN", bad)], &["devices"])
            .await;
    assert_eq!(remote.code, 2, "{remote:#?}");
    assert!(remote.stderr.contains("--insecure-http"), "{remote:#?}");
    let unreachable =
        edrgate(&[("EDRGATE_URL", "http://127.0.0.1:1"), ("EDRGATE_TOKEN", bad)], &["devices"])
            .await;
    assert_eq!(unreachable.code, 4, "{unreachable:#?}");
    let no_token = edrgate(&[("EDRGATE_URL", &gw.base)], &["devices"]).await;
    assert_eq!(no_token.code, 2, "{no_token:#?}");
    assert!(no_token.stderr.contains("EDRGATE_TOKEN"), "{no_token:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_the_configuration_file_connects() {
    let (gw, _sim) = start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.token"), format!("{}\n", token("acme"))).unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.default]\nurl = \"https://gw.invalid\"\ntoken = \"x\"\n\n\
             [profiles.lab]\nurl = \"{}\"\ntoken_file = \"acme.token\"\n",
            gw.base
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = edrgate(&[("EDRGATE_CLI_CONFIG", config)], &["devices", "--profile", "lab"]).await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("WIN-0005"), "{out:#?}");
    let none = edrgate(&[], &["devices", "--cli-config", config, "--profile", "prod"]).await;
    assert_eq!(none.code, 2, "{none:#?}");
    assert!(none.stderr.contains("no profile \"prod\""), "{none:#?}");
}

/// The tenant's request rate limit is waited out: one request a second, and a fan-out
/// followed by long-polls that each ask for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rate_limit_is_waited_out() {
    let sim = Simulator::new(SimConfig {
        checkin_delay: Duration::from_millis(30),
        command_latency: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let gw = Gateway::builder()
        .backend("acme", "cb", &cb)
        .config("[tenants.acme.limits]\nrequests_per_minute = 60\nburst = 1")
        .start()
        .await;
    // The submission takes the only request of the second; the first long-poll right after
    // it is refused, and sent again once the gateway says it may be.
    let out = cli(&gw, "acme", &["act", "WIN-0001", "WIN-0002", "process-list"]).await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("rate limited by the gateway; retrying in 1 s"), "{out:#?}");
}
