//! `GET /v1/events`: the tenant's action and run events as Server-Sent Events, from the
//! store's outbox, so a console can follow progress without polling and resume after a
//! disconnect without a gap (`Last-Event-ID`; the outbox orders a tenant's events by commit).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ApiState;
use super::problem::{ApiError, Problem, Query};
use crate::auth::{Caller, Permission};

/// Events read from the store at a time.
const PAGE: u32 = 100;
/// How often a quiet stream looks at the store anyway (events of another replica whose
/// notification was lost).
const POLL: Duration = Duration::from_secs(2);
/// Comment lines sent while nothing happens, so proxies and clients keep the stream open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// What a client waits before reconnecting (the stream's `retry:` field).
const RECONNECT: Duration = Duration::from_secs(3);

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Resume after this event (the `id:` of the last one received), as `Last-Event-ID` does;
    /// `0`: from the oldest event kept (`webhooks.retention_hours`). Absent: events from now on.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    pub after: Option<i64>,
    /// Only the events of this action.
    pub action_id: Option<Uuid>,
}

/// Stream events
///
/// The tenant's events as `text/event-stream`: each has `id:` (its position, for resuming),
/// `event:` (`action.created`, `run.finished`, `action.finished`) and `data:` (the same JSON
/// document webhooks deliver: `id`, `type`, `timestamp`, `data`). Reconnect with the
/// `Last-Event-ID` header (browsers' `EventSource` does) to continue without a gap; comment
/// lines are sent every 15 s while nothing happens.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "StreamEvents",
    params(
        EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (`id:` of the last event received)", pattern = "^[0-9]{1,16}$"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad `after` or `Last-Event-ID`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read permission", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn stream_events(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Read)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|t| (1..=16).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID: not an event id of this stream")
                })?,
        ),
    };
    if params.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after: an event id (0 or more)"));
    }
    // Subscribed before the first read, so no change between the two is missed.
    let changes = state.engine.subscribe_changes();
    let store = state.engine.store().clone();
    let tenant = caller.tenant.clone();
    let after = match resume.or(params.after) {
        Some(after) => after,
        None => store.last_event_seq(&tenant).await.map_err(|error| {
            tracing::error!(%error, "reading the event stream position failed");
            ApiError::internal()
        })?,
    };
    let stream = Stream {
        store,
        tenant,
        action_id: params.action_id,
        after,
        buffered: VecDeque::new(),
        changes,
        shutdown: state.shutdown.clone(),
        first: true,
    };
    let events = futures::stream::unfold(stream, Stream::next);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // nginx (the shipped configuration, and most others) would buffer the stream otherwise.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(response)
}

struct Stream {
    store: crate::store::Store,
    tenant: String,
    action_id: Option<Uuid>,
    after: i64,
    buffered: VecDeque<crate::store::events::Event>,
    changes: broadcast::Receiver<Uuid>,
    shutdown: tokio_util::sync::CancellationToken,
    first: bool,
}

impl Stream {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Stream)> {
        if std::mem::take(&mut self.first) {
            return Some((
                Ok(SseEvent::default().retry(RECONNECT).comment("edrgate events")),
                self,
            ));
        }
        loop {
            if let Some(e) = self.buffered.pop_front() {
                self.after = e.seq;
                let event = SseEvent::default().id(e.seq.to_string()).event(e.kind).data(e.body);
                return Some((Ok(event), self));
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.store.events_after(&self.tenant, self.after, self.action_id, PAGE).await {
                Ok(page) if !page.is_empty() => {
                    self.buffered.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    // The client reconnects with its Last-Event-ID and misses nothing.
                    tracing::warn!(%error, "reading events failed; ending the stream");
                    return None;
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                _ = self.changes.recv() => {
                    // A burst of changes is one look at the store.
                    while self.changes.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
