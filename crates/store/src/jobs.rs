//! Jobs, their steps and their log lines. Every status change is one
//! guarded `UPDATE` (`WHERE status IN <allowed predecessors>`), so two
//! writers can never both finish a job and a finished job never changes
//! again. A job row also holds the operation it runs and the lease of the
//! runner that claimed it: claiming is one guarded `UPDATE` as well, so two
//! runners (threads or processes on one database) never both run a job.

use chrono::{DateTime, Utc};
use overvisor_model::job::{Job, JobId, JobLogLine, JobQuery, JobStatus};
use overvisor_model::operation::{Grant, JobStep, Operation, StepStatus};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{Result, Sealer, Store, StoreError, parse_col};

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

fn job_id_col(row: &SqliteRow) -> Result<JobId> {
    let id: String = row.try_get("id")?;
    parse_col(&id, "job id")
}

fn job_from_row(row: &SqliteRow) -> Result<Job> {
    let id: String = row.try_get("id")?;
    let requester: String = row.try_get("requester_id")?;
    let owner: String = row.try_get("owner_id")?;
    let status: String = row.try_get("status")?;
    let progress: i64 = row.try_get("progress")?;
    let result: Option<String> = row.try_get("result")?;
    let parent: Option<String> = row.try_get("parent_id")?;
    Ok(Job {
        id: parse_col(&id, "job id")?,
        kind: row.try_get("kind")?,
        requester: parse_col(&requester, "user id")?,
        owner: parse_col(&owner, "user id")?,
        target: row.try_get("target")?,
        status: parse_col(&status, "job status")?,
        progress: u8::try_from(progress.clamp(0, 100))
            .map_err(|_| StoreError::Corrupt("bad job progress".into()))?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
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

fn step_from_row(row: &SqliteRow) -> Result<JobStep> {
    let idx: i64 = row.try_get("idx")?;
    let status: String = row.try_get("status")?;
    let progress: i64 = row.try_get("progress")?;
    let output: Option<String> = row.try_get("output")?;
    Ok(JobStep {
        index: u16::try_from(idx).map_err(|_| StoreError::Corrupt("bad step index".into()))?,
        name: row.try_get("name")?,
        status: parse_col::<StepStatus>(&status, "step status")?,
        has_undo: row.try_get("has_undo")?,
        progress: u8::try_from(progress.clamp(0, 100)).unwrap_or(100),
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        output: json_col(output, "step output")?,
    })
}

/// The associated data binding a job's sealed input to its row.
fn input_binding(id: JobId) -> String {
    format!("jobs.sealed_input:{id}")
}

/// Queued, or running under a lease that lapsed: a runner may take it.
/// A running job without a lease is from before leases existed.
const CLAIMABLE: &str =
    "(status = 'queued' OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < ?)))";

impl Store {
    /// Inserts a job, its operation and its steps (all pending) at once.
    pub async fn job_insert(&self, sealer: &Sealer, new: &NewJob<'_>) -> Result<()> {
        let job = new.job;
        let operation = serde_json::to_string(new.operation)
            .map_err(|e| StoreError::Corrupt(format!("operation: {e}")))?;
        let grant = serde_json::to_string(new.grant)
            .map_err(|e| StoreError::Corrupt(format!("grant: {e}")))?;
        let sealed = new.secret.map(|s| sealer.seal(&input_binding(job.id), s));
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, requester_id, owner_id, target, status, progress, created_at,
                               started_at, finished_at, error, result, parent_id, operation,
                               grant_info, sealed_input, slot, timeout_secs)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        Ok(())
    }

    pub async fn job_get(&self, id: JobId) -> Result<Job> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("job"))?;
        job_from_row(&row)
    }

    /// The operation a job runs (`None` for rows from before operations).
    pub async fn job_operation(&self, id: JobId) -> Result<Option<Operation>> {
        let op: Option<Option<String>> =
            sqlx::query_scalar("SELECT operation FROM jobs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(self.pool())
                .await?;
        json_col(op.ok_or(StoreError::NotFound("job"))?, "job operation")
    }

    /// The secret sealed with a job, opened (only runners ask for it).
    pub async fn job_secret(&self, sealer: &Sealer, id: JobId) -> Result<Option<Vec<u8>>> {
        let sealed: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT sealed_input FROM jobs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(self.pool())
                .await?;
        match sealed.ok_or(StoreError::NotFound("job"))? {
            Some(sealed) => Ok(Some(sealer.open(&input_binding(id), &sealed)?)),
            None => Ok(None),
        }
    }

    pub async fn job_list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let mut sql: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1"));
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
        let rows = sql.build().fetch_all(self.pool()).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs a runner could claim now, oldest first.
    pub async fn jobs_claimable(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Claimable>> {
        let rows = sqlx::query(&format!(
            "SELECT id, slot FROM jobs WHERE {CLAIMABLE} ORDER BY seq LIMIT ?"
        ))
        .bind(now.timestamp_millis())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Claimable {
                    id: job_id_col(row)?,
                    slot: row.try_get("slot")?,
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
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', started_at = coalesce(started_at, ?),
                    lease_owner = ?, lease_expires = ?, attempt = attempt + 1
             WHERE id = ? AND {CLAIMABLE}
             RETURNING {COLUMNS}, operation, grant_info, slot, timeout_secs, attempt"
        ))
        .bind(now)
        .bind(runner)
        .bind(lease_until.timestamp_millis())
        .bind(id.to_string())
        .bind(now.timestamp_millis())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let timeout: i64 = row.try_get("timeout_secs")?;
        let attempt: i64 = row.try_get("attempt")?;
        Ok(Some(Claimed {
            job: job_from_row(&row)?,
            // An operation this build cannot read is run by nobody: the
            // runner marks the job interrupted.
            operation: json_col(row.try_get("operation")?, "job operation").unwrap_or(None),
            grant: json_col(row.try_get("grant_info")?, "job grant").unwrap_or(None),
            slot: row.try_get("slot")?,
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
        let rows = sqlx::query(
            "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND status = 'running'
             RETURNING id, cancel_requested",
        )
        .bind(lease_until.timestamp_millis())
        .bind(runner)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Lease {
                    id: job_id_col(row)?,
                    cancel_requested: row.try_get("cancel_requested")?,
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
        let done = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ?, sealed_input = NULL
             WHERE id = ? AND status = 'queued'",
        )
        .bind(at)
        .bind(error)
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks whichever runner holds a running job to cancel it.
    pub async fn job_request_cancel(&self, id: JobId) -> Result<()> {
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
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
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE jobs SET status = ");
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
        let done = sql.build().execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records progress of a running job (ignored once it has finished).
    pub async fn job_progress(&self, id: JobId, progress: u8) -> Result<()> {
        sqlx::query("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'")
            .bind(i64::from(progress.min(100)))
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A job's steps in order.
    pub async fn job_steps(&self, id: JobId) -> Result<Vec<JobStep>> {
        let rows = sqlx::query(
            "SELECT idx, name, status, has_undo, progress, started_at, finished_at, error, output
             FROM job_steps WHERE job_id = ? ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
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
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE job_steps SET status = ");
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
        sql.build().execute(self.pool()).await?;
        Ok(())
    }

    /// Records progress within a step.
    pub async fn job_step_progress(&self, id: JobId, index: u16, progress: u8) -> Result<()> {
        sqlx::query("UPDATE job_steps SET progress = ? WHERE job_id = ? AND idx = ?")
            .bind(i64::from(progress.min(100)))
            .bind(id.to_string())
            .bind(i64::from(index))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn job_log_append(&self, id: JobId, line: &JobLogLine) -> Result<()> {
        sqlx::query("INSERT INTO job_log (job_id, at, level, message) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(line.at)
            .bind(line.level.as_str())
            .bind(&line.message)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The job's log, oldest first (at most `limit` lines, the first ones).
    pub async fn job_log(&self, id: JobId, limit: u32) -> Result<Vec<JobLogLine>> {
        let rows = sqlx::query(
            "SELECT at, level, message FROM job_log WHERE job_id = ? ORDER BY id LIMIT ?",
        )
        .bind(id.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let level: String = row.try_get("level")?;
                Ok(JobLogLine {
                    at: row.try_get("at")?,
                    level: parse_col(&level, "log level")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store;
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
            .expect("insert");
    }

    #[tokio::test]
    async fn guarded_transitions_and_steps() {
        let store = test_store().await;
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
        let raw: Vec<u8> = sqlx::query_scalar("SELECT sealed_input FROM jobs WHERE id = ?")
            .bind(j.id.to_string())
            .fetch_one(store.pool())
            .await
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

    #[tokio::test]
    async fn claims_are_exclusive_and_leases_lapse() {
        let store = test_store().await;
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

    #[tokio::test]
    async fn list_and_log() {
        let store = test_store().await;
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
            at: Utc::now(),
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
}
