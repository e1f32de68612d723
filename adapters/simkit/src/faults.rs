//! Fault injection, once for every simulator: what a real network and a real vendor do to a
//! client that the vendor's routes cannot express on their own.
//!
//! [`Sim::router`](crate::Sim::router) puts a layer in front of the vendor's routes (the
//! admin routes under `/_sim/` are never faulted) that applies the current [`Faults`] to every
//! request, in this order:
//!
//! 1. `slow`: latency before the request is looked at;
//! 2. `drop_every` (unless `drop_after_processing`): the connection closes, nothing processed;
//! 3. `status_429_next`: 429 with `Retry-After: retry_after_secs`, nothing processed;
//! 4. `error_5xx_next`, then `error_5xx_every`: the vendor's 5xx, nothing processed;
//! 5. the vendor's routes process the request; `slow_response` (and, for side-effecting
//!    requests, `slow_effect_response`) delays the answer;
//! 6. `drop_every` with `drop_after_processing`, or `lose_answer_after_effect` on a request the
//!    simulator calls side-effecting ([`Sim::is_side_effect`](crate::Sim::is_side_effect)): the
//!    vendor acted, and the answer is lost (the connection closes); `garbage_after_effect`: the
//!    vendor acted, and its answer is a `200` whose body is not what the vendor sends (a proxy
//!    or a truncating middlebox: the client cannot read it).
//!
//! `clock_skew_secs` is no fault of the network but of the vendor's clock: every answer's
//! `Date` header is set from the skewed clock here, and the simulators take every timestamp
//! they emit from [`SimFaults::now`], so a client that compares the vendor's times with its
//! own clock is caught.
//!
//! "Every Nth" counts vendor requests from 1 ([`crate::every`]); "next N" settings count down
//! as they are used. Settings are changed in-process with [`SimFaults::set`] (or the vendor
//! simulator's own `set_faults`) and over HTTP, so tests in other processes can use them too:
//!
//! - `POST /_sim/faults` with a [`Faults`] JSON object (absent fields are off) replaces the
//!   settings, and answers like `GET`;
//! - `GET /_sim/faults`: `{"faults": {...}, "stats": {...}}`, the settings in effect (counts
//!   left) and the [`FaultStats`]. The same stats are in `GET /_sim/counters` under `requests`.
//!
//! `retry_after_violations` counts requests that arrived while the `Retry-After` of an earlier
//! injected 429 had not passed: a client honouring `Retry-After` keeps it at 0.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::every;

/// The fault settings (all off by default). JSON field names are the Rust ones; durations are
/// in milliseconds (`slow_ms`, `slow_response_ms`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every Nth request answers the vendor's 5xx before any processing (no side effect).
    pub error_5xx_every: Option<u32>,
    /// The next N requests answer the vendor's 5xx (a burst), before any processing.
    pub error_5xx_next: u32,
    /// The next N requests answer 429 with `Retry-After: retry_after_secs`, before any
    /// processing.
    pub status_429_next: u32,
    /// The `Retry-After` of injected 429s, in seconds. Default (0) means 1.
    pub retry_after_secs: u64,
    /// Every Nth request gets no response: the connection closes without a byte written.
    pub drop_every: Option<u32>,
    /// With `drop_every`: process the request first, then drop the response (the "did my
    /// POST happen?" case). Default false: dropped requests have no side effect.
    pub drop_after_processing: bool,
    /// The next N side-effecting requests are processed (the vendor acts, and records it in
    /// its [`SimLog`](crate::SimLog)), then their answer is lost.
    pub lose_answer_after_effect: u32,
    /// Latency added before every request is processed.
    #[serde(rename = "slow_ms", with = "millis")]
    pub slow: Option<Duration>,
    /// Latency added after a request was processed, before its response: the window in which
    /// a client cannot know whether its POST happened.
    #[serde(rename = "slow_response_ms", with = "millis")]
    pub slow_response: Option<Duration>,
    /// The same, for side-effecting requests only (a crash in that window is the hardest case
    /// for a client: the vendor acted, and it never heard).
    #[serde(rename = "slow_effect_response_ms", with = "millis")]
    pub slow_effect_response: Option<Duration>,
    /// The next N side-effecting requests are processed (the vendor acts), then answered
    /// `200` with a body no client can decode.
    pub garbage_after_effect: u32,
    /// How far the vendor's clock is off edrgate's (positive: ahead), in seconds: applied to
    /// the `Date` header and, by the simulators, to every timestamp they emit.
    pub clock_skew_secs: i64,
}

