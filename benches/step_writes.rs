//! Writes that do not grow with the run (issue 14, point 3): what one step of a run costs the
//! store, (a) in an action of 10 and of 10,000 runs (a step moves its own run's counts in the
//! action's kept summary), and (b) along a run of 100 commands that each report a ~100 KB
//! process list (a step writes the small command states and only its new result). The
//! alternative, measured on the same database in the same run, is what a step did before:
//! (a) read the status of every run of the action to aggregate it, (b) rewrite the run's whole
//! `commands_json` with every result so far.
//!
//! `CARGO_TARGET_DIR=/tmp/bench-target cargo bench --bench step_writes [-- --postgres URL]`
//! (PostgreSQL also with `EDRGATE_TEST_POSTGRES_URL`).
//!
//! Checked: every step's write goes through (lease held); the kept summary equals the runs'
//! statuses; every result reads back as written. Any failure exits 1.

use std::time::{Duration, Instant};

use edrgate::store::{Lease, NewAction, NewRun, RunWrite, Store, now_ms};
use edrgate_adapter::{
    ActionRequest, Command, CommandResult, CommandState, ProcessInfo, Status, Target,
};
use uuid::Uuid;

const STEPS: usize = 1_000;
const LONG_RUN: usize = 100;
const LEASE: Duration = Duration::from_secs(600);

type Failure = Box<dyn std::error::Error>;

enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    /// What a step of a run of `action` read before the summary was kept.
    async fn sibling_statuses(&self, action: &str) -> Result<usize, Failure> {
        let sql = "SELECT status FROM runs WHERE action_id = $1";
        Ok(match self {
            Raw::Sqlite(p) => sqlx::query(sql).bind(action).fetch_all(p).await?.len(),
            Raw::Postgres(p) => sqlx::query(sql).bind(action).fetch_all(p).await?.len(),
        })
    }

    /// What a step of `run` wrote before results had rows of their own.
    async fn rewrite_commands(&self, run: &str, commands: &str) -> Result<(), Failure> {
        let sql = "UPDATE runs SET commands_json = $1 WHERE id = $2";
        let n = match self {
            Raw::Sqlite(p) => {
                sqlx::query(sql).bind(commands).bind(run).execute(p).await?.rows_affected()
            }
            Raw::Postgres(p) => {
                sqlx::query(sql).bind(commands).bind(run).execute(p).await?.rows_affected()
            }
        };
        if n != 1 {
            return Err(format!("the rewrite of run {run} matched no row").into());
        }
        Ok(())
    }
}

fn new_action(targets: usize, commands: usize) -> NewAction {
    let request = ActionRequest {
        targets: (0..targets)
            .map(|i| Target::Device { backend: "cb".into(), device_id: format!("dev-{i:05}") })
            .collect(),
        commands: vec![Command::ProcessList; commands],
        comment: Some("step writes".into()),
        on_error: Default::default(),
        timeout_seconds: None,
        callback_url: None,
    };
    let states: Vec<CommandState> = request
        .commands
        .iter()
        .enumerate()
        .map(|(index, c)| CommandState {
            index,
            kind: c.kind(),
            status: Status::Queued,
            result: None,
            error: None,
            vendor_ref: None,
            vendor_status: None,
        })
        .collect();
    let runs = request
        .targets
        .iter()
        .map(|t| NewRun {
            id: Uuid::now_v7(),
            target: t.clone(),
            backend: Some("cb".into()),
            device_id: None,
            commands: states.clone(),
        })
        .collect();
    let now = now_ms();
    NewAction {
        id: Uuid::now_v7(),
        tenant: "bench".into(),
        request,
        created_at: now,
        deadline: now + 3_600_000,
        idempotency_key: None,
        request_hash: "hash".into(),
        request_id: None,
        subject: None,
        runs,
    }
}

