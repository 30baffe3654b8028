-- Accounts signed in through an OpenID Connect provider: the provider's
-- issuer and subject (`sub`) name one account for good. Portable SQL (the
-- PostgreSQL twin is the same statements).

CREATE TABLE oidc_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX oidc_identities_user ON oidc_identities(user_id);
