-- Vendor budgets shared by the replicas (PostgreSQL only: a SQLite store serves one replica,
-- whose adapters keep their budgets in memory). See adapters/README.md, "Budgets across
-- replicas".

-- A held slot of a capped budget (e.g. a Carbon Black server's live-response sessions): at
-- most one holder per (scope, key). `holder` names the work (a run) so a replica taking over a
-- run takes its slot over too; `token` names one acquisition, so a replica that lost the slot
-- cannot renew or free it. Rows past `expires_at` are free (their replica stopped renewing).
CREATE TABLE budget_slots (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    holder     TEXT NOT NULL,
    token      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Calls made against a rate budget (e.g. Defender's calls per minute), one row per call, kept
-- for one window.
CREATE TABLE budget_calls (
    scope TEXT NOT NULL,
    at    BIGINT NOT NULL
);
CREATE INDEX budget_calls_by_scope ON budget_calls (scope, at);
