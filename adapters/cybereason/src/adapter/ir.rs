//! IR tool runs (§6.6): the package uploaded when the command brings one, the journaled run,
//! and its per-sensor status rows.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status,
};
use serde_json::Value;

use super::{
    Checkpoint, CybereasonAdapter, MAX_PACKAGE_BYTES, Phase, SensorIds, now_ms, timed_out,
};
use crate::mapping::{self, CrError};
use crate::wire;

impl CybereasonAdapter {
    pub(super) async fn start_ir(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sensor: &SensorIds,
        script: &str,
        file_id: Option<&str>,
    ) -> Result<Drive, CrError> {
        let tool = script.trim().to_owned();
        if let Some(file_id) = file_id {
            {
                let (file, reader) = ctx.files.open(file_id.trim()).await.map_err(CrError::Api)?;
                if file.size > MAX_PACKAGE_BYTES {
                    return Ok(Drive::Finished(CommandUpdate::failed(
                        cp.cursor.index,
                        ErrorInfo::new(
                            ErrorCode::PayloadTooLarge,
                            format!(
                                "IR tool packages are limited to {MAX_PACKAGE_BYTES} bytes; {} has {}",
                                file.name, file.size
                            ),
                        ),
                    )));
                }
                // The package takes the script's name. Upload replaces a package of the same
                // name, so repeating it is harmless.
                self.client.upload_package(&tool, reader, file.size).await?;
            }
        }
        let before = self.ir_runs_before(&tool).await?;
        cp.phase = Phase::IrIntent { at_ms: now_ms(), tool: tool.clone(), before: Some(before) };
        if let Err(e) = self.record(ctx, cp, updates).await {
            cp.phase = Phase::Ready;
            return Err(CrError::Api(e));
        }
        self.send_ir(ctx, cp, sensor, tool).await
    }

    pub(super) async fn send_ir(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        tool: String,
    ) -> Result<Drive, CrError> {
        let at_ms = match cp.phase {
            Phase::IrIntent { at_ms, .. } => at_ms,
            _ => now_ms(),
        };
        let args = match &ctx.commands[cp.cursor.index] {
            Command::RunScript { args, .. } => args.clone(),
            _ => Vec::new(),
        };
        let Some((path, template)) = self.cfg.ir_run() else {
            return Ok(Drive::Finished(CommandUpdate::failed(cp.cursor.index, ir_unconfigured())));
        };
        let body = render(&template, sensor, &tool, &args);
        match self.client.ir_run(path, &body).await? {
            None => Ok(Drive::Finished(CommandUpdate::failed(
                cp.cursor.index,
                ErrorInfo::new(
                    ErrorCode::VendorRejected,
                    "the sensor cannot take an IR tool run (HTTP 204)",
                )
                .with_vendor("204", ""),
            ))),
            Some(batch) => {
                cp.phase = Phase::Ir { batch: batch.batch_id, tool, at_ms };
                Ok(Drive::Continue)
            }
        }
    }

