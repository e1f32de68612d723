-- Listing at a million actions (mirrors sqlite/0017_listing_indexes.sql).
CREATE INDEX actions_by_status ON actions (tenant, status, created_at DESC, id DESC);
CREATE INDEX runs_by_hostname ON runs (tenant, lower(hostname));
UPDATE runs SET hostname = target_json::json->>'hostname'
WHERE hostname IS NULL AND target_json::json->>'hostname' IS NOT NULL;
