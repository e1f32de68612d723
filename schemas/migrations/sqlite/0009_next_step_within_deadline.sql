-- A run is never due after its action's deadline (the engine caps every `next_step_at` at it
-- from now on): runs an enormous Retry-After pushed past their deadline are due at the
-- deadline, so whichever process runs next ends them on time.
UPDATE runs SET next_step_at = (SELECT a.deadline FROM actions a WHERE a.id = runs.action_id)
WHERE status IN ('queued', 'dispatched', 'running')
  AND next_step_at > (SELECT a.deadline FROM actions a WHERE a.id = runs.action_id);
