//! Jobs and their log lines. Every status change is one guarded `UPDATE`
//! (`WHERE status IN <allowed predecessors>`), so two writers can never both
//! finish a job and a finished job never changes again.

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;
use overvisor_model::job::{Job, JobId, JobLogLine, JobStatus};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{Result, Store, StoreError, parse_col};

/// Filters for listing jobs, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs owned by this user (`None`: everyone's, for admins).
    pub owner: Option<UserId>,
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub parent: Option<JobId>,
    /// Only jobs created before this one (keyset pagination).
    pub before: Option<JobId>,
    pub limit: u32,
}

const COLUMNS: &str = "id, kind, requester_id, owner_id, target, status, progress, created_at, \
                       started_at, finished_at, error, result, parent_id";

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
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|_| StoreError::Corrupt("bad job result".into()))?,
        parent: parent.map(|p| parse_col(&p, "job id")).transpose()?,
    })
}

impl Store {
    pub async fn job_insert(&self, job: &Job) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, kind, requester_id, owner_id, target, status, progress, created_at,
                               started_at, finished_at, error, result, parent_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::on_unique(e, "job"))?;
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

    /// Moves a job to `to` if its current status allows it; returns whether
    /// it did. Entering `running` stamps `started_at`; a terminal status
    /// stamps `finished_at` and, on success, sets progress to 100.
    pub async fn job_transition(
        &self,
        id: JobId,
        to: JobStatus,
        at: DateTime<Utc>,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
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
            sql.push(", finished_at = ").push_bind(at);
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

    /// Marks every job a previous process left queued or running as
    /// interrupted (run once at start-up, before any new job exists).
    pub async fn jobs_interrupt_unfinished(
        &self,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Vec<JobId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?
             WHERE status IN ('queued', 'running') RETURNING id",
        )
        .bind(at)
        .bind(reason)
        .fetch_all(self.pool())
        .await?;
        ids.iter().map(|id| parse_col(id, "job id")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store;
    use overvisor_model::job::LogLevel;

    fn job(owner: UserId, kind: &str) -> Job {
        Job {
            id: JobId::new(),
            kind: kind.into(),
            requester: owner,
            owner,
            target: Some("host:x".into()),
            status: JobStatus::Queued,
            progress: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
            parent: None,
        }
    }

    #[tokio::test]
    async fn guarded_transitions() {
        let store = test_store().await;
        let j = job(UserId::new(), "test.sleep");
        store.job_insert(&j).await.expect("insert");
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
    }

    #[tokio::test]
    async fn list_log_and_interrupt() {
        let store = test_store().await;
        let (a, b) = (UserId::new(), UserId::new());
        let j1 = job(a, "vm.start");
        let j2 = job(a, "vm.stop");
        let j3 = job(b, "vm.start");
        for j in [&j1, &j2, &j3] {
            store.job_insert(j).await.expect("insert");
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

        let mut interrupted = store
            .jobs_interrupt_unfinished(Utc::now(), "service restarted")
            .await
            .expect("interrupt");
        interrupted.sort();
        let mut want = vec![j1.id, j2.id, j3.id];
        want.sort();
        assert_eq!(interrupted, want);
        let got = store.job_get(j2.id).await.expect("get");
        assert_eq!(got.status, JobStatus::Interrupted);
        assert_eq!(got.error.as_deref(), Some("service restarted"));
    }
}
