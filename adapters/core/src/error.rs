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
}

impl AdapterError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AdapterError { info: ErrorInfo::new(code, message), retryable: false, retry_after: None }
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
