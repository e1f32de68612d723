//! Reading actions (through the cache of assembled actions, validated by the store's
//! version), long-polls on their changes, listing, and cancels.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::{Action, ErrorCode, ErrorInfo, Status};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{Engine, not_found, store_error};
use crate::store::{Cursor, ListQuery};

impl Engine {
    /// The store's change counter and status of the tenant's action (`not_found` for another
    /// tenant's).
    async fn version(&self, tenant: &str, id: Uuid) -> Result<(i64, Status), ErrorInfo> {
        self.store.action_version(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)
    }

    /// The action as the store holds it now.
    ///
    /// Status reads are the hot path (callers poll), and assembling an action costs two queries
    /// and the decoding of every command's result. The store's version of the action (one
    /// cheap query, tenant-checked) says whether the copy assembled last time is still exact,
    /// so the store stays the source of truth and the cache holds across replicas.
    pub async fn action(&self, tenant: &str, id: Uuid) -> Result<Action, ErrorInfo> {
        let (version, _) = self.version(tenant, id).await?;
        if let Some((cached, action)) = self.snapshots.get(&id).await
            && cached == version
        {
            return Ok(Action::clone(&action));
        }
        let (action, version) =
            self.store.action(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)?;
        self.snapshots.insert(id, (version, Arc::new(action.clone()))).await;
        Ok(action)
    }

    /// The action once it changed, or after `wait` (long-poll). A finished action is returned
    /// at once.
    pub async fn wait_action(
        &self,
        tenant: &str,
        id: Uuid,
        wait: Duration,
    ) -> Result<Action, ErrorInfo> {
        let mut changes = self.changes.subscribe();
        let (version, status) = self.version(tenant, id).await?;
        if status.is_terminal() {
            return self.action(tenant, id).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => break,
                Ok(Ok(changed)) if changed != id => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
                // A matching change, or missed messages (lagged): look at the store.
                Ok(_) => {
                    let now = self.store.action_version(tenant, id).await.map_err(store_error)?;
                    if now.is_some_and(|(v, _)| v != version) {
                        break;
                    }
                }
            }
        }
        self.action(tenant, id).await
    }

    /// Ids of actions that change from now on, here or (PostgreSQL) on another replica; a
    /// lagging receiver missed some and should look at the store.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }

    pub async fn list(
        &self,
        tenant: &str,
        query: &ListQuery,
    ) -> Result<(Vec<Action>, Option<Cursor>), ErrorInfo> {
        self.store.list(tenant, query).await.map_err(store_error)
    }

    /// Requests a cancel. Queued work is dropped, running commands are cancelled at the vendor
    /// where it allows; a finished action is a conflict.
    pub async fn cancel(&self, tenant: &str, id: Uuid) -> Result<Action, ErrorInfo> {
        let (_, status) = self.version(tenant, id).await?;
        if status.is_terminal() {
            return Err(ErrorInfo::new(
                ErrorCode::Conflict,
                format!("the action already finished ({})", status.as_str()),
            ));
        }
        self.store.request_cancel(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)?;
        self.stop_local_runs(id, StopReason::Cancelled);
        let _ = self.changes.send(id);
        self.work.notify_one();
        self.action(tenant, id).await
    }
}
