//! Jobs, their steps and their log lines. Every status change is one
//! guarded `UPDATE` (`WHERE status IN <allowed predecessors>`), so two
//! writers can never both finish a job and a finished job never changes
//! again. A job row also holds the operation it runs and the lease of the
//! runner that claimed it: claiming is one guarded `UPDATE` as well, so two
//! runners (threads or processes on one database) never both run a job.

use chrono::{DateTime, Utc};
use overvisor_model::job::{Job, JobId, JobLogLine, JobQuery, JobStatus};
use overvisor_model::operation::{Grant, JobStep, Operation, StepStatus};

use crate::{Backend, DbRow, Result, Sealer, Store, StoreError, builder, parse_col, with_pool};

const COLUMNS: &str = "id, kind, requester_id, owner_id, target, status, progress, created_at, \
                       started_at, finished_at, error, result, parent_id";

/// A job to insert with everything a runner needs to run it.
#[derive(Debug)]
pub struct NewJob<'a> {
    pub job: &'a Job,
    pub operation: &'a Operation,
    pub grant: &'a Grant,
    /// Sealed under the job's id; never shown.
    pub secret: Option<&'a [u8]>,
    /// Jobs with the same slot share a concurrency limit.
    pub slot: Option<&'a str>,
    pub timeout_secs: u32,
    pub steps: &'a [NewStep<'a>],
}

/// A step of a new job: pending, or already done at submit (a check the
/// request made before the job existed) with what it found.
#[derive(Debug, Clone, Copy)]
pub struct NewStep<'a> {
    pub name: &'a str,
    pub has_undo: bool,
    pub done: Option<&'a serde_json::Value>,
}

/// A job a runner may claim: queued, or running under a lapsed lease.
#[derive(Debug, Clone)]
pub struct Claimable {
    pub id: JobId,
    pub slot: Option<String>,
}

/// A job a runner has claimed, with what it needs to run it.
#[derive(Debug)]
pub struct Claimed {
    pub job: Job,
    /// `None` for rows written before jobs were operations.
    pub operation: Option<Operation>,
    pub grant: Option<Grant>,
    pub slot: Option<String>,
    pub timeout_secs: u32,
    /// 1 for a fresh claim; more when the job is taken over after its
    /// runner lost the lease.
    pub attempt: u32,
}

/// What a runner learns when it renews its leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: JobId,
    pub cancel_requested: bool,
}

fn job_id_col(row: &impl DbRow) -> Result<JobId> {
    let id: String = row.col("id")?;
    parse_col(&id, "job id")
}

fn job_from_row(row: &impl DbRow) -> Result<Job> {
    let id: String = row.col("id")?;
    let requester: String = row.col("requester_id")?;
    let owner: String = row.col("owner_id")?;
    let status: String = row.col("status")?;
    let progress: i32 = row.col("progress")?;
    let result: Option<String> = row.col("result")?;
    let parent: Option<String> = row.col("parent_id")?;
    Ok(Job {
        id: parse_col(&id, "job id")?,
        kind: row.col("kind")?,
        requester: parse_col(&requester, "user id")?,
        owner: parse_col(&owner, "user id")?,
        target: row.col("target")?,
        status: parse_col(&status, "job status")?,
        progress: u8::try_from(progress.clamp(0, 100))
            .map_err(|_| StoreError::Corrupt("bad job progress".into()))?,
        created_at: row.col("created_at")?,
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        error: row.col("error")?,
        result: json_col(result, "job result")?,
        parent: parent.map(|p| parse_col(&p, "job id")).transpose()?,
    })
}

fn json_col<T: serde::de::DeserializeOwned>(
    value: Option<String>,
    what: &str,
) -> Result<Option<T>> {
    value
        .map(|v| serde_json::from_str(&v))
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("bad {what}")))
}

fn step_from_row(row: &impl DbRow) -> Result<JobStep> {
    let idx: i32 = row.col("idx")?;
    let status: String = row.col("status")?;
    let progress: i32 = row.col("progress")?;
    let output: Option<String> = row.col("output")?;
    Ok(JobStep {
        index: u16::try_from(idx).map_err(|_| StoreError::Corrupt("bad step index".into()))?,
        name: row.col("name")?,
        status: parse_col::<StepStatus>(&status, "step status")?,
        has_undo: row.col("has_undo")?,
        progress: u8::try_from(progress.clamp(0, 100)).unwrap_or(100),
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        error: row.col("error")?,
        output: json_col(output, "step output")?,
    })
}

