//! Intents found after a lost answer, a restart or a vanished batch leader (§5.4, §12.1 step
//! 7): the session's `logs[]` record every command sent on it with its cloud request id. A
//! log entry of our line that was not there before the intent is ours: it is polled, not
//! sent again. No such entry: the vendor never got the line, which is then sent. No session
//! to ask (deleted and gone): `outcome_unknown`. The vendor's clock is never compared with
//! ours: the intent kept the ids its logs held, not a time.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{AdapterError, CommandUpdate, RunContext};

use super::plan::Rtr;
use super::session::set_state;
use super::{Checkpoint, CrowdStrikeAdapter, LineState, now_ms, outcome_unknown};

impl CrowdStrikeAdapter {
    pub(super) async fn reconcile_line(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &str,
        known: &[String],
    ) -> Result<Drive, AdapterError> {
        let sessions = self.client.sessions(&[session.to_owned()]).await?;
        let Some(found) = sessions.into_iter().find(|s| s.id == session) else {
            tracing::debug!(session, line = %line.line, "the session of an intent is gone; its outcome is unknown");
            return Ok(Drive::Finished(outcome_unknown(
                cp.cursor.index,
                &format!("`{}`", line.line),
            )));
        };
        let same: Vec<_> =
            found.logs.into_iter().filter(|l| l.command_string == line.line).collect();
        let ours = same
            .iter()
            .find(|l| !known.contains(&l.cloud_request_id) && !l.cloud_request_id.is_empty())
            .cloned();
        match ours {
            Some(log) => {
                tracing::debug!(session, cloud = %log.cloud_request_id, "an intent's line was received; polling it");
                set_state(
                    cp,
                    LineState::Sent {
                        session: session.to_owned(),
                        cloud: log.cloud_request_id,
                        next_seq: 0,
                        stdout: String::new(),
                        stderr: String::new(),
                        since_ms: now_ms(),
                        queued: cp.session.as_ref().is_some_and(|s| s.queued),
                    },
                );
            }
            None => {
                // Never received: sent now, under the journaled intent (the logs just read
                // are what a later reconciliation compares with).
                tracing::debug!(session, line = %line.line, "an intent's line never reached the session; sending it");
                let known = same.into_iter().map(|l| l.cloud_request_id).collect();
                set_state(cp, LineState::Intent { session: session.to_owned(), known });
                let current = cp.session.clone().filter(|s| s.id == session);
                let Some(current) = current else {
                    // The run's session changed meanwhile: start the line over on it.
                    set_state(cp, LineState::Ready);
                    cp.cursor.sent = false;
                    return Ok(Drive::Continue);
                };
                return self.dispatch(ctx, cp, updates, line, &current).await;
            }
        }
        Ok(Drive::Continue)
    }
}