/// What the fault layer saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStats {
    /// Vendor requests received (faulted ones included; admin routes excluded).
    pub requests: u64,
    /// Side-effecting requests the vendor's routes processed (answered or not).
    pub side_effects_processed: u64,
    pub injected_5xx: u64,
    pub injected_429: u64,
    /// Requests dropped before processing.
    pub dropped: u64,
    /// Answers lost after the vendor processed the request (`drop_after_processing` and
    /// `lose_answer_after_effect`).
    pub answers_lost: u64,
    /// Requests that arrived before the `Retry-After` of an injected 429 had passed.
    pub retry_after_violations: u64,
    /// Side-effecting requests processed and answered with an undecodable `200`
    /// (`garbage_after_effect`).
    #[serde(default)]
    pub answers_garbled: u64,
}

/// What a fault answers instead of the vendor (the vendor's own body, via
/// [`Sim::fault_response`](crate::Sim::fault_response)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// The server is unavailable (a 5xx).
    Unavailable,
    /// Too many requests; retry after this many seconds.
    TooManyRequests { retry_after_secs: u64 },
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    stats: FaultStats,
    /// Until when the last injected 429 asked clients to wait.
    quiet_until: Option<Instant>,
}

/// A simulator's fault settings and stats; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct SimFaults {
    inner: Arc<Mutex<Inner>>,
}

/// What to do with one request, decided when it arrives.
enum Verdict {
    Pass { lose_answer: bool, garble: bool, side_effect: bool, slow_response: Option<Duration> },
    Drop,
    Answer(Injected),
}

impl SimFaults {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the settings (the stats are kept).
    pub fn set(&self, faults: Faults) {
        let mut s = self.lock();
        s.faults = faults;
        s.quiet_until = None;
    }

