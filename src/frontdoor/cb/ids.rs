//! CB ids are integers that clients compare (cbapi and Splunk test `sensor_id == int`,
//! front-doors.md §1.10): a durable alias per (tenant, backend, device), never reused
//! (`cb_sensors`, migration 0019), and per session (`cb_sessions`).

use edrgate_adapter::Device;

use super::{CbError, CbState};
use crate::store::cb_front_door::CbSensorRow;

/// An id from a path or a query: a positive decimal integer (CB ids start at 1). Anything else
/// names nothing, so callers answer it as unknown (`404`), as for an id that was never made.
pub fn parse(id: &str) -> Option<i64> {
    let id = id.trim();
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok().filter(|n: &i64| *n > 0)
}

/// The sensor id of `device` for `tenant`, made on first sight.
pub async fn sensor_id(state: &CbState, tenant: &str, device: &Device) -> Result<i64, CbError> {
    Ok(state
        .store()
        .cb_sensor_alias(tenant, &device.backend, &device.device_id, &device.hostname)
        .await?)
}

/// The tenant's sensor `id` (a path segment); unknown, malformed or another tenant's: `404`.
pub async fn sensor(state: &CbState, tenant: &str, id: &str) -> Result<CbSensorRow, CbError> {
    let not_found = || CbError::not_found(format!("no sensor {id}"));
    let Some(n) = parse(id) else { return Err(not_found()) };
    state.store().cb_sensor(tenant, n).await?.ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ids_are_positive_decimal_integers() {
        assert_eq!(parse("17"), Some(17));
        for bad in ["", "0", "-1", "1.5", "0x10", "abc", "1234567890123456789", "1 2"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
