-- Several replicas on one database (PostgreSQL): who is alive, and each
-- host's inventory as its owning replica last saw it.

-- Replicas announce themselves while they live; the others count the live
-- ones to take no more than their share of hosts, and forward requests
-- that need a host's connection to its owner's `url`.
CREATE TABLE replicas (
    id      TEXT PRIMARY KEY NOT NULL,
    -- Milliseconds since the epoch of the last heartbeat.
    seen_ms BIGINT NOT NULL,
    -- Where the other replicas reach its API (none: it cannot be reached).
    url     TEXT
);

-- The owner of a host writes its VMs and connection status here after each
-- change (and announces it); every other replica mirrors it, so a list or
-- an event stream on any replica is complete. `version` grows with every
-- write, so a mirror skips what it has already applied.
CREATE TABLE host_inventory (
    host_id    TEXT PRIMARY KEY NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    doc        TEXT NOT NULL,
    written_ms BIGINT NOT NULL
);
