//! Server info and sensors (front-doors.md §1.2 R1–R6, §1.3 "Sensor"): a sensor is one
//! device of one of the tenant's backends, under its durable integer alias ([`super::ids`]).
//!
//! Device records come from the backends ([`crate::backends::Backends`]) and are kept
//! [`DEVICE_TTL`] in [`DeviceCache`]: cbapi refreshes a sensor every second while it waits
//! for isolation (MODELS `isolate`) and its job scheduler reads every sensor of a job, which
//! must not become one vendor call each (Defender's device APIs allow 100 a minute, §1.9).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use edrgate_adapter::{
    ActionRequest, Command, CommandResult, Device, DeviceSupport, OnError, Status, Target,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{CbCaller, CbError, CbState, door_detail, ids};
use crate::api::request::RequestMeta;
use crate::auth::Permission;
use crate::engine::{SubmitMeta, Submitted};
use crate::store::cb_front_door::CbSensorRow;

/// How long a device record answers for its sensor before the backend is asked again. cbapi
/// itself caches a sensor 60 s (CONN `select_instance`), so this is no staler than clients
/// already are.
pub const DEVICE_TTL: Duration = Duration::from_secs(30);
/// Page size of `GET /api/v2/sensor` when `rows` is not given, and the largest: cbapi asks
/// 100 at a time (MODELS `SensorPaginatedQuery`).
const MAX_ROWS: usize = 100;
/// The server version `/api/info` reports: at least 5.0 (cbapi refuses older servers, RAPI
/// `__init__`); 6.x makes cbapi read the storage partitions ([`partitions`]).
pub const SERVER_VERSION: &str = "6.3.0";
/// CB's `os_type` values (only 1 selects Windows paths in cbapi, LRAPI `path_join`).
pub const OS_WINDOWS: i64 = 1;
pub const OS_MAC: i64 = 2;
pub const OS_LINUX: i64 = 3;

pub(super) fn routes() -> Router<CbState> {
    Router::new()
        .route("/api/info", get(info))
        .route("/api/v1/storage/events/partition", get(partitions))
        .route("/api/v1/sensor", get(list_v1))
        .route("/api/v2/sensor", get(list_v2))
        .route("/api/v1/sensor/{id}", get(get_sensor).put(put_sensor))
        .route("/api/v1/process", get(process_search))
}

/// A device as the door last saw it, with what it can run.
#[derive(Debug)]
pub struct Found {
    pub device: Device,
    pub support: DeviceSupport,
}

/// Device records by (tenant, sensor id), for [`DEVICE_TTL`].
pub struct DeviceCache {
    cache: moka::future::Cache<(String, i64), Arc<Found>>,
}

impl DeviceCache {
    pub(crate) fn new() -> DeviceCache {
        DeviceCache {
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DEVICE_TTL)
                .build(),
        }
    }

    async fn put(&self, tenant: &str, id: i64, found: Arc<Found>) {
        self.cache.insert((tenant.to_owned(), id), found).await;
    }
}

