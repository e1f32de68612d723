-- The statuses of a run's commands, in order (mirrors sqlite/0015_command_statuses.sql).
ALTER TABLE runs ADD COLUMN command_statuses TEXT NOT NULL DEFAULT '[]';
UPDATE runs SET command_statuses = COALESCE((
    SELECT json_agg(c.value->>'status' ORDER BY c.ord)::text
    FROM json_array_elements(runs.commands_json::json) WITH ORDINALITY AS c(value, ord)
), '[]');
