-- The host registry (PostgreSQL mirror of sqlite/0002_hosts.sql). The SSH
-- host key is pinned per host; an optional credential of the host's own
-- (an uploaded private key or a password) is sealed and bound to the row.

CREATE TABLE hosts (
    id                   TEXT PRIMARY KEY NOT NULL,
    owner_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('libvirt', 'hyperv')),
    address              TEXT NOT NULL,
    port                 INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    ssh_user             TEXT NOT NULL,
    libvirt_uri          TEXT NOT NULL,
    -- Newline-separated; tags cannot contain whitespace.
    tags                 TEXT NOT NULL DEFAULT '',
    host_key_fingerprint TEXT,
    credential_kind      TEXT CHECK (credential_kind IN ('private_key', 'password')),
    credential_sealed    BYTEA,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    CHECK ((credential_kind IS NULL) = (credential_sealed IS NULL)),
    -- The store names what collided from these constraint names.
    CONSTRAINT hosts_owner_id_name_key UNIQUE (owner_id, name),
    CONSTRAINT hosts_owner_id_address_key UNIQUE (owner_id, address)
);
CREATE INDEX hosts_owner ON hosts(owner_id, name);
