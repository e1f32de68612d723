//! The error an adapter returns, with what the engine needs to decide about retrying.

use std::time::Duration;

use crate::model::{ErrorCode, ErrorInfo};

/// An adapter failure: the normalized error plus retry hints.
///
/// Retrying is decided by the error, not by the caller (see `is_retryable`): transport errors,
/// 5xx and 429 are transient; everything a vendor rejected on purpose is permanent.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}: {}", info.code.as_str(), info.message)]
pub struct AdapterError {
    pub info: ErrorInfo,
    /// A transient failure worth trying again (with back-off) while the deadline allows.
    pub retryable: bool,
    /// The vendor's `Retry-After`, which overrides the back-off.
    pub retry_after: Option<Duration>,
    /// Set only by [`AdapterError::lease_lost`]: a flag rather than a code, so that no vendor
    /// error (a vendor's own 409 maps to `conflict` too) can pass for it.
    lease_lost: bool,
}

impl AdapterError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AdapterError {
            info: ErrorInfo::new(code, message),
            retryable: false,
            retry_after: None,
            lease_lost: false,
        }
    }

    /// The journal refused because the run's lease was taken over: another worker drives the
    /// run now, so this one must make no further vendor call for it, and must not retry.
    /// [`crate::Journal`] implementations return it; the step driver stops on it.
    pub fn lease_lost() -> Self {
        AdapterError {
            lease_lost: true,
            ..Self::new(ErrorCode::Conflict, "the run's lease was taken over by another worker")
        }
    }

    /// Whether this is [`AdapterError::lease_lost`].
    pub fn is_lease_lost(&self) -> bool {
        self.lease_lost
    }

    /// A transient failure (connection refused, 5xx, 429).
    pub fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        AdapterError { retryable: true, ..Self::new(code, message) }
    }

    pub fn with_vendor(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.info = self.info.with_vendor(code, message);
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.info.code
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<AdapterError> for ErrorInfo {
    fn from(e: AdapterError) -> Self {
        e.info
    }
}
