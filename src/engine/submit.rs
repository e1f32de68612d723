//! Submission: a request checked against the limits, the model's rules and the tenant's
//! capabilities, then the action and one run per target written in one transaction before
//! the caller hears `202`.

use std::time::Duration;

use edrgate_adapter::{ActionRequest, CommandState, ErrorCode, ErrorInfo, Status, Target};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Engine, MAX_COMMANDS, MAX_COMMENT, MAX_TARGET_NAME, MAX_TARGETS, MAX_TIMEOUT_SECONDS,
    SubmitMeta, Submitted, internal, store_error,
};
use crate::store::{Inserted, NewAction, NewRun, now_ms};

impl Engine {
    pub async fn submit(
        &self,
        tenant: &str,
        request: ActionRequest,
        meta: SubmitMeta,
    ) -> Result<Submitted, ErrorInfo> {
        self.validate(tenant, &request).await?;
        let request_hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&request).map_err(|e| internal("serialize request", e))?,
        ));
        let now = now_ms();
        // Capped at the server's maximum, like a long-poll's `wait`: the document cannot
        // declare a limit that is configuration.
        let timeout = request
            .timeout_seconds
            .map_or(self.opts.default_timeout, Duration::from_secs)
            .min(self.opts.max_timeout);
        let runs = request
            .targets
            .iter()
            .map(|target| {
                let (backend, device_id) = match target {
                    Target::Device { backend, device_id } => {
                        (Some(backend.clone()), Some(device_id.clone()))
                    }
                    Target::Hostname { .. } => (None, None),
                };
                NewRun {
                    id: Uuid::now_v7(),
                    target: target.clone(),
                    backend,
                    device_id,
                    commands: request
                        .commands
                        .iter()
                        .enumerate()
                        .map(|(index, c)| CommandState {
                            index,
                            kind: c.kind(),
                            status: Status::Queued,
                            result: None,
                            error: None,
                            vendor_ref: None,
                            vendor_status: None,
                        })
                        .collect(),
                }
            })
            .collect();
        let action = NewAction {
            id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            request,
            created_at: now,
            deadline: now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2),
            idempotency_key: meta.idempotency_key,
            request_hash: request_hash.clone(),
            request_id: meta.request_id,
            subject: meta.subject,
            runs,
        };
        match self.store.insert_action(&action).await.map_err(store_error)? {
            Inserted::Created => {
                super::lock(&self.fresh).push(action.id);
                self.work.notify_one();
                // `action.created` is in the outbox: streams and senders look.
                let _ = self.changes.send(action.id);
                let created = self.action(tenant, action.id).await?;
                Ok(Submitted::Created(created))
            }
            Inserted::Existing { id, request_hash: existing } => {
                if existing != request_hash {
                    return Err(ErrorInfo::new(
                        ErrorCode::Conflict,
                        "this Idempotency-Key was used for a different request",
                    ));
                }
                Ok(Submitted::Replayed(self.action(tenant, id).await?))
            }
        }
    }

    /// Checks a request against the limits, the model's rules and the tenant's capabilities,
    /// before anything is stored or sent.
    async fn validate(&self, tenant: &str, request: &ActionRequest) -> Result<(), ErrorInfo> {
        let invalid = |m: String| Err(ErrorInfo::new(ErrorCode::InvalidRequest, m));
        let backends = self.backends();
        if !backends.tenant_exists(tenant) {
            return Err(ErrorInfo::new(
                ErrorCode::Forbidden,
                "the caller's tenant has no backends configured",
            ));
        }
        if request.targets.is_empty() || request.targets.len() > MAX_TARGETS {
            return invalid(format!("targets: between 1 and {MAX_TARGETS} targets are needed"));
        }
        if request.commands.is_empty() || request.commands.len() > MAX_COMMANDS {
            return invalid(format!("commands: between 1 and {MAX_COMMANDS} commands are needed"));
        }
        if request.comment.as_ref().is_some_and(|c| c.chars().count() > MAX_COMMENT) {
            return invalid(format!("comment: at most {MAX_COMMENT} characters"));
        }
        if let Some(t) = request.timeout_seconds
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            return invalid(format!("timeout_seconds: between 1 and {MAX_TIMEOUT_SECONDS}"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, target) in request.targets.iter().enumerate() {
            let ok = match target {
                Target::Hostname { hostname } => {
                    !hostname.trim().is_empty() && hostname.chars().count() <= MAX_TARGET_NAME
                }
                Target::Device { backend, device_id } => {
                    !backend.is_empty()
                        && !device_id.trim().is_empty()
                        && device_id.chars().count() <= MAX_TARGET_NAME
                }
            };
            if !ok {
                return invalid(format!(
                    "targets[{i}]: hostname or device_id is empty or too long"
                ));
            }
            if !seen.insert(target) {
                return invalid(format!("targets[{i}]: duplicate target"));
            }
            if let Target::Device { backend, .. } = target
                && backends.adapter(tenant, backend).is_none()
            {
                // Valid by the document, but not in this tenant: a 422, not a 400.
                return Err(ErrorInfo::new(
                    ErrorCode::DeviceNotFound,
                    format!("targets[{i}]: unknown backend {backend:?}"),
                ));
            }
        }
        for (i, command) in request.commands.iter().enumerate() {
            if let Err(m) = command.validate() {
                return invalid(format!("commands[{i}]: {m}"));
            }
            if let Some(file_id) = command.file_id() {
                let known = self.files.meta(tenant, file_id).await.map_err(store_error)?;
                let Some(known) = known else {
                    return Err(ErrorInfo::new(
                        ErrorCode::FileNotFound,
                        format!("commands[{i}]: unknown file_id {file_id:?}"),
                    ));
                };
                // A file larger than a backend accepts (Defender's 20 MB library cap) is
                // refused now, before any vendor call, rather than failing the run later.
                for target in &request.targets {
                    let cap = match target {
                        Target::Device { backend, .. } => backends
                            .adapter(tenant, backend)
                            .and_then(|a| a.capabilities().limits.max_upload_bytes),
                        // A hostname may resolve to any backend: refuse only when none takes it.
                        Target::Hostname { .. } => backends
                            .of_tenant(tenant)
                            .map(|(_, a)| a.capabilities().limits.max_upload_bytes)
                            .try_fold(0u64, |max, cap| cap.map(|c| max.max(c))),
                    };
                    if let Some(cap) = cap.filter(|cap| known.size > *cap) {
                        return Err(ErrorInfo::new(
                            ErrorCode::PayloadTooLarge,
                            format!(
                                "commands[{i}]: file {file_id:?} is {} bytes; the backend accepts at most {cap}",
                                known.size
                            ),
                        ));
                    }
                }
            }
        }
        // Every command must be supported where it can run: by the named backend for explicit
        // targets, by at least one of the tenant's backends for hostnames (the backend that
        // resolves it is checked again before the first vendor call).
        for (i, command) in request.commands.iter().enumerate() {
            let kind = command.kind();
            for target in &request.targets {
                let supported = match target {
                    Target::Device { backend, .. } => backends
                        .adapter(tenant, backend)
                        .is_some_and(|a| a.capabilities().supports(kind)),
                    Target::Hostname { .. } => {
                        backends.of_tenant(tenant).any(|(_, a)| a.capabilities().supports(kind))
                    }
                };
                if !supported {
                    let on = match target {
                        Target::Device { backend, .. } => format!("backend {backend:?}"),
                        Target::Hostname { .. } => "any backend of the tenant".to_owned(),
                    };
                    return Err(ErrorInfo::new(
                        ErrorCode::UnsupportedCommand,
                        format!("commands[{i}]: {} is not supported by {on}", kind.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }
}