/// The device of sensor `row`, from the cache or its backend: by id where the backend looks
/// devices up by id, else by its last known hostname. `404` once the backend no longer has it
/// (or the tenant no longer has the backend).
pub async fn device(state: &CbState, row: &CbSensorRow) -> Result<Arc<Found>, CbError> {
    let key = (row.tenant.clone(), row.id);
    if let Some(hit) = state.devices.cache.get(&key).await {
        return Ok(hit);
    }
    let gone = || CbError::not_found(format!("no sensor {}", row.id));
    let backends = state.api.engine.backends();
    let Some(adapter) = backends.adapter(&row.tenant, &row.backend) else { return Err(gone()) };
    let device = match adapter.device(&row.device_id).await {
        Ok(Some(device)) => device,
        Ok(None) => adapter
            .find_devices(Some(&row.hostname))
            .await?
            .into_iter()
            .find(|d| d.device_id == row.device_id)
            .ok_or_else(gone)?,
        Err(e) if e.code() == edrgate_adapter::ErrorCode::DeviceNotFound => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let support = adapter.device_support(&device);
    let found = Arc::new(Found { device, support });
    state.devices.put(&row.tenant, row.id, Arc::clone(&found)).await;
    Ok(found)
}

/// CB's `os_type` for an edrgate OS name (`Windows10`, `Windows 11 Pro`, `Ubuntu 22.04`,
/// `macOS 14`…). A device whose backend reports no OS counts as Windows, the platform every
/// backend here serves first, so cbapi builds `c:\…` paths for it (LRAPI `path_join`).
pub fn os_type(os: Option<&str>) -> i64 {
    let Some(os) = os.map(str::to_ascii_lowercase) else { return OS_WINDOWS };
    // Mac first: "darwin" contains "win".
    if ["mac", "os x", "osx", "darwin"].iter().any(|m| os.contains(m)) {
        OS_MAC
    } else if os.contains("win") {
        OS_WINDOWS
    } else {
        OS_LINUX
    }
}

/// RFC 3339 of unix milliseconds, timezone-aware as cbapi's scheduler needs (§1.3).
fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// The device's confirmed isolation: the outcome of the door's last isolation action once it
/// succeeded (the vendor's reported containment), else what the backend reports.
async fn confirmed_isolation(state: &CbState, row: &CbSensorRow, found: &Found) -> bool {
    let reported = found.device.isolated.unwrap_or(false);
    let Some(id) = row.isolation_action_id.as_deref().and_then(|id| Uuid::parse_str(id).ok())
    else {
        return reported;
    };
    let Ok(action) = state.api.engine.action(&row.tenant, id).await else { return reported };
    let outcome = action.runs.iter().flat_map(|r| &r.commands).find_map(|c| match &c.result {
        Some(CommandResult::Containment { isolated }) if c.status == Status::Succeeded => {
            Some(*isolated)
        }
        _ => None,
    });
    outcome.unwrap_or(reported)
}

/// The sensor object (§1.3): every field cbapi indexes is present (`isolate()` reads six of
/// them, the job scheduler parses the byte counters as integers and sorts on a
/// timezone-aware `next_checkin_time`); values edrgate does not know are CB's neutral ones.
pub async fn render(state: &CbState, row: &CbSensorRow, found: &Found) -> Value {
    let d = &found.device;
    let is_isolating = confirmed_isolation(state, row, found).await;
    let requested = row.isolation_requested.unwrap_or(is_isolating);
    let group_id = d.group.as_deref().and_then(|g| g.parse::<i64>().ok()).unwrap_or(1);
    let last_seen = d.last_seen.clone().unwrap_or_else(|| rfc3339_ms(row.created_at));
    let os = d.os.clone().unwrap_or_default();
    json!({
        "id": row.id,
        "computer_name": d.hostname,
        "computer_dns_name": d.hostname,
        "computer_sid": "",
        "os_type": os_type(d.os.as_deref()),
        "os_environment_display_string": os,
        "os_environment_id": 0,
        "status": if d.online { "Online" } else { "Offline" },
        "supports_cblr": true,
        "network_isolation_enabled": requested,
        "is_isolating": is_isolating,
        "restart_queued": false,
        "uninstall": false,
        "uninstalled": null,
        "group_id": group_id,
        "notes": null,
        "event_log_flush_time": null,
        "num_storefiles_bytes": "0",
        "num_eventlog_bytes": "0",
        "next_checkin_time": last_seen,
        "last_checkin_time": last_seen,
        "last_update": last_seen,
        "registration_time": rfc3339_ms(row.created_at),
        "network_adapters": "",
        "build_id": 0,
        "build_version_string": "",
        "power_state": 0,
        "sensor_health_status": 100,
        "sensor_health_message": "Healthy",
        "node_id": 0,
        "physical_memory_size": "0",
        "systemvolume_free_size": "0",
        "systemvolume_total_size": "0",
        "clock_delta": "0",
        "sensor_uptime": "0",
        "uptime": "0",
        "boot_id": "0",
        "edrgate": {"backend": d.backend, "device_id": d.device_id},
    })
}

/// R1: what cbapi's constructor checks (`version` ≥ 5.0, `cblrEnabled`).
async fn info(_caller: CbCaller) -> axum::Json<Value> {
    axum::Json(json!({
        "version": SERVER_VERSION,
        "cblrEnabled": true,
        "linuxOsxTamperSupport": false,
        "liveResponseAutoAddPermission": false,
        "maxSearchResultRows": MAX_ROWS,
        "edrgate": true,
    }))
}

/// R2: cbapi ≥ 6.0 lists storage partitions at construction (RAPI `__init__`); edrgate has
/// none, and an empty object is iterated as no partitions (MODELS `StoragePartitionQuery`).
async fn partitions(_caller: CbCaller) -> axum::Json<Value> {
    axum::Json(json!({}))
}

/// The XSOAR CarbonBlackResponseV2 test button searches processes (XCBR `test_module`);
/// edrgate has no process event store, so every search is empty.
async fn process_search(_caller: CbCaller) -> axum::Json<Value> {
    axum::Json(json!({"results": [], "total_results": 0, "start": 0, "terms": [], "facets": {}}))
}

/// R3.
async fn get_sensor(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, CbError> {
    caller.require(Permission::Read).map_err(crate::api::problem::ApiError::from)?;
    let row = ids::sensor(&state, &caller.tenant, &id).await?;
    let found = device(&state, &row).await?;
    Ok(axum::Json(render(&state, &row, &found).await))
}

/// The filters of R4 and R5 (extra parameters, such as XSOAR's `inactive_filter_days`, are
/// accepted and ignored).
#[derive(Debug, Default, Deserialize)]
struct Filter {
    hostname: Option<String>,
    ip: Option<String>,
    groupid: Option<String>,
    /// R4 only: where the page starts, and its size (`0`: a count).
    start: Option<String>,
    rows: Option<String>,
    #[serde(rename = "sort.dir")]
    sort_dir: Option<String>,
}

/// Longest accepted filter value.
const MAX_FILTER_LEN: usize = 256;

/// The tenant's devices matching `filter`, with their sensor rows, by `computer_name`.
async fn matching(
    state: &CbState,
    tenant: &str,
    filter: &Filter,
) -> Result<Vec<(CbSensorRow, Arc<Found>)>, CbError> {
    let fields = [&filter.hostname, &filter.ip, &filter.groupid];
    if fields.iter().any(|f| f.as_deref().is_some_and(|v| v.len() > MAX_FILTER_LEN)) {
        return Err(CbError::bad_request(format!(
            "filter values are at most {MAX_FILTER_LEN} bytes"
        )));
    }
    let hostname = filter.hostname.as_deref().map(str::trim).filter(|h| !h.is_empty());
    // edrgate's device records carry no addresses: no device matches an `ip` filter.
    if filter.ip.as_deref().is_some_and(|ip| !ip.trim().is_empty()) {
        return Ok(Vec::new());
    }
    let devices = state.api.engine.backends().devices(tenant, hostname).await?;
    let mut found = Vec::new();
    for (device, support) in devices {
        // CB matches the sensor's name, not a substring of it, as backends' searches may.
        if hostname.is_some_and(|h| !edrgate_adapter::names_device(&device.hostname, h)) {
            continue;
        }
        if let Some(group) = filter.groupid.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
            let group_id = device.group.as_deref().and_then(|g| g.parse::<i64>().ok()).unwrap_or(1);
            if group.parse::<i64>().ok() != Some(group_id) {
                continue;
            }
        }
        let id = ids::sensor_id(state, tenant, &device).await?;
        let Some(row) = state.store().cb_sensor(tenant, id).await? else { continue };
        let entry = Arc::new(Found { device, support });
        state.devices.put(tenant, id, Arc::clone(&entry)).await;
        found.push((row, entry));
    }
    found.sort_by(|(a, fa), (b, fb)| {
        let (x, y) = (&fa.device.hostname, &fb.device.hostname);
        x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()).then(a.id.cmp(&b.id))
    });
    if filter.sort_dir.as_deref().is_some_and(|d| d.eq_ignore_ascii_case("desc")) {
        found.reverse();
    }
    Ok(found)
}

