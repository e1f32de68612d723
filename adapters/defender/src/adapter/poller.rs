//! One batched status call for the pending machine actions of all runs on a backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edrgate_adapter::{AdapterError, ErrorCode};
use tokio::sync::oneshot;

use crate::client::DfClient;
use crate::wire::MachineAction;

/// How long the shared poller collects requests before one batched call.
const POLL_GATHER: Duration = Duration::from_millis(20);

/// Shared poller of one backend: requests arriving close together become one
/// `$filter=id in (…)` call (§4.4), so many pending actions cost one call of the 100/min budget.
pub(super) struct Poller {
    client: Arc<DfClient>,
    pending: Mutex<Option<HashMap<String, Vec<oneshot::Sender<PollResult>>>>>,
    /// One flush at a time: while a call waits for the endpoint's budget, new requests gather
    /// into the next batch instead of queueing calls of their own.
    flushing: tokio::sync::Mutex<()>,
}

type PollResult = Result<Option<MachineAction>, AdapterError>;

impl Poller {
    pub(super) fn new(client: Arc<DfClient>) -> Arc<Self> {
        Arc::new(Poller {
            client,
            pending: Mutex::new(None),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    /// The machine action `id` as the next batched call finds it (`None`: not listed).
    pub(super) async fn get(self: &Arc<Self>, id: &str) -> PollResult {
        let (tx, rx) = oneshot::channel();
        let start_flush = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = pending.is_none();
            pending.get_or_insert_with(HashMap::new).entry(id.to_owned()).or_default().push(tx);
            fresh
        };
        if start_flush {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.flush().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(AdapterError::transient(ErrorCode::Internal, "poller stopped")))
    }

    async fn flush(&self) {
        let _one = self.flushing.lock().await;
        tokio::time::sleep(POLL_GATHER).await;
        let batch =
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        let ids: Vec<String> = batch.keys().cloned().collect();
        match self.client.actions_by_id(&ids).await {
            Ok(actions) => {
                let mut by_id: HashMap<String, MachineAction> =
                    actions.into_iter().map(|a| (a.id.to_ascii_lowercase(), a)).collect();
                for (id, waiters) in batch {
                    let found = by_id.remove(&id.to_ascii_lowercase());
                    for w in waiters {
                        let _ = w.send(Ok(found.clone()));
                    }
                }
            }
            Err(e) => {
                for w in batch.into_values().flatten() {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
}