    /// Changes the settings in place.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    /// The settings in effect ("next N" counts as they stand).
    pub fn get(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> FaultStats {
        self.lock().stats.clone()
    }

    fn slow(&self) -> Option<Duration> {
        self.lock().faults.slow
    }

    /// The vendor's clock: the system clock moved by `clock_skew_secs`. Simulators take every
    /// timestamp they emit from it.
    pub fn now(&self) -> SystemTime {
        skewed(SystemTime::now(), self.lock().faults.clock_skew_secs)
    }

    /// [`Self::now`] in seconds since the Unix epoch.
    pub fn now_epoch_secs(&self) -> f64 {
        self.now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }

    /// [`Self::now`] in milliseconds since the Unix epoch.
    pub fn now_epoch_ms(&self) -> i64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// `clock_skew_secs` as it stands.
    pub fn clock_skew_secs(&self) -> i64 {
        self.lock().faults.clock_skew_secs
    }

    fn decide(&self, side_effect: bool) -> Verdict {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.stats.requests += 1;
        let n = s.stats.requests;
        let now = Instant::now();
        if s.quiet_until.is_some_and(|t| now < t) {
            s.stats.retry_after_violations += 1;
        }
        let f = &mut s.faults;
        let drop = every(f.drop_every, n);
        if drop && !f.drop_after_processing {
            s.stats.dropped += 1;
            return Verdict::Drop;
        }
        if f.status_429_next > 0 {
            f.status_429_next -= 1;
            let secs = f.retry_after_secs.max(1);
            s.stats.injected_429 += 1;
            s.quiet_until = Some(now + Duration::from_secs(secs));
            return Verdict::Answer(Injected::TooManyRequests { retry_after_secs: secs });
        }
        if !drop && (f.error_5xx_next > 0 || every(f.error_5xx_every, n)) {
            f.error_5xx_next = f.error_5xx_next.saturating_sub(1);
            s.stats.injected_5xx += 1;
            return Verdict::Answer(Injected::Unavailable);
        }
        let mut lose_answer = drop;
        if side_effect && f.lose_answer_after_effect > 0 {
            f.lose_answer_after_effect -= 1;
            lose_answer = true;
        }
        let mut garble = false;
        if side_effect && !lose_answer && f.garbage_after_effect > 0 {
            f.garbage_after_effect -= 1;
            garble = true;
        }
        let slow_response =
            if side_effect { f.slow_effect_response.max(f.slow_response) } else { f.slow_response };
        Verdict::Pass { lose_answer, garble, side_effect, slow_response }
    }

    fn processed(&self, side_effect: bool, lost: bool, garbled: bool) {
        let mut s = self.lock();
        if side_effect {
            s.stats.side_effects_processed += 1;
        }
        if lost {
            s.stats.answers_lost += 1;
        }
        if garbled {
            s.stats.answers_garbled += 1;
        }
    }

    /// `{"faults": ..., "stats": ...}`, as `GET /_sim/faults` serves it.
    pub fn to_json(&self) -> Value {
        let s = self.lock();
        json!({ "faults": s.faults, "stats": s.stats })
    }
}

/// [`Sim::is_side_effect`](crate::Sim::is_side_effect), erased.
pub(crate) type IsSideEffect = Arc<dyn Fn(&Method, &str) -> bool + Send + Sync>;

/// The layer's view of the simulator.
#[derive(Clone)]
pub(crate) struct Layer {
    pub(crate) faults: SimFaults,
    pub(crate) is_side_effect: IsSideEffect,
    pub(crate) respond: Arc<dyn Fn(Injected) -> Response + Send + Sync>,
}

/// The middleware in front of the vendor's routes (see the module docs).
pub(crate) async fn layer(State(l): State<Layer>, req: Request, next: Next) -> Response {
    if let Some(d) = l.faults.slow() {
        tokio::time::sleep(d).await;
    }
    let side_effect = (l.is_side_effect)(req.method(), req.uri().path());
    let mut resp = match l.faults.decide(side_effect) {
        Verdict::Drop => return crate::dropped(),
        Verdict::Answer(injected) => (l.respond)(injected),
        Verdict::Pass { lose_answer, garble, side_effect, slow_response } => {
            let resp = next.run(req).await;
            l.faults.processed(side_effect, lose_answer, garble);
            if let Some(d) = slow_response {
                tokio::time::sleep(d).await;
            }
            if lose_answer {
                return crate::dropped();
            }
            if garble { garbage() } else { resp }
        }
    };
    // The vendor's clock, skewed or not (hyper only adds a `Date` where there is none).
    if let Ok(date) = axum::http::HeaderValue::from_str(&http_date(l.faults.now())) {
        resp.headers_mut().insert(axum::http::header::DATE, date);
    }
    resp
}

/// A `200` no vendor client can read: the vendor's content type, a body cut off mid-value.
fn garbage() -> Response {
    use axum::response::IntoResponse as _;
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{\"id\": 4\u{0}<html>upstream reset</h",
    )
        .into_response()
}

fn skewed(t: SystemTime, skew_secs: i64) -> SystemTime {
    let by = Duration::from_secs(skew_secs.unsigned_abs());
    if skew_secs >= 0 { t + by } else { t.checked_sub(by).unwrap_or(UNIX_EPOCH) }
}

/// RFC 3339 UTC to the second: `2020-05-01T16:09:00Z`.
pub fn rfc3339_secs(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// An HTTP date (RFC 9110 §5.6.7, IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A generic answer for an injected fault: 503 or 429 with `Retry-After`, plain text.
pub fn plain_response(injected: Injected) -> Response {
    use axum::response::IntoResponse as _;
    match injected {
        Injected::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable (injected fault)")
                .into_response()
        }
        Injected::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, retry_after_secs.to_string())],
            "429 Too Many Requests (injected fault)",
        )
            .into_response(),
    }
}

