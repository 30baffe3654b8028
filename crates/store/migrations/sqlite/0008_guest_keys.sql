-- SSH public keys an account keeps for its guests: a deployment that names
-- no keys injects these. Public keys, not secrets. One row per key and
-- account; the same key (by its SHA-256 fingerprint) at most once per
-- account. Portable SQL (the PostgreSQL twin differs only in the timestamp
-- type).

CREATE TABLE guest_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
