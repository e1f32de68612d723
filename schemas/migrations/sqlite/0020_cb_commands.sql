-- The Carbon Black live-response front door's commands and session files (src/frontdoor/cb,
-- src/store/cb_commands.rs). CB clients know commands and files by integer ids
-- (front-doors.md §1.10): AUTOINCREMENT so an id is never handed out twice, not even after
-- its row is gone. A command is stored before its action is submitted; the action's
-- Idempotency-Key derives from the command id, so a retried or resumed submission runs it once.
CREATE TABLE cb_commands (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT NOT NULL,
    session_id      INTEGER NOT NULL,
    sensor_id       INTEGER NOT NULL,
    name            TEXT NOT NULL,
    -- The request's `object` as JSON (a string, a number or null), echoed on every answer.
    object_json     TEXT NOT NULL,
    username        TEXT NOT NULL,
    -- The edrgate ActionRequest, kept so a submission a crash interrupted can be completed.
    request_json    TEXT,
    action_id       TEXT,
    -- `get file`: the facade file id, in the POST answer already (front-doors.md §1.9).
    file_id         INTEGER,
    -- A request refused before any action (unsupported, invalid): the edrgate error code.
    refusal_code    TEXT,
    refusal_message TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX cb_commands_by_session ON cb_commands (tenant, session_id, id);

CREATE TABLE cb_session_files (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant            TEXT NOT NULL,
    session_id        INTEGER NOT NULL,
    -- The file in edrgate's store: an upload's at once, a `get file`'s once its action stored it.
    file_id           TEXT,
    -- The `get file` command that fills it.
    command_id        INTEGER,
    name              TEXT NOT NULL,
    size              INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL
);
CREATE INDEX cb_session_files_by_session ON cb_session_files (tenant, session_id, id);