/// A ~100 KB process list.
fn processes(seed: usize) -> CommandResult {
    let processes = (0..400u64)
        .map(|i| ProcessInfo {
            pid: 400 + i * 4 + seed as u64,
            parent_pid: Some(4),
            name: format!("svchost{i}.exe"),
            path: Some(format!("C:\\Windows\\System32\\svchost{i}.exe")),
            command_line: Some(format!("C:\\Windows\\system32\\svchost{i}.exe -k netsvcs -p")),
            username: Some("NT AUTHORITY\\SYSTEM".into()),
            sid: Some("S-1-5-18".into()),
            started_at: Some(1_700_000_000),
            vendor_id: Some(format!("7DESJ9GN-0047a6b9-{seed:08x}-{i:08x}-1d9f1e9f4e1c2b3")),
        })
        .collect();
    CommandResult::Processes { processes }
}

fn write<'a>(states: &'a [CommandState], new: Option<&'a [usize]>) -> RunWrite<'a> {
    let now = now_ms();
    RunWrite {
        backend: Some("cb"),
        device_id: Some("dev"),
        hostname: Some("HOST"),
        status: Status::Running,
        error: None,
        states,
        checkpoint: None,
        next_step_at: now + 60_000,
        lease_until: now + 600_000,
        new_results: new,
        visible: true,
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn claim_all(store: &Store, n: usize) -> Result<Vec<Lease>, Failure> {
    let leases = store.claim("bench", LEASE, u32::try_from(n)?).await?;
    if leases.len() != n {
        return Err(format!("claimed {} of {n} runs", leases.len()).into());
    }
    Ok(leases)
}

/// (a): p50/p99 of a visible step, and of the siblings' read it replaces, at `runs` runs.
async fn large_action(store: &Store, raw: &Raw, runs: usize) -> Result<[Duration; 4], Failure> {
    let action = new_action(runs, 1);
    store.insert_action(&action).await?;
    let leases = claim_all(store, runs).await?;
    let mut states = action.runs[0].commands.clone();
    states[0].status = Status::Running;
    let steps = runs.min(STEPS);
    let (mut step, mut old) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for lease in leases.iter().take(steps) {
        let t = Instant::now();
        store.save_run(lease, &write(&states, Some(&[]))).await?.ok_or("lease lost")?;
        step.push(t.elapsed());
        let t = Instant::now();
        let n = raw.sibling_statuses(&action.id.to_string()).await?;
        old.push(t.elapsed());
        if n != runs {
            return Err(format!("read {n} sibling statuses of {runs}").into());
        }
    }
    let (read, _) = store.action("bench", action.id).await?.ok_or("action gone")?;
    let counts = read.summary.runs_by_status;
    if (counts.running, counts.queued) != (steps as u64, (runs - steps) as u64)
        || read.status != Status::Running
    {
        return Err(
            format!("summary {counts:?}, status {:?} after {steps} steps", read.status).into()
        );
    }
    step.sort();
    old.sort();
    Ok([quantile(&step, 0.5), quantile(&step, 0.99), quantile(&old, 0.5), quantile(&old, 0.99)])
}

/// (b): per step of a run of [`LONG_RUN`] commands, the time and bytes of its write now and of
/// the whole-`commands_json` rewrite (on a second run of the same action).
async fn long_run(
    store: &Store,
    raw: &Raw,
) -> Result<Vec<(Duration, usize, Duration, usize)>, Failure> {
    let action = new_action(2, LONG_RUN);
    store.insert_action(&action).await?;
    let leases = claim_all(store, 2).await?;
    let (lease, other) = if leases[0].run_id == action.runs[0].id {
        (&leases[0], &leases[1])
    } else {
        (&leases[1], &leases[0])
    };
    let mut states = action.runs[0].commands.clone();
    let mut out = Vec::with_capacity(LONG_RUN);
    for i in 0..LONG_RUN {
        states[i].status = Status::Succeeded;
        states[i].result = Some(processes(i));
        let small: Vec<CommandState> =
            states.iter().map(|s| CommandState { result: None, ..s.clone() }).collect();
        let bytes =
            serde_json::to_string(&small)?.len() + serde_json::to_string(&states[i].result)?.len();
        let t = Instant::now();
        store.save_run(lease, &write(&states, Some(&[i]))).await?.ok_or("lease lost")?;
        let now = t.elapsed();
        let t = Instant::now();
        let whole = serde_json::to_string(&states)?;
        raw.rewrite_commands(&other.run_id.to_string(), &whole).await?;
        out.push((now, bytes, t.elapsed(), whole.len()));
    }
    let read = store.load_run(lease.run_id).await?;
    for (i, state) in read.states.iter().enumerate() {
        if state.result.as_ref() != Some(&processes(i)) {
            return Err(format!("the result of command {i} did not read back").into());
        }
    }
    Ok(out)
}

async fn bench(label: &str, store: Store, raw: Raw) -> Result<(), Failure> {
    println!("\n## {label}\n");
    println!(
        "(a) one visible step of a run, by the action's number of runs ({STEPS} steps each)\n"
    );
    println!(
        "| runs in the action | step p50 | step p99 | before: siblings' read alone, p50 | p99 |"
    );
    println!("|---|---|---|---|---|");
    for runs in [10, 10_000] {
        let [p50, p99, o50, o99] = large_action(&store, &raw, runs).await?;
        println!("| {runs} | {} | {} | {} | {} |", ms(p50), ms(p99), ms(o50), ms(o99));
    }
    println!("\n(b) a run of {LONG_RUN} commands, each reporting a ~100 KB process list\n");
    println!("| step | write now | bytes now | before: whole commands_json | bytes before |");
    println!("|---|---|---|---|---|");
    let steps = long_run(&store, &raw).await?;
    for i in [0, 9, 49, 99] {
        let (now, bytes, old, old_bytes) = steps[i];
        println!("| {} | {} | {bytes} | {} | {old_bytes} |", i + 1, ms(now), ms(old));
    }
    let total =
        |f: fn(&(Duration, usize, Duration, usize)) -> usize| steps.iter().map(f).sum::<usize>();
    let time = |f: fn(&(Duration, usize, Duration, usize)) -> Duration| {
        steps.iter().map(f).sum::<Duration>()
    };
    println!(
        "| all {LONG_RUN} | {} | {} | {} | {} |",
        ms(time(|s| s.0)),
        total(|s| s.1),
        ms(time(|s| s.2)),
        total(|s| s.3)
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pg = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("EDRGATE_TEST_POSTGRES_URL").ok());
    println!(
        "machine: {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(str::to_owned))
            .unwrap_or_default()
    );
    let result: Result<(), Failure> = async {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("edrgate.db");
        let store = Store::open(&path).await?;
        let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await?;
        bench("SQLite", store, Raw::Sqlite(raw)).await?;
        match pg {
            Some(base) => {
                // A database of its own: claims take every due run of the database.
                use sqlx::Connection as _;
                let name = format!("edrgate_steps_{}", Uuid::now_v7().simple());
                let mut admin = sqlx::PgConnection::connect(&base).await?;
                let create = format!("CREATE DATABASE {name}");
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await?;
                let (prefix, _) = base.rsplit_once('/').ok_or("a PostgreSQL URL has a path")?;
                let url = format!("{prefix}/{name}");
                let store = Store::connect(&url, 4).await?;
                let raw = sqlx::PgPool::connect(&url).await?;
                let outcome = bench("PostgreSQL", store, Raw::Postgres(raw.clone())).await;
                raw.close().await;
                let drop = format!("DROP DATABASE {name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await?;
                outcome?;
            }
            None => println!(
                "\nPostgreSQL skipped: neither --postgres URL nor EDRGATE_TEST_POSTGRES_URL"
            ),
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        eprintln!("step_writes failed: {error}");
        std::process::exit(1);
    }
}
