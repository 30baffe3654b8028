-- Jobs become persisted operations (PostgreSQL mirror of
-- sqlite/0004_operations.sql): what to run (`operation`, JSON text), what
-- authorization proved at submit (`grant_info`), a secret the operation
-- needs (`sealed_input`, sealed and bound to the job), the host slot it
-- counts against, its timeout, and a lease: the runner that claimed the job
-- renews `lease_expires` while it runs, so a job whose runner died can be
-- taken over by another runner once the lease lapses. `cancel_requested`
-- reaches a job that runs in another process.
ALTER TABLE jobs ADD COLUMN operation TEXT;
ALTER TABLE jobs ADD COLUMN grant_info TEXT;
ALTER TABLE jobs ADD COLUMN sealed_input BYTEA;
ALTER TABLE jobs ADD COLUMN slot TEXT;
ALTER TABLE jobs ADD COLUMN timeout_secs BIGINT NOT NULL DEFAULT 600;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
-- Milliseconds since the epoch, so leases compare as numbers.
ALTER TABLE jobs ADD COLUMN lease_expires BIGINT;
ALTER TABLE jobs ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX jobs_claimable ON jobs(status, lease_expires);

-- One row per step of a job, created with the job (all pending).
CREATE TABLE job_steps (
    job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled',
                                                'skipped', 'undoing', 'undone', 'undo_failed')),
    has_undo    BOOLEAN NOT NULL,
    progress    INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    error       TEXT,
    output      TEXT,
    PRIMARY KEY (job_id, idx)
);
