-- Jobs and their log lines. Jobs are history: they keep the ids of the users
-- involved without a foreign key, so they outlive account changes.
-- `seq` orders jobs newest-first for listing and keyset pagination.

CREATE TABLE jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    requester_id TEXT NOT NULL,
    owner_id     TEXT NOT NULL,
    target       TEXT,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    progress     INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT,
    result       TEXT,
    parent_id    TEXT REFERENCES jobs(id)
);
CREATE INDEX jobs_owner ON jobs(owner_id, seq);
CREATE INDEX jobs_status ON jobs(status);
CREATE INDEX jobs_parent ON jobs(parent_id);

CREATE TABLE job_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at      TEXT NOT NULL,
    level   TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message TEXT NOT NULL
);
CREATE INDEX job_log_job ON job_log(job_id, id);