/// The associated data binding a job's sealed input to its row.
fn input_binding(id: JobId) -> String {
    format!("jobs.sealed_input:{id}")
}

/// Queued, or running under a lease that lapsed (before the time in
/// milliseconds bound as parameter `$now`): a runner may take it. A running
/// job without a lease is from before leases existed.
fn claimable(now: u8) -> String {
    format!(
        "(status = 'queued' OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < ${now})))"
    )
}

impl Store {
    /// Inserts a job, its operation and its steps (all pending) at once.
    pub async fn job_insert(&self, sealer: &Sealer, new: &NewJob<'_>) -> Result<()> {
        let job = new.job;
        let operation = serde_json::to_string(new.operation)
            .map_err(|e| StoreError::Corrupt(format!("operation: {e}")))?;
        let grant = serde_json::to_string(new.grant)
            .map_err(|e| StoreError::Corrupt(format!("grant: {e}")))?;
        let sealed = new.secret.map(|s| sealer.seal(&input_binding(job.id), s));
        with_pool!(self, |pool| {
            async {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, requester_id, owner_id, target, status, progress, created_at,
                               started_at, finished_at, error, result, parent_id, operation,
                               grant_info, sealed_input, slot, timeout_secs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(job.id.to_string())
        .bind(&job.kind)
        .bind(job.requester.to_string())
        .bind(job.owner.to_string())
        .bind(&job.target)
        .bind(job.status.as_str())
        .bind(i64::from(job.progress))
        .bind(job.created_at)
        .bind(job.started_at)
        .bind(job.finished_at)
        .bind(&job.error)
        .bind(job.result.as_ref().map(|r| r.to_string()))
        .bind(job.parent.map(|p| p.to_string()))
        .bind(operation)
        .bind(grant)
        .bind(sealed)
        .bind(new.slot)
        .bind(i64::from(new.timeout_secs))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::on_unique(e, "job"))?;
        for (idx, step) in new.steps.iter().enumerate() {
            let (status, at) = match step.done {
                Some(_) => (StepStatus::Done, Some(job.created_at)),
                None => (StepStatus::Pending, None),
            };
            sqlx::query(
                "INSERT INTO job_steps (job_id, idx, name, status, has_undo, progress, started_at,
                                        finished_at, output)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(job.id.to_string())
            .bind(i64::try_from(idx).unwrap_or(i64::MAX))
            .bind(step.name)
            .bind(status.as_str())
            .bind(step.has_undo)
            .bind(if step.done.is_some() { 100 } else { 0 })
            .bind(at)
            .bind(at)
            .bind(step.done.map(|o| o.to_string()))
            .execute(&mut *tx)
            .await?;
        }
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await
        })?;
        Ok(())
    }

