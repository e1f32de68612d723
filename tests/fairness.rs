//! Fairness of the engine's claims: one tenant's fan-out on a slow backend, whose runs wait
//! for a vendor slot, does not keep another tenant's single command waiting behind it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edrgate::backends::Backends;
use edrgate::engine::{Engine, EngineOptions, SubmitMeta, Submitted};
use edrgate::files::FileStore;
use edrgate::store::Store;
use edrgate_adapter::adapter::BudgetUse;
use edrgate_adapter::{
    Action, ActionRequest, Adapter, AdapterError, Capabilities, CommandKind, CommandResult,
    CommandSupport, CommandUpdate, Device, FairSlots, Limits, Next, RunContext, Status, Step, Via,
};
use serde_json::json;
use tokio::sync::Semaphore;

/// A backend with one vendor slot: a run takes it, then waits for the test's permit (the
/// vendor being slow), then succeeds. Every other run of the backend waits for the slot.
struct Slow {
    caps: Capabilities,
    slots: Arc<FairSlots>,
    vendor: Arc<Semaphore>,
}

#[async_trait]
impl Adapter for Slow {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn find_devices(&self, _: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        Ok(Vec::new())
    }

    fn budgets(&self) -> Vec<BudgetUse> {
        vec![BudgetUse {
            name: "sessions",
            in_use: self.slots.in_use(),
            capacity: self.slots.capacity(),
            waiting: self.slots.waiting(),
            held: true,
        }]
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        _: Option<serde_json::Value>,
    ) -> Result<Step, AdapterError> {
        let action = ctx.action_id.to_string();
        let updates = if ctx.stop.reason().is_some() {
            Vec::new()
        } else {
            let _slot = self.slots.acquire(ctx.device_id, ctx.tenant, &action).await;
            self.vendor.acquire().await.unwrap().forget();
            (0..ctx.commands.len())
                .map(|i| CommandUpdate::succeeded(i, CommandResult::Done))
                .collect()
        };
        Ok(Step { checkpoint: json!({}), updates, next: Next::Done })
    }
}

fn caps(backend: &str, kind: CommandKind) -> Capabilities {
    Capabilities {
        backend: backend.into(),
        kind: "test".into(),
        commands: vec![CommandSupport { command: kind, via: Via::Native, notes: None }],
        limits: Limits::default(),
    }
}

async fn submit(engine: &Engine, tenant: &str, req: serde_json::Value) -> Action {
    let req: ActionRequest = serde_json::from_value(req).unwrap();
    match engine.submit(tenant, req, SubmitMeta::default()).await.unwrap() {
        Submitted::Created(a) => a,
        Submitted::Replayed(_) => panic!("unexpected replay"),
    }
}

async fn finished(engine: &Engine, tenant: &str, id: uuid::Uuid) -> Option<Action> {
    for _ in 0..100 {
        let a = engine.wait_action(tenant, id, Duration::from_millis(100)).await.unwrap();
        if a.status.is_terminal() {
            return Some(a);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_waiting_for_vendor_slots_does_not_starve_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("edrgate.db")).await.unwrap();
    let files = FileStore::local(&dir.path().join("files"), store.clone()).await.unwrap();
    let vendor = Arc::new(Semaphore::new(0));
    let slow: Arc<dyn Adapter> = Arc::new(Slow {
        caps: caps("slow", CommandKind::ProcessList),
        slots: FairSlots::new(1),
        vendor: Arc::clone(&vendor),
    });
    // The other tenant's backend answers at once (its vendor has permits to spare).
    let fast: Arc<dyn Adapter> = Arc::new(Slow {
        caps: caps("fast", CommandKind::Isolate),
        slots: FairSlots::new(1),
        vendor: Arc::new(Semaphore::new(100)),
    });
    let tenants = HashMap::from([
        ("alpha".to_owned(), BTreeMap::from([("slow".to_owned(), slow)])),
        ("beta".to_owned(), BTreeMap::from([("fast".to_owned(), fast)])),
    ]);
    let opts = EngineOptions { max_in_flight: 8, ..EngineOptions::default() };
    let engine = Engine::new(store, files, Arc::new(Backends::new(tenants)), opts);
    engine.start();

    let targets: Vec<_> =
        (0..40).map(|i| json!({"backend": "slow", "device_id": format!("d{i}")})).collect();
    let fan_out = submit(
        &engine,
        "alpha",
        json!({"targets": targets, "commands": [{"type": "process_list"}]}),
    )
    .await;
    let isolate = submit(
        &engine,
        "beta",
        json!({"targets": [{"backend": "fast", "device_id": "x"}], "commands": [{"type": "isolate"}]}),
    )
    .await;
    let done = finished(&engine, "beta", isolate.id).await;
    assert_eq!(
        done.map(|a| a.status),
        Some(Status::Succeeded),
        "the isolate waited behind the other tenant's fan-out"
    );
    // The fan-out was not starved either: it finishes once its vendor answers.
    vendor.add_permits(1000);
    let done = finished(&engine, "alpha", fan_out.id).await.expect("the fan-out did not finish");
    assert_eq!(done.status, Status::Succeeded);
    engine.shutdown(Duration::from_secs(5)).await;
}
