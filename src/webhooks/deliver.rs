//! The senders: one loop per replica that turns the outbox's new events into deliveries,
//! claims the due deliveries (leased, so a replica that dies mid-send leaves them to be sent
//! again with the same `webhook-id`), sends them concurrently under the in-flight caps, and
//! records each attempt (delivered, retried after the next delay, or failed for good).
//!
//! Sending never blocks the engine: it runs on its own tasks, with its own timeouts, and the
//! engine only writes the events (in the transactions of its changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::destination;
use super::settings::{Header, Settings, check_header};
use super::sign::{Secret, signature_header};
use crate::store::webhooks::{Attempt, CALLBACK, ClaimedDelivery};
use crate::store::{Store, now_ms};

/// Events dispatched per transaction.
const DISPATCH_BATCH: u32 = 200;
/// How often the loop looks at the store without being woken (deliveries whose retry time
/// came, another replica's events when no change reached this one).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Changes that wake the loop within this much of each other make one pass over the store.
const COALESCE: Duration = Duration::from_millis(50);
/// How often events and deliveries past retention are removed.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Longest text kept of why an attempt failed.
const MAX_ERROR: usize = 300;

/// The webhook machinery of one replica.
pub struct Webhooks {
    store: Store,
    settings: ArcSwap<Settings>,
    /// This replica's lease owner id for deliveries.
    owner: String,
    wake: Notify,
    /// Deliveries being sent here, per subscription.
    in_flight: Mutex<HashMap<String, u32>>,
}

/// Where one delivery goes and how it is signed.
struct Target {
    url: String,
    secrets: Vec<Secret>,
    header: Option<Header>,
}