    pub(super) async fn poll_ir(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        batch: i64,
        tool: &str,
        at_ms: i64,
    ) -> Result<Drive, CrError> {
        let body = self.client.ir_status(batch).await?;
        let rows = mapping::ir_rows(&body);
        let vref = Some(format!("batch/{batch}"));
        let row =
            rows.iter().find(|r| is_our_sensor(&r.sensor, sensor)).or(match rows.as_slice() {
                [only] => Some(only),
                _ => None,
            });
        if let Some(row) = row {
            let (status, error) = mapping::ir_status(row);
            if status == Status::Succeeded {
                let output =
                    bucket_note(tool, &format!("{} on sensor {}", row.status, sensor.sensor_id));
                return Ok(Drive::Finished(
                    CommandUpdate::succeeded(
                        cp.cursor.index,
                        CommandResult::Execution {
                            pid: None,
                            exit_code: None,
                            output: Some(output),
                            output_file: None,
                        },
                    )
                    .with_vendor(vref, Some(row.status.clone())),
                ));
            }
            if let Some(error) = error.filter(|_| status.is_terminal()) {
                return Ok(Drive::Finished(
                    CommandUpdate {
                        error: Some(error),
                        ..CommandUpdate::status(cp.cursor.index, status)
                    }
                    .with_vendor(vref, Some(row.status.clone())),
                ));
            }
        }
        // The other plausible shape (§6.6.1): a batch object with counters and `finalState`.
        if rows.is_empty()
            && let Ok(b) = serde_json::from_value::<wire::Batch>(body)
        {
            let (status, words, error) = mapping::batch_status(&b);
            if status.is_terminal() {
                let update = match error {
                    None => CommandUpdate::succeeded(
                        cp.cursor.index,
                        CommandResult::Execution {
                            pid: None,
                            exit_code: None,
                            output: Some(bucket_note(tool, &row_less(sensor))),
                            output_file: None,
                        },
                    ),
                    Some(error) => CommandUpdate {
                        error: Some(error),
                        ..CommandUpdate::status(cp.cursor.index, status)
                    },
                };
                return Ok(Drive::Finished(update.with_vendor(vref, Some(words))));
            }
        }
        if now_ms() - at_ms > self.action_timeout_ms() {
            if let Err(e) = self.client.abort(batch).await {
                tracing::debug!(error = %e, batch, "aborting a timed-out IR run failed");
            }
            return Ok(Drive::Finished(timed_out(
                cp.cursor.index,
                self.cfg.action_timeout_secs,
                format!("batch/{batch}"),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }
}

/// `run_script` on a backend whose IR run request is not configured (it is then not in the
/// capabilities, so the gateway refuses it at submission; this is the defence in depth).
pub(super) fn ir_unconfigured() -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::UnsupportedCommand,
        "run_script needs the operator-configured IR run request (ir_run_path): no public source documents it",
    )
}

/// The IR run body: the configured template with its placeholders filled in.
fn render(template: &Value, sensor: &SensorIds, tool: &str, args: &[String]) -> Value {
    match template {
        Value::String(s) => match s.as_str() {
            "$sensorsIds" => Value::from(vec![sensor.sensor_id.clone()]),
            "$pylumIds" => Value::from(vec![sensor.pylum_id.clone()]),
            "$toolName" => Value::from(tool),
            "$arguments" => Value::from(args.to_vec()),
            "$commandLine" => Value::from(
                std::iter::once(tool.to_owned())
                    .chain(args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => template.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|v| render(v, sensor, tool, args)).collect()),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, v)| (k.clone(), render(v, sensor, tool, args))).collect(),
        ),
        other => other.clone(),
    }
}

/// The result text of an IR run: where its output went (§6.6.3: a storage bucket, not the API).
fn bucket_note(tool: &str, how: &str) -> String {
    format!(
        "IR tool {tool:?} finished ({how}). Cybereason does not return tool output through its API: the sensor uploads it to the customer's storage bucket configured for IR tools (see GET /rest/irtools/credentials)."
    )
}

fn row_less(sensor: &SensorIds) -> String {
    format!("on sensor {}", sensor.sensor_id)
}

pub(super) fn is_our_sensor(row_sensor: &str, sensor: &SensorIds) -> bool {
    row_sensor.eq_ignore_ascii_case(&sensor.sensor_id)
        || row_sensor.eq_ignore_ascii_case(&sensor.pylum_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CybereasonConfig;

    #[test]
    fn the_default_run_body_names_the_sensor_and_tool() {
        let mut cfg = CybereasonConfig::new("https://x", "u", secrecy::SecretString::from("p"));
        cfg.ir_run_path = Some("/rest/sensors/action/runIRTool".into());
        let sensor = SensorIds {
            sensor_id: "srv:P1".into(),
            pylum_id: "P1".into(),
            guid: "-1.2".into(),
            machine: "m".into(),
        };
        let body = render(&cfg.ir_run().unwrap().1, &sensor, "collect.exe", &["-q".into()]);
        assert_eq!(
            body,
            serde_json::json!({"sensorsIds": ["srv:P1"], "filters": null, "argument": "collect.exe", "arguments": ["-q"]})
        );
    }
}
