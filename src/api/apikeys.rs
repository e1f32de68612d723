//! Tenant API keys: long-lived opaque credentials for clients that send one static token
//! (cbapi's `X-Auth-Token`), created and revoked through the admin API.

use crate::auth::Caller;

use super::ApiState;
use super::problem::ApiError;

/// The caller a static credential names: an edrgate API key, or else a JWT (the Carbon Black
/// front door accepts either in `X-Auth-Token`); then the tenant's request rate.
#[allow(dead_code)] // used by the front doors being built
pub(crate) async fn authenticate(state: &ApiState, presented: &str) -> Result<Caller, ApiError> {
    let caller = state.auth.authenticate(presented).await?;
    state.auth.check_rate(&caller.tenant)?;
    Ok(caller)
}
