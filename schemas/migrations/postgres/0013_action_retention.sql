-- Retention of finished actions (`tenants.<id>.retention_days`, `engine.action_retention_days`).
-- The sweep reads a tenant's finished actions oldest first by `updated_at`, from this index
-- alone: unfinished actions are not in it, so it never reads (or deletes) work in flight.
CREATE INDEX actions_retention ON actions (tenant, updated_at)
    WHERE status IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled', 'timed_out', 'skipped');
-- An action's events are deleted with it (their deliveries first, through
-- `deliveries_by_event`).
CREATE INDEX events_by_action ON events (action_id);