/// A non-negative integer query parameter; malformed is a `400`.
fn count_param(name: &str, value: Option<&str>, default: usize) -> Result<usize, CbError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| CbError::bad_request(format!("{name}: not a count"))),
    }
}

/// R4: cbapi's `select(Sensor).where("hostname:X")` sends `hostname=X` with `start`, `rows`
/// and the sort (MODELS `SensorPaginatedQuery`); `rows=0` asks for the count only.
async fn list_v2(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Query(filter): Query<Filter>,
) -> Result<axum::Json<Value>, CbError> {
    caller.require(Permission::Read).map_err(crate::api::problem::ApiError::from)?;
    let start = count_param("start", filter.start.as_deref(), 0)?;
    let rows = count_param("rows", filter.rows.as_deref(), MAX_ROWS)?.min(MAX_ROWS);
    let all = matching(&state, &caller.tenant, &filter).await?;
    let mut results = Vec::new();
    for (row, found) in all.iter().skip(start).take(rows) {
        results.push(render(&state, row, found).await);
    }
    Ok(axum::Json(json!({"results": results, "total_results": all.len()})))
}

/// R5: the v1 search XSOAR and Splunk use; a JSON array.
async fn list_v1(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Query(filter): Query<Filter>,
) -> Result<axum::Json<Value>, CbError> {
    caller.require(Permission::Read).map_err(crate::api::problem::ApiError::from)?;
    let all = matching(&state, &caller.tenant, &filter).await?;
    let mut results = Vec::new();
    // The same cap as a v2 page: a search naming nothing must not render a whole fleet.
    for (row, found) in all.iter().take(MAX_ROWS * 10) {
        results.push(render(&state, row, found).await);
    }
    Ok(axum::Json(Value::Array(results)))
}