/// `GET` and `POST /_sim/faults` (see the module docs).
pub(crate) fn admin_router(faults: SimFaults) -> Router {
    Router::new().route("/_sim/faults", get(show).post(replace)).with_state(faults)
}

async fn show(State(f): State<SimFaults>) -> Json<Value> {
    Json(f.to_json())
}

async fn replace(
    State(f): State<SimFaults>,
    body: Result<Json<Faults>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use axum::response::IntoResponse as _;
    match body {
        Ok(Json(faults)) => {
            f.set(faults);
            Json(f.to_json()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_as_json_with_milliseconds() {
        let f = Faults {
            error_5xx_next: 2,
            status_429_next: 1,
            retry_after_secs: 3,
            slow: Some(Duration::from_millis(40)),
            ..Faults::default()
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["slow_ms"], 40);
        assert_eq!(serde_json::from_value::<Faults>(v).unwrap(), f);
        let partial: Faults = serde_json::from_value(json!({"error_5xx_next": 1})).unwrap();
        assert_eq!(partial, Faults { error_5xx_next: 1, ..Faults::default() });
        assert!(serde_json::from_value::<Faults>(json!({"nope": 1})).is_err());
    }

    #[test]
    fn bursts_count_down_and_429s_open_a_quiet_window() {
        let f = SimFaults::new();
        f.set(Faults { status_429_next: 1, error_5xx_next: 2, ..Faults::default() });
        assert!(matches!(
            f.decide(false),
            Verdict::Answer(Injected::TooManyRequests { retry_after_secs: 1 })
        ));
        assert!(matches!(f.decide(false), Verdict::Answer(Injected::Unavailable)));
        assert!(matches!(f.decide(false), Verdict::Answer(Injected::Unavailable)));
        assert!(matches!(f.decide(false), Verdict::Pass { lose_answer: false, .. }));
        let s = f.stats();
        assert_eq!((s.requests, s.injected_429, s.injected_5xx), (4, 1, 2));
        assert_eq!(s.retry_after_violations, 3, "all three came within the Retry-After");
        assert_eq!(f.get().error_5xx_next, 0);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
        assert_eq!(rfc3339_secs(1_588_349_340), "2020-05-01T16:09:00Z");
    }

    #[test]
    fn http_dates_and_the_skewed_clock() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        let f = SimFaults::new();
        f.set(Faults { clock_skew_secs: -300, ..Faults::default() });
        let behind = SystemTime::now().duration_since(f.now()).unwrap();
        assert!((299..=301).contains(&behind.as_secs()), "{behind:?}");
        assert_eq!(skewed(t, 60), t + Duration::from_secs(60));
    }

    #[test]
    fn garbage_answers_only_side_effects_and_counts_down() {
        let f = SimFaults::new();
        f.set(Faults { garbage_after_effect: 1, ..Faults::default() });
        assert!(matches!(f.decide(false), Verdict::Pass { garble: false, .. }));
        assert!(matches!(f.decide(true), Verdict::Pass { garble: true, .. }));
        assert!(matches!(f.decide(true), Verdict::Pass { garble: false, .. }));
    }

    #[test]
    fn only_side_effects_lose_their_answer() {
        let f = SimFaults::new();
        f.set(Faults { lose_answer_after_effect: 1, ..Faults::default() });
        assert!(matches!(f.decide(false), Verdict::Pass { lose_answer: false, .. }));
        assert!(matches!(f.decide(true), Verdict::Pass { lose_answer: true, .. }));
        assert!(matches!(f.decide(true), Verdict::Pass { lose_answer: false, .. }));
    }
}
