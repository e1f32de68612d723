-- The statuses of a run's commands, in order (a JSON array of words), written with every step
-- next to `commands_json`: an action's summary counts them over all its runs without decoding
-- every command's result.
ALTER TABLE runs ADD COLUMN command_statuses TEXT NOT NULL DEFAULT '[]';
UPDATE runs SET command_statuses = (
    SELECT json_group_array(json_extract(c.value, '$.status'))
    FROM json_each(runs.commands_json) c
);