/// R6: the body of a sensor update. Clients send the whole sensor back (cbapi
/// `_update_object`) or a few fields (XSOAR, Splunk); only isolation is acted on, other
/// fields are CB sensor settings edrgate has no equivalent for.
#[derive(Debug, Deserialize)]
struct SensorUpdate {
    network_isolation_enabled: Option<bool>,
}

/// R6: `network_isolation_enabled` becomes an `isolate` or `release` action on the device
/// (audited with the door and the sensor). The answer is the updated sensor: the request at
/// once in `network_isolation_enabled`, `is_isolating` once the vendor confirms (§1.3).
/// Repeating a request (cbapi may PUT the same state again) replays its action instead of
/// submitting another: the idempotency key is the sensor's isolation request number, which
/// changes only when the requested state does.
async fn put_sensor(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, CbError> {
    caller.require(Permission::Read).map_err(crate::api::problem::ApiError::from)?;
    let update: SensorUpdate = serde_json::from_slice(&body)
        .map_err(|e| CbError::bad_request(format!("the body is not a sensor update: {e}")))?;
    let mut row = ids::sensor(&state, &caller.tenant, &id).await?;
    let found = device(&state, &row).await?;
    if let Some(isolated) = update.network_isolation_enabled {
        // Checked before the request is recorded: a refused caller changes nothing.
        caller.require(Permission::Contain).map_err(crate::api::problem::ApiError::from)?;
        let store = state.store();
        let previous = match row.isolation_action_id.as_deref().map(Uuid::parse_str) {
            Some(Ok(action)) => state.api.engine.action(&caller.tenant, action).await.ok(),
            _ => None,
        };
        // Whole-object PUTs (cbapi, XSOAR's group change) carry the current state: with no
        // request of the door's yet, the state the device is confirmed in asks for nothing.
        let confirmed = confirmed_isolation(&state, &row, &found).await;
        if row.isolation_requested.is_none() && isolated == confirmed {
            return Ok(axum::Json(render(&state, &row, &found).await));
        }
        // The same request again replays its action, unless that action ended without
        // carrying it out: then asking again is a new request (a new action).
        let retry =
            previous.is_some_and(|a| a.status.is_terminal() && a.status != Status::Succeeded);
        let seq = store.cb_request_isolation(&caller.tenant, row.id, isolated, retry).await?;
        let Some(seq) = seq else {
            return Err(CbError::not_found(format!("no sensor {id}")));
        };
        let command = if isolated { Command::Isolate } else { Command::Release };
        let request = ActionRequest {
            targets: vec![Target::Device {
                backend: row.backend.clone(),
                device_id: row.device_id.clone(),
            }],
            commands: vec![command],
            comment: Some(format!("Carbon Black front door: sensor {} isolation", row.id)),
            on_error: OnError::default(),
            timeout_seconds: None,
            callback_url: None,
        };
        let submit_meta = SubmitMeta {
            idempotency_key: Some(format!("carbonblack:sensor:{}:isolation:{seq}", row.id)),
            request_id: meta.request_id.clone(),
            subject: caller.subject.clone(),
        };
        let detail = door_detail(json!({
            "sensor_id": row.id,
            "network_isolation_enabled": isolated,
        }));
        let submitted = crate::api::actions::submit(
            &state.api,
            &caller,
            &meta,
            request,
            submit_meta,
            Some(detail),
        )
        .await?;
        let action = match submitted {
            Submitted::Created(a) | Submitted::Replayed(a) => a,
        };
        tracing::info!(
            tenant = %caller.tenant, sensor_id = row.id, action_id = %action.id, isolated,
            "carbonblack door: isolation requested"
        );
        store.cb_set_isolation_action(&caller.tenant, row.id, seq, &action.id.to_string()).await?;
        row = store
            .cb_sensor(&caller.tenant, row.id)
            .await?
            .ok_or_else(|| CbError::not_found(format!("no sensor {id}")))?;
    }
    Ok(axum::Json(render(&state, &row, &found).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_map_to_cb_os_types() {
        for (os, t) in [
            (Some("Windows10"), OS_WINDOWS),
            (Some("Windows 11 Pro"), OS_WINDOWS),
            (Some("WINDOWS"), OS_WINDOWS),
            (Some("Ubuntu 22.04.3 LTS"), OS_LINUX),
            (Some("macOS 14"), OS_MAC),
            (Some("Mac OS X 10.15"), OS_MAC),
            (Some("Darwin 23"), OS_MAC),
            (None, OS_WINDOWS),
        ] {
            assert_eq!(os_type(os), t, "{os:?}");
        }
    }

    #[test]
    fn times_are_timezone_aware() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert!(rfc3339_ms(1_700_000_000_000).ends_with('Z'));
    }
}
