-- File retention and deletion (mirrors sqlite/0005_files_retention.sql). `expires_at`: when the
-- tenant's retention ends (NULL: kept until deleted). `deleted_at`: hidden from callers at once,
-- purged from storage by the sweeper (then the row goes).
ALTER TABLE files ADD COLUMN expires_at BIGINT;
ALTER TABLE files ADD COLUMN deleted_at BIGINT;
CREATE INDEX files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX files_deleted ON files (deleted_at) WHERE deleted_at IS NOT NULL;
