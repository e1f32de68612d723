//! At most once: after a crash between an intent and Defender's answer, the comment tag tells
//! whether the machine action exists.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{AdapterError, Command, RunContext};

use super::{Checkpoint, DefenderAdapter, Phase, has_tag, now};

impl DefenderAdapter {
    /// After a crash between intent and answer, or an ambiguous answer: the comment tag finds
    /// the action if it was created. Not found once the read-after-write window (the
    /// visibility grace, §4.5) has passed since the call ended, it never was.
    pub(super) async fn reconcile(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        end: usize,
        tag: &str,
        at: f64,
        since: Option<f64>,
    ) -> Result<Drive, AdapterError> {
        if let Some(drive) = self.ensure_slot(ctx, &cp.machine_id).await? {
            return Ok(drive);
        }
        let actions = self.client.actions_of_machine(&cp.machine_id, "LiveResponse").await?;
        if let Some(a) =
            actions.iter().find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
        {
            tracing::info!(run = %ctx.run_id, action = %a.id, "adopted the machine action found by its comment tag");
            cp.phase =
                Phase::Running { id: a.id.clone(), end, at, seen: true, reported: Vec::new() };
            return Ok(Drive::Continue);
        }
        let since = grace_start(since);
        if now() - since < self.cfg.visibility_grace_secs as f64 {
            cp.phase = Phase::Intent { end, tag: tag.to_owned(), at, since: Some(since) };
            return Ok(Drive::Wait(self.cfg.poll_min()));
        }
        tracing::info!(run = %ctx.run_id, "no machine action carries the run's tag: the submission never arrived");
        cp.phase = Phase::Ready;
        self.release_slot(ctx.run_id);
        Ok(Drive::Continue)
    }

    pub(super) async fn reconcile_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        tag: &str,
        at: f64,
        since: Option<f64>,
    ) -> Result<Drive, AdapterError> {
        let kind = if matches!(ctx.commands[cp.cursor.index], Command::Isolate) {
            "Isolate"
        } else {
            "Unisolate"
        };
        let actions = self.client.actions_of_machine(&cp.machine_id, kind).await?;
        if let Some(a) =
            actions.iter().find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
        {
            cp.phase = Phase::Contain { id: a.id.clone(), at, seen: true };
            return Ok(Drive::Continue);
        }
        let since = grace_start(since);
        if now() - since < self.cfg.visibility_grace_secs as f64 {
            cp.phase = Phase::ContainIntent { tag: tag.to_owned(), at, since: Some(since) };
            return Ok(Drive::Wait(self.cfg.poll_min()));
        }
        cp.phase = Phase::Ready;
        Ok(Drive::Continue)
    }
}

/// Where the visibility grace starts: when the ambiguous call ended, as recorded; for an
/// intent a restart found (the call's end unknown: it may have been answered, slowly, right
/// before the crash), now, at the first look.
fn grace_start(since: Option<f64>) -> f64 {
    since.unwrap_or_else(now)
}
