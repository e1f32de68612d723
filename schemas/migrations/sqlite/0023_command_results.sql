-- A command's result (a process list, a directory listing: up to megabytes) in its own row,
-- written once when the command reports it. A run's step rewrites only the small states in
-- `runs.commands_json` and the results that are new, so a long run's writes do not grow
-- with the results of the commands before. Rows stored before this migration keep their
-- results inline in `commands_json` (readers take both) until their run's next write moves
-- them here.
CREATE TABLE command_results (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    result_json TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