impl Webhooks {
    pub fn new(store: Store, settings: Settings) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            store,
            settings: ArcSwap::from_pointee(settings),
            owner: format!("edrgate-webhooks-{}", Uuid::now_v7().simple()),
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Installs reloaded settings; deliveries being sent finish with the old ones.
    pub fn replace_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
        self.wake.notify_one();
    }

    /// Looks at the store now (a delivery was made due by the API).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the senders until `shutdown`, woken by the engine's `changes` (actions that
    /// changed here or, through PostgreSQL's notifications, on another replica).
    pub fn start(
        self: &Arc<Self>,
        changes: broadcast::Receiver<Uuid>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(Arc::clone(self).run(changes, shutdown));
    }

    async fn run(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<Uuid>,
        shutdown: CancellationToken,
    ) {
        let mut sending = JoinSet::new();
        let mut slots = Arc::new(Semaphore::new(self.settings().max_in_flight as usize));
        let mut slots_for = self.settings().max_in_flight;
        let mut purged = tokio::time::Instant::now();
        loop {
            let settings = self.settings();
            if settings.max_in_flight != slots_for {
                // A reload changed the cap: new sends take from a new semaphore.
                slots = Arc::new(Semaphore::new(settings.max_in_flight as usize));
                slots_for = settings.max_in_flight;
            }
            if let Err(error) = self.dispatch(&settings).await {
                tracing::warn!(%error, "webhooks: dispatching events failed; retrying");
            }
            match self.claim(&settings, &slots).await {
                Ok(claimed) => {
                    for (delivery, permit) in claimed {
                        let this = Arc::clone(&self);
                        let settings = Arc::clone(&settings);
                        sending.spawn(async move {
                            this.deliver(&settings, delivery).await;
                            drop(permit);
                        });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "webhooks: claiming deliveries failed; retrying")
                }
            }
            while sending.try_join_next().is_some() {}
            if purged.elapsed() >= PURGE_EVERY {
                purged = tokio::time::Instant::now();
                self.purge(&settings).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                _ = changes.recv() => {
                    // Every visible step of every run is a change: a burst of them is one
                    // pass, at most one per `COALESCE`.
                    tokio::time::sleep(COALESCE).await;
                    while changes.try_recv().is_ok() {}
                }
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        // Deliveries being sent get the timeout to finish; the rest are sent again by whoever
        // claims them once their leases run out.
        let timeout = self.settings().timeout;
        let _ =
            tokio::time::timeout(timeout, async { while sending.join_next().await.is_some() {} })
                .await;
    }

    async fn dispatch(&self, settings: &Settings) -> crate::store::Result<()> {
        let configured = |tenant: &str, kind| settings.configured(tenant, kind);
        while self.store.dispatch_events(DISPATCH_BATCH, &configured).await?
            == DISPATCH_BATCH as usize
        {}
        Ok(())
    }

    /// Claims as many due deliveries as there are free senders, each with its sender's permit,
    /// and no more to one subscription than `max_in_flight_per_destination` at once (with
    /// those being sent already): a batch may be all to one subscription, so each batch is
    /// at most the room the fullest subscription not at its cap has left.
    async fn claim(
        &self,
        settings: &Settings,
        slots: &Arc<Semaphore>,
    ) -> crate::store::Result<Vec<(ClaimedDelivery, tokio::sync::OwnedSemaphorePermit)>> {
        let cap = settings.max_in_flight_per_destination.max(1);
        // Past the attempt's own timeout, with room for recording it.
        let lease = settings.timeout + Duration::from_secs(10);
        let mut out = Vec::new();
        loop {
            let free = slots.available_permits();
            if free == 0 {
                break;
            }
            let (busy, fullest) = {
                let in_flight = lock(&self.in_flight);
                let busy: Vec<String> = in_flight
                    .iter()
                    .filter(|(_, n)| **n >= cap)
                    .map(|(id, _)| id.clone())
                    .collect();
                let fullest = in_flight.values().filter(|n| **n < cap).max().copied().unwrap_or(0);
                (busy, fullest)
            };
            let limit = u32::try_from(free).unwrap_or(u32::MAX).min(cap - fullest);
            let claimed = match self.store.claim_deliveries(&self.owner, lease, limit, &busy).await
            {
                Ok(claimed) => claimed,
                Err(error) if out.is_empty() => return Err(error),
                // Those claimed already are sent; the rest wait for the next round.
                Err(error) => {
                    tracing::warn!(%error, "webhooks: claiming deliveries failed; retrying");
                    break;
                }
            };
            let full = claimed.len() == limit as usize;
            for delivery in claimed {
                let Ok(permit) = Arc::clone(slots).try_acquire_owned() else { break };
                if delivery.webhook_id != CALLBACK {
                    *lock(&self.in_flight).entry(delivery.webhook_id.clone()).or_default() += 1;
                }
                out.push((delivery, permit));
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// One attempt, recorded.
    async fn deliver(&self, settings: &Settings, delivery: ClaimedDelivery) {
        let attempt = self.attempt(settings, &delivery).await;
        if delivery.webhook_id != CALLBACK {
            let mut in_flight = lock(&self.in_flight);
            if let Some(n) = in_flight.get_mut(&delivery.webhook_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    in_flight.remove(&delivery.webhook_id);
                }
            }
        }
        match &attempt {
            Attempt::Delivered { status } => {
                tracing::debug!(delivery = %delivery.id, webhook = %delivery.webhook_id, status, "webhook delivered");
            }
            Attempt::NotDelivered { status, error, retry_at } => {
                tracing::info!(
                    delivery = %delivery.id,
                    webhook = %delivery.webhook_id,
                    tenant = %delivery.tenant,
                    attempt = delivery.attempts,
                    status,
                    error = %error,
                    retry = retry_at.is_some(),
                    "webhook not delivered"
                );
            }
        }
        match self.store.finish_delivery(&delivery.id, &self.owner, &attempt).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(delivery = %delivery.id, "webhook delivery lease lost"),
            // The lease runs out and the delivery is sent again: at least once.
            Err(error) => {
                tracing::warn!(%error, delivery = %delivery.id, "recording a webhook attempt failed")
            }
        }
    }

    async fn attempt(&self, settings: &Settings, delivery: &ClaimedDelivery) -> Attempt {
        let failed = |error: String| Attempt::NotDelivered { status: None, error, retry_at: None };
        let target = match self.target(settings, delivery).await {
            Ok(target) => target,
            Err(error) => return failed(error),
        };
        // IP-literal URLs do not go through the guarded resolver: checked here, every time
        // (the policy may have changed since the subscription was made).
        if let Err(refused) = settings.policy.check_url(&target.url) {
            return failed(refused.to_string());
        }
        let timestamp = now_ms() / 1000;
        let body = delivery.body.as_bytes();
        let signature = signature_header(&target.secrets, &delivery.event_id, timestamp, body);
        let mut request = settings
            .client
            .post(&target.url)
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(delivery.body.clone());
        if let Some(h) = target.header {
            request = request.header(h.name, h.value);
        }
        let retry = |status: Option<u16>, error: String| {
            let delay = usize::try_from(delivery.attempts - 1)
                .ok()
                .and_then(|i| settings.retry_delays.get(i));
            let retry_at =
                delay.map(|d| now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
            Attempt::NotDelivered { status, error, retry_at }
        };
        match request.send().await {
            // The answer's body is not read: nothing of a receiver's is kept or can grow.
            Ok(answer) if answer.status().is_success() => {
                Attempt::Delivered { status: answer.status().as_u16() }
            }
            Ok(answer) => {
                let status = answer.status();
                retry(Some(status.as_u16()), format!("the receiver answered {status}"))
            }
            Err(error) => match destination::refusal(&error) {
                Some(refused) => failed(refused.to_string()),
                // Without the URL: a callback URL may carry the receiver's signature.
                None => retry(None, truncate(&error.without_url().to_string())),
            },
        }
    }

    /// The destination of a delivery as configured now: a subscription of the configuration,
    /// one made through the API, or the action's callback.
    async fn target(&self, settings: &Settings, d: &ClaimedDelivery) -> Result<Target, String> {
        let hooks = settings.tenants.get(&d.tenant);
        if d.webhook_id == CALLBACK {
            let callback = hooks.and_then(|h| h.callback.as_ref()).ok_or_else(|| {
                format!("tenants.{}.webhooks.callback is not configured", d.tenant)
            })?;
            let url = d.callback_url.clone().ok_or("the action has no callback_url")?;
            return Ok(Target {
                url,
                secrets: callback.secrets.clone(),
                header: callback.header.clone(),
            });
        }
        if let Some(s) = hooks.and_then(|h| h.subscriptions.get(&d.webhook_id)) {
            return Ok(Target {
                url: s.url.clone(),
                secrets: s.secrets.clone(),
                header: s.header.clone(),
            });
        }
        let row = self
            .store
            .webhook(&d.tenant, &d.webhook_id)
            .await
            .map_err(|e| format!("reading the subscription failed: {e}"))?
            .ok_or("the subscription no longer exists")?;
        let mut secrets = vec![Secret::parse(&row.secret).map_err(|e| e.to_string())?];
        if let (Some(previous), Some(until)) = (&row.previous_secret, row.previous_expires_at)
            && until > now_ms()
        {
            secrets.push(Secret::parse(previous).map_err(|e| e.to_string())?);
        }
        let header = match (&row.header_name, &row.header_value) {
            (Some(name), Some(value)) => Some(check_header(name, value)?),
            _ => None,
        };
        Ok(Target { url: row.url, secrets, header })
    }

    async fn purge(&self, settings: &Settings) {
        let before =
            now_ms() - i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX / 2);
        loop {
            match self.store.purge_events(before, 1000).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "webhooks: removing old events failed");
                    break;
                }
            }
        }
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
