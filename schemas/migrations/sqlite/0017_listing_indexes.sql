-- Listing at a million actions (deploy/BENCHMARKS.md, "A million stored actions"): a status
-- filter walks its own index in order; the device filter finds runs by device id or hostname
-- through an index instead of scanning every run's target.
CREATE INDEX actions_by_status ON actions (tenant, status, created_at DESC, id DESC);
CREATE INDEX runs_by_hostname ON runs (tenant, hostname COLLATE NOCASE);
-- Hostname targets carry their hostname from the start (it was set only once resolved).
UPDATE runs SET hostname = json_extract(target_json, '$.hostname')
WHERE hostname IS NULL AND json_extract(target_json, '$.hostname') IS NOT NULL;