    pub async fn job_get(&self, id: JobId) -> Result<Job> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("job"))?;
        job_from_row(&row)
    }

    /// The operation a job runs (`None` for rows from before operations).
    pub async fn job_operation(&self, id: JobId) -> Result<Option<Operation>> {
        let op: Option<Option<String>> =
            with_pool!(self, |pool| sqlx::query_scalar::<_, Option<String>>(
                "SELECT operation FROM jobs WHERE id = $1"
            )
            .bind(id.to_string())
            .fetch_optional(pool)
            .await)?;
        json_col(op.ok_or(StoreError::NotFound("job"))?, "job operation")
    }

    /// The secret sealed with a job, opened (only runners ask for it).
    pub async fn job_secret(&self, sealer: &Sealer, id: JobId) -> Result<Option<Vec<u8>>> {
        let sealed: Option<Option<Vec<u8>>> =
            with_pool!(self, |pool| sqlx::query_scalar::<_, Option<Vec<u8>>>(
                "SELECT sealed_input FROM jobs WHERE id = $1"
            )
            .bind(id.to_string())
            .fetch_optional(pool)
            .await)?;
        match sealed.ok_or(StoreError::NotFound("job"))? {
            Some(sealed) => Ok(Some(sealer.open(&input_binding(id), &sealed)?)),
            None => Ok(None),
        }
    }

    pub async fn job_list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let rows = with_pool!(self, |pool| {
            let mut sql = builder(pool, format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1"));
            if let Some(owner) = query.owner {
                sql.push(" AND owner_id = ").push_bind(owner.to_string());
            }
            if let Some(status) = query.status {
                sql.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(kind) = &query.kind {
                sql.push(" AND kind = ").push_bind(kind.clone());
            }
            if let Some(target) = &query.target {
                sql.push(" AND target = ").push_bind(target.clone());
            }
            if let Some(parent) = query.parent {
                sql.push(" AND parent_id = ").push_bind(parent.to_string());
            }
            if let Some(before) = query.before {
                // An unknown cursor selects nothing rather than everything.
                sql.push(" AND seq < coalesce((SELECT seq FROM jobs WHERE id = ")
                    .push_bind(before.to_string())
                    .push("), 0)");
            }
            sql.push(" ORDER BY seq DESC LIMIT ")
                .push_bind(i64::from(query.limit.clamp(1, 1000)));
            sql.build().fetch_all(pool).await
        })?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs a runner could claim now, oldest first.
    pub async fn jobs_claimable(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Claimable>> {
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT id, slot FROM jobs WHERE {} ORDER BY seq LIMIT $2",
            claimable(1)
        ))
        .bind(now.timestamp_millis())
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|row| {
                Ok(Claimable {
                    id: job_id_col(row)?,
                    slot: row.col("slot")?,
                })
            })
            .collect()
    }

    /// Claims job `id` for `runner` until `lease_until`, if it is still
    /// claimable: a queued job becomes running; a running job whose lease
    /// lapsed is taken over. `None`: another runner was first.
    pub async fn job_claim(
        &self,
        id: JobId,
        runner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Claimed>> {
        // On PostgreSQL the row is taken with `FOR UPDATE SKIP LOCKED`: a
        // runner racing another for the same job gives up at once instead of
        // waiting on the winner's row lock (SQLite has one writer anyway).
        let which = match self.backend() {
            Backend::Sqlite => format!("id = $4 AND {}", claimable(5)),
            Backend::Postgres => format!(
                "id = (SELECT id FROM jobs WHERE id = $4 AND {} FOR UPDATE SKIP LOCKED)",
                claimable(5)
            ),
        };
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', started_at = coalesce(started_at, $1),
                    lease_owner = $2, lease_expires = $3, attempt = attempt + 1
             WHERE {which}
             RETURNING {COLUMNS}, operation, grant_info, slot, timeout_secs, attempt"
        ))
        .bind(now)
        .bind(runner)
        .bind(lease_until.timestamp_millis())
        .bind(id.to_string())
        .bind(now.timestamp_millis())
        .fetch_optional(pool)
        .await)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let timeout: i64 = row.col("timeout_secs")?;
        let attempt: i64 = row.col("attempt")?;
        Ok(Some(Claimed {
            job: job_from_row(&row)?,
            // An operation this build cannot read is run by nobody: the
            // runner marks the job interrupted.
            operation: json_col(row.col("operation")?, "job operation").unwrap_or(None),
            grant: json_col(row.col("grant_info")?, "job grant").unwrap_or(None),
            slot: row.col("slot")?,
            timeout_secs: u32::try_from(timeout).unwrap_or(u32::MAX),
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        }))
    }

    /// Extends every lease `runner` holds on a running job; returns those
    /// jobs (a job missing from the answer was lost: another runner took it
    /// over, or it finished) and whether someone asked to cancel each.
    pub async fn job_leases_renew(
        &self,
        runner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Lease>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET lease_expires = $1 WHERE lease_owner = $2 AND status = 'running'
             RETURNING id, cancel_requested",
        )
        .bind(lease_until.timestamp_millis())
        .bind(runner)
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|row| {
                Ok(Lease {
                    id: job_id_col(row)?,
                    cancel_requested: row.col("cancel_requested")?,
                })
            })
            .collect()
    }

    /// Cancels a job that no runner has claimed yet; `false` when it is no
    /// longer queued (then ask its runner with [`Store::job_request_cancel`]).
    pub async fn job_cancel_queued(
        &self,
        id: JobId,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<bool> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = $1, error = $2, sealed_input = NULL
             WHERE id = $3 AND status = 'queued'",
        )
        .bind(at)
        .bind(error)
        .bind(id.to_string())
        .execute(pool)
        .await
        })?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks whichever runner holds a running job to cancel it.
    pub async fn job_request_cancel(&self, id: JobId) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'"
        )
        .bind(id.to_string())
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// Moves a job to `to` if its current status allows it; returns whether
    /// it did. Entering `running` stamps `started_at`; a terminal status
    /// stamps `finished_at`, releases the lease, erases the job's sealed
    /// input (a deployment's guest secrets live no longer than their job)
    /// and, on success, sets progress to 100.
    pub async fn job_transition(
        &self,
        id: JobId,
        to: JobStatus,
        at: DateTime<Utc>,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Result<bool> {
        self.transition(id, to, at, error, result, None).await
    }

    /// [`Store::job_transition`] by the runner holding the job's lease: a
    /// runner that lost its lease to another can no longer finish the job.
    pub async fn job_transition_held(
        &self,
        id: JobId,
        runner: &str,
        to: JobStatus,
        at: DateTime<Utc>,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Result<bool> {
        self.transition(id, to, at, error, result, Some(runner))
            .await
    }

    async fn transition(
        &self,
        id: JobId,
        to: JobStatus,
        at: DateTime<Utc>,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
        holder: Option<&str>,
    ) -> Result<bool> {
        let from = to.predecessors();
        if from.is_empty() {
            return Ok(false);
        }
        let done = with_pool!(self, |pool| {
            let mut sql = builder(pool, "UPDATE jobs SET status = ");
            sql.push_bind(to.as_str());
            if to == JobStatus::Running {
                sql.push(", started_at = ").push_bind(at);
            }
            if to.is_terminal() {
                sql.push(", finished_at = ")
                    .push_bind(at)
                    .push(", lease_owner = NULL, lease_expires = NULL, sealed_input = NULL");
            }
            if to == JobStatus::Succeeded {
                sql.push(", progress = 100");
            }
            if let Some(error) = error {
                sql.push(", error = ").push_bind(error.to_owned());
            }
            if let Some(result) = result {
                sql.push(", result = ").push_bind(result.to_string());
            }
            sql.push(" WHERE id = ").push_bind(id.to_string());
            if let Some(runner) = holder {
                sql.push(" AND lease_owner = ").push_bind(runner.to_owned());
            }
            sql.push(" AND status IN (");
            let mut list = sql.separated(", ");
            for status in from {
                list.push_bind(status.as_str());
            }
            sql.push(")");
            sql.build().execute(pool).await
        })?;
        Ok(done.rows_affected() == 1)
    }

    /// Records progress of a running job (ignored once it has finished).
    pub async fn job_progress(&self, id: JobId, progress: u8) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET progress = $1 WHERE id = $2 AND status = 'running'"
        )
        .bind(i64::from(progress.min(100)))
        .bind(id.to_string())
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// A job's steps in order.
    pub async fn job_steps(&self, id: JobId) -> Result<Vec<JobStep>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "SELECT idx, name, status, has_undo, progress, started_at, finished_at, error, output
             FROM job_steps WHERE job_id = $1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(pool)
        .await
        })?;
        rows.iter().map(step_from_row).collect()
    }

    /// Writes a step's new status: `running` stamps its start (and clears
    /// an error of an earlier attempt), any other status its end. `output`
    /// replaces the step's output when given.
    pub async fn job_step_set(
        &self,
        id: JobId,
        index: u16,
        status: StepStatus,
        at: DateTime<Utc>,
        error: Option<&str>,
        output: Option<&serde_json::Value>,
    ) -> Result<()> {
        let _done = with_pool!(self, |pool| {
            let mut sql = builder(pool, "UPDATE job_steps SET status = ");
            sql.push_bind(status.as_str());
            match status {
                StepStatus::Running => {
                    sql.push(", started_at = ")
                        .push_bind(at)
                        .push(", finished_at = NULL, error = NULL, progress = 0");
                }
                StepStatus::Pending | StepStatus::Skipped | StepStatus::Undoing => {}
                _ => {
                    sql.push(", finished_at = ").push_bind(at);
                }
            }
            if status == StepStatus::Done {
                sql.push(", progress = 100");
            }
            if let Some(error) = error {
                sql.push(", error = ").push_bind(error.to_owned());
            }
            if let Some(output) = output {
                sql.push(", output = ").push_bind(output.to_string());
            }
            sql.push(" WHERE job_id = ")
                .push_bind(id.to_string())
                .push(" AND idx = ")
                .push_bind(i64::from(index));
            sql.build().execute(pool).await
        })?;
        Ok(())
    }

    /// Records progress within a step.
    pub async fn job_step_progress(&self, id: JobId, index: u16, progress: u8) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE job_steps SET progress = $1 WHERE job_id = $2 AND idx = $3"
        )
        .bind(i64::from(progress.min(100)))
        .bind(id.to_string())
        .bind(i64::from(index))
        .execute(pool)
        .await)?;
        Ok(())
    }

    pub async fn job_log_append(&self, id: JobId, line: &JobLogLine) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO job_log (job_id, at, level, message) VALUES ($1, $2, $3, $4)"
        )
        .bind(id.to_string())
        .bind(line.at)
        .bind(line.level.as_str())
        .bind(&line.message)
        .execute(pool)
        .await)?;
        Ok(())
    }

    /// The job's log, oldest first (at most `limit` lines, the first ones).
    pub async fn job_log(&self, id: JobId, limit: u32) -> Result<Vec<JobLogLine>> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "SELECT at, level, message FROM job_log WHERE job_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(id.to_string())
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|row| {
                let level: String = row.col("level")?;
                Ok(JobLogLine {
                    at: row.col("at")?,
                    level: parse_col(&level, "log level")?,
                    message: row.col("message")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MasterKey, Sealer};
    use overvisor_model::account::{Role, UserId};
    use overvisor_model::job::LogLevel;

    fn job(owner: UserId, kind: &str) -> Job {
        Job::queued(kind.into(), owner, owner, Some("host:x".into()))
    }

    fn grant(owner: UserId) -> Grant {
        Grant {
            subject: owner,
            subject_name: "alice".into(),
            via: "console".into(),
            source_ip: None,
            role: Role::Operator,
            owner,
        }
    }

    const OP: Operation = Operation::TestSleep {
        seconds: 1,
        fail: false,
    };

    async fn insert(store: &Store, sealer: &Sealer, j: &Job, secret: Option<&[u8]>) {
        try_insert(store, sealer, j, secret).await.expect("insert");
    }

    async fn try_insert(
        store: &Store,
        sealer: &Sealer,
        j: &Job,
        secret: Option<&[u8]>,
    ) -> Result<()> {
        let g = grant(j.owner);
        store
            .job_insert(
                sealer,
                &NewJob {
                    job: j,
                    operation: &OP,
                    grant: &g,
                    secret,
                    slot: Some("host:1"),
                    timeout_secs: 30,
                    steps: &[
                        NewStep {
                            name: "first",
                            has_undo: true,
                            done: None,
                        },
                        NewStep {
                            name: "second",
                            has_undo: false,
                            done: None,
                        },
                    ],
                },
            )
            .await
    }

    async fn one_deployment_of_a_name_per_host_at_a_time(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let owner = UserId::new();
        let job =
            |kind: &str, target: &str| Job::queued(kind.into(), owner, owner, Some(target.into()));
        let first = job("vm.deploy", "vm:h1/web");
        insert(&store, &sealer, &first, None).await;
        // Another name, another host, another kind of job on the name: fine.
        insert(&store, &sealer, &job("vm.deploy", "vm:h1/db"), None).await;
        insert(&store, &sealer, &job("vm.deploy", "vm:h2/web"), None).await;
        insert(&store, &sealer, &job("vm.start", "vm:h1/web"), None).await;
        let second = job("vm.deploy", "vm:h1/web");
        let refused = try_insert(&store, &sealer, &second, None).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert!(matches!(
            store.job_get(second.id).await,
            Err(StoreError::NotFound(_))
        ));
        // Still running: still taken. Once it ended, the name is free again.
        let now = Utc::now();
        store
            .job_transition(first.id, JobStatus::Running, now, None, None)
            .await
            .expect("run");
        assert!(try_insert(&store, &sealer, &second, None).await.is_err());
        store
            .job_transition(first.id, JobStatus::Failed, now, Some("x"), None)
            .await
            .expect("fail");
        insert(&store, &sealer, &second, None).await;
    }

    async fn guarded_transitions_and_steps(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let j = job(UserId::new(), "test.sleep");
        insert(&store, &sealer, &j, Some(b"hunter2")).await;
        let now = Utc::now();
        assert!(
            !store
                .job_transition(j.id, JobStatus::Succeeded, now, None, None)
                .await
                .expect("t"),
            "queued cannot succeed without running"
        );
        assert!(
            store
                .job_transition(j.id, JobStatus::Running, now, None, None)
                .await
                .expect("t")
        );
        store.job_progress(j.id, 40).await.expect("progress");
        let steps = store.job_steps(j.id).await.expect("steps");
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.name.as_str(), s.status, s.has_undo))
                .collect::<Vec<_>>(),
            vec![
                ("first", StepStatus::Pending, true),
                ("second", StepStatus::Pending, false)
            ]
        );
        let out = serde_json::json!({"state": "running"});
        store
            .job_step_set(j.id, 0, StepStatus::Running, now, None, None)
            .await
            .expect("step");
        store
            .job_step_set(j.id, 0, StepStatus::Done, now, None, Some(&out))
            .await
            .expect("step");
        let steps = store.job_steps(j.id).await.expect("steps");
        assert_eq!(steps[0].status, StepStatus::Done);
        assert_eq!(steps[0].output, Some(out));
        assert!(steps[0].started_at.is_some() && steps[0].finished_at.is_some());
        assert_eq!(steps[0].progress, 100);

        // The secret is sealed to the job's row: readable with the key, and
        // not stored as it was given.
        assert_eq!(
            store.job_secret(&sealer, j.id).await.expect("secret"),
            Some(b"hunter2".to_vec())
        );
        let raw: Vec<u8> = with_pool!(store, |pool| sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT sealed_input FROM jobs WHERE id = $1"
        )
        .bind(j.id.to_string())
        .fetch_one(pool)
        .await)
        .expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));

        let result = serde_json::json!({"ok": true});
        assert!(
            store
                .job_transition(j.id, JobStatus::Succeeded, now, None, Some(&result))
                .await
                .expect("t")
        );
        assert!(
            !store
                .job_transition(j.id, JobStatus::Failed, now, Some("late"), None)
                .await
                .expect("t"),
            "a finished job never changes"
        );
        let got = store.job_get(j.id).await.expect("get");
        assert_eq!(got.status, JobStatus::Succeeded);
        assert_eq!(got.progress, 100);
        assert_eq!(got.result, Some(result));
        assert!(got.error.is_none() && got.started_at.is_some() && got.finished_at.is_some());
        assert_eq!(store.job_operation(j.id).await.expect("op"), Some(OP));
        // The secret lives no longer than its job.
        assert_eq!(store.job_secret(&sealer, j.id).await.expect("secret"), None);
    }

    async fn claims_are_exclusive_and_leases_lapse(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let j = job(UserId::new(), "test.sleep");
        insert(&store, &sealer, &j, None).await;
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(10);
        let listed = store.jobs_claimable(now, 10).await.expect("claimable");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].slot.as_deref(), Some("host:1"));
        let claimed = store
            .job_claim(j.id, "runner-a", now, lease)
            .await
            .expect("claim")
            .expect("first claim wins");
        assert_eq!(claimed.job.status, JobStatus::Running);
        assert_eq!(claimed.attempt, 1);
        assert_eq!(claimed.operation, Some(OP));
        assert_eq!(claimed.timeout_secs, 30);
        assert!(
            store
                .job_claim(j.id, "runner-b", now, lease)
                .await
                .expect("claim")
                .is_none(),
            "a leased job is not claimed twice"
        );
        assert!(store.jobs_claimable(now, 10).await.expect("c").is_empty());
        store.job_request_cancel(j.id).await.expect("cancel");
        let renewed = store
            .job_leases_renew("runner-a", lease)
            .await
            .expect("renew");
        assert_eq!(
            renewed,
            vec![Lease {
                id: j.id,
                cancel_requested: true
            }]
        );
        assert!(
            store
                .job_leases_renew("runner-b", lease)
                .await
                .expect("r")
                .is_empty()
        );
        // Once the lease lapses another runner may take the job over.
        let later = lease + chrono::Duration::seconds(1);
        assert_eq!(store.jobs_claimable(later, 10).await.expect("c").len(), 1);
        let taken = store
            .job_claim(
                j.id,
                "runner-b",
                later,
                later + chrono::Duration::seconds(10),
            )
            .await
            .expect("claim")
            .expect("lapsed lease");
        assert_eq!(taken.attempt, 2);
        assert!(
            store
                .job_leases_renew("runner-a", later)
                .await
                .expect("r")
                .is_empty(),
            "the first runner learns it lost the job"
        );
        assert!(
            store
                .job_transition(j.id, JobStatus::Failed, later, Some("x"), None)
                .await
                .expect("t")
        );
        assert!(
            store
                .job_leases_renew("runner-b", later)
                .await
                .expect("r")
                .is_empty()
        );
        assert!(store.jobs_claimable(later, 10).await.expect("c").is_empty());
    }

    async fn list_and_log(store: Store) {
        let sealer = Sealer::new(&MasterKey::generate());
        let (a, b) = (UserId::new(), UserId::new());
        let j1 = job(a, "vm.start");
        let j2 = job(a, "vm.stop");
        let j3 = job(b, "vm.start");
        for j in [&j1, &j2, &j3] {
            insert(&store, &sealer, j, None).await;
        }
        store
            .job_transition(j2.id, JobStatus::Running, Utc::now(), None, None)
            .await
            .expect("run");
        let line = JobLogLine {
            at: crate::testdb::now(),
            level: LogLevel::Info,
            message: "hello".into(),
        };
        store.job_log_append(j2.id, &line).await.expect("log");
        assert_eq!(store.job_log(j2.id, 10).await.expect("log"), vec![line]);

        let mine = JobQuery {
            owner: Some(a),
            limit: 10,
            ..Default::default()
        };
        let listed = store.job_list(&mine).await.expect("list");
        assert_eq!(
            listed.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![j2.id, j1.id]
        );
        let page = store
            .job_list(&JobQuery {
                before: Some(j2.id),
                ..mine.clone()
            })
            .await
            .expect("page");
        assert_eq!(page.len(), 1);
        let unknown_cursor = store
            .job_list(&JobQuery {
                before: Some(JobId::new()),
                ..mine.clone()
            })
            .await
            .expect("page");
        assert!(unknown_cursor.is_empty());
        let running = store
            .job_list(&JobQuery {
                status: Some(JobStatus::Running),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(running.len(), 1);
    }

    /// On PostgreSQL a claim skips a job whose row another transaction
    /// holds (another replica claiming it) instead of waiting for it.
    #[tokio::test]
    async fn a_locked_job_is_skipped_not_waited_for() {
        let store = crate::testdb::postgres().await;
        let sealer = Sealer::new(&MasterKey::generate());
        let j = job(UserId::new(), "test.sleep");
        insert(&store, &sealer, &j, None).await;
        let crate::Db::Postgres(pool) = store.db() else {
            panic!("a PostgreSQL store");
        };
        let mut other = pool.begin().await.expect("begin");
        sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(j.id.to_string())
            .execute(&mut *other)
            .await
            .expect("lock the row");
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(10);
        assert!(
            store
                .job_claim(j.id, "runner-a", now, lease)
                .await
                .expect("claim")
                .is_none(),
            "the locked job is skipped"
        );
        other.rollback().await.expect("rollback");
        let claimed = store
            .job_claim(j.id, "runner-a", now, lease)
            .await
            .expect("claim")
            .expect("claimable once the lock is gone");
        assert_eq!(claimed.attempt, 1);
    }

    crate::testdb::on_both_backends!(
        guarded_transitions_and_steps,
        claims_are_exclusive_and_leases_lapse,
        list_and_log,
        one_deployment_of_a_name_per_host_at_a_time
    );
}
