-- Tenant API keys (src/api/apikeys.rs): long-lived opaque credentials for clients that send
-- one static token (cbapi's `X-Auth-Token`). Only the SHA-256 of a key is kept: keys are 32
-- random bytes, so the hash is a sound lookup key and the store never holds a usable secret.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    key_sha256  TEXT NOT NULL UNIQUE,
    -- The key's first 12 characters, to tell keys apart in listings.
    prefix      TEXT NOT NULL,
    -- JSON array of permission names (a subset of the tenant's; never `operator`).
    permissions TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at DESC, id DESC);
