-- The claim reads each (tenant, backend)'s earliest due runs through this index, only for
-- the keys with room: a fan-out of 10,000 runs at its backend's session cap costs a claim
-- nothing, where a pass over every due run cost ~10 ms at every slot hand-off.
CREATE INDEX runs_claimable_by_key ON runs (tenant, COALESCE(backend, ''), next_step_at)
    WHERE status IN ('queued', 'dispatched', 'running');
