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

-- Check-and-take in one statement: the scope's advisory lock is held only while the function
-- runs on the server (released with the statement's transaction), never across a round trip
-- to a replica, so replicas asking at once neither overtake each other nor tie up connections
-- waiting. Times are the database's clock, the one clock all replicas share.
CREATE FUNCTION edrgate_budget_now() RETURNS BIGINT LANGUAGE sql VOLATILE AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

-- Takes slot `p_key` of `p_scope` for `p_holder` under `p_token`: TRUE if taken (or kept by the
-- same holder), FALSE if another holder has the key or the scope is full.
CREATE FUNCTION edrgate_take_slot(
    p_scope TEXT, p_capacity BIGINT, p_key TEXT, p_holder TEXT, p_token TEXT, p_ttl_ms BIGINT
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT;
    current_holder TEXT;
    used BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_scope, 0));
    now_ms := edrgate_budget_now();
    DELETE FROM budget_slots WHERE scope = p_scope AND expires_at < now_ms;
    SELECT holder INTO current_holder FROM budget_slots WHERE scope = p_scope AND key = p_key;
    IF FOUND THEN
        IF current_holder <> p_holder THEN
            RETURN FALSE;
        END IF;
    ELSE
        SELECT COUNT(*) INTO used FROM budget_slots WHERE scope = p_scope;
        IF used >= p_capacity THEN
            RETURN FALSE;
        END IF;
    END IF;
    INSERT INTO budget_slots (scope, key, holder, token, expires_at)
    VALUES (p_scope, p_key, p_holder, p_token, now_ms + p_ttl_ms)
    ON CONFLICT (scope, key) DO UPDATE
        SET holder = EXCLUDED.holder, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at;
    RETURN TRUE;
END;
$$;

-- Counts one call against `p_scope`'s `p_limit` calls per `p_window_ms`: 0 if counted, else the
-- milliseconds until the oldest call in the window leaves it (nothing counted).
CREATE FUNCTION edrgate_take_call(p_scope TEXT, p_limit BIGINT, p_window_ms BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT;
    used BIGINT;
    oldest BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_scope, 0));
    now_ms := edrgate_budget_now();
    DELETE FROM budget_calls WHERE scope = p_scope AND at <= now_ms - p_window_ms;
    SELECT COUNT(*), MIN(at) INTO used, oldest FROM budget_calls WHERE scope = p_scope;
    IF used >= p_limit THEN
        RETURN GREATEST(oldest + p_window_ms - now_ms, 1);
    END IF;
    INSERT INTO budget_calls (scope, at) VALUES (p_scope, now_ms);
    RETURN 0;
END;
$$;
