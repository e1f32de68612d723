-- A run is never due after its action's deadline (the engine caps every `next_step_at` at it
-- from now on): runs an enormous Retry-After pushed past their deadline are due at the
-- deadline, so whichever replica runs next ends them on time.
UPDATE runs r SET next_step_at = a.deadline
FROM actions a
WHERE a.id = r.action_id
  AND r.status IN ('queued', 'dispatched', 'running')
  AND r.next_step_at > a.deadline;
