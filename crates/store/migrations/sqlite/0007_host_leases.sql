-- Which replica owns a host: its SSH connection, event stream and resyncs
-- run in one replica at a time. The owner renews its lease while it lives;
-- once the lease lapses another replica takes the host over. `generation`
-- grows with every change of owner, so a replica that lost its lease
-- (paused, partitioned) is fenced off: its renewal names a generation that
-- is gone.
CREATE TABLE host_leases (
    host_id    TEXT PRIMARY KEY NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    owner      TEXT NOT NULL,
    -- Milliseconds since the epoch, so leases compare as numbers.
    expires_ms BIGINT NOT NULL,
    generation BIGINT NOT NULL
);
CREATE INDEX host_leases_owner ON host_leases(owner);
