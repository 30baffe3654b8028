//! Jobs: every change runs as a job that is persisted at each step, so the
//! API can answer `202 Accepted` at once and clients can wait or watch.
//!
//! The runner spawns each job's work as its own task, limits how many jobs
//! run against one host at a time (a semaphore per slot key), enforces a
//! timeout, and cancels on request (the work sees a `CancellationToken` and
//! may stop by itself; if it does not, its task is aborted). Every status
//! change is written to the store before it is published on the event bus,
//! and every job's outcome is audited. Jobs left unfinished by a previous
//! process are marked `interrupted` at start-up and never re-run: what they
//! did on a host is unknown, and running a VM action twice is worse than
//! asking the operator to look.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use overvisor_model::account::{Outcome, UserId};
use overvisor_model::host::HostId;
use overvisor_model::job::{Job, JobId, JobLogLine, JobStatus, LogLevel, check_job_kind};
use overvisor_store::audit::NewAuditEvent;
use overvisor_store::jobs::JobQuery;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::credentials::API_KEY_MARKER;
use crate::events::Event;
use crate::{App, AppError};

/// Jobs that may run at once against one host.
pub const DEFAULT_PER_HOST: usize = 4;
/// How long a job may run unless its spec says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// Most log lines returned with a job.
const MAX_LOG_LINES: u32 = 10_000;
/// Why a job is `interrupted` after a restart.
pub const INTERRUPTED_REASON: &str =
    "the service stopped while this job was unfinished; it was not run again";

/// What to run: the job's description and its limits.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub kind: String,
    pub owner: UserId,
    pub target: Option<String>,
    /// Jobs with the same slot share the per-host concurrency limit.
    pub slot: Option<String>,
    pub timeout: Duration,
    parent: Option<JobId>,
}

impl JobSpec {
    pub fn new(kind: impl Into<String>, owner: UserId) -> Self {
        Self {
            kind: kind.into(),
            owner,
            target: None,
            slot: None,
            timeout: DEFAULT_TIMEOUT,
            parent: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Counts this job against `host`'s concurrency limit.
    pub fn on_host(mut self, host: HostId) -> Self {
        self.slot = Some(format!("host:{host}"));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why a job's work failed, in words fit for the job record (no secrets:
/// the text is scrubbed anyway, but do not put any in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError(pub String);

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// Like anyhow: any error converts, so work can use `?` on driver and app calls.
impl<E: std::error::Error> From<E> for JobError {
    fn from(err: E) -> Self {
        Self(err.to_string())
    }
}

pub type JobResult = Result<serde_json::Value, JobError>;

/// The runner's shared state (lives in [`App`]).
pub struct JobRunner {
    per_slot: usize,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    live: Mutex<HashMap<JobId, CancellationToken>>,
}

impl Default for JobRunner {
    fn default() -> Self {
        Self::new(DEFAULT_PER_HOST)
    }
}

impl JobRunner {
    pub fn new(per_slot: usize) -> Self {
        Self {
            per_slot: per_slot.max(1),
            slots: Mutex::default(),
            live: Mutex::default(),
        }
    }

    fn slot(&self, key: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_slot)))
            .clone()
    }

    fn register(&self, id: JobId, token: CancellationToken) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, token);
    }

    fn forget(&self, id: JobId) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn token(&self, id: JobId) -> Option<CancellationToken> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Jobs running or queued in this process.
    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What a job's work gets: its id, a way to report, and its cancellation.
#[derive(Clone)]
pub struct JobContext {
    app: App,
    id: JobId,
    owner: UserId,
    subject: Subject,
    slot: Option<String>,
    cancel: CancellationToken,
}

impl JobContext {
    pub fn id(&self) -> JobId {
        self.id
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Cancelled when someone cancels the job (or its parent).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Records progress (0..=100) and tells watchers.
    pub async fn progress(&self, percent: u8) {
        let app = &self.app;
        if let Err(err) = app.store().job_progress(self.id, percent.min(100)).await {
            tracing::warn!(job = %self.id, error = %err, "cannot record job progress");
            return;
        }
        app.job_publish_current(self.id, self.owner).await;
    }

    /// Appends a timestamped line to the job's log and tells watchers.
    pub async fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        let mut message = scrub(message.as_ref());
        truncate_utf8(&mut message, MAX_LOG_LINE);
        let line = JobLogLine {
            at: Utc::now(),
            level,
            message,
        };
        if let Err(err) = self.app.store().job_log_append(self.id, &line).await {
            tracing::warn!(job = %self.id, error = %err, "cannot record job log line");
            return;
        }
        self.app.events().publish(
            self.owner,
            Event::JobLog {
                job_id: self.id,
                line,
            },
        );
    }

    pub async fn info(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message).await;
    }

    /// Starts a child job with the same owner and requester; cancelling
    /// this job cancels it. Unless `spec` names one, the child gets no slot:
    /// a child waiting for its parent's host slot could wait forever.
    pub async fn child<F, Fut>(&self, mut spec: JobSpec, work: F) -> Result<Job, AppError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        spec.owner = self.owner;
        spec.parent = Some(self.id);
        if spec.slot.as_deref() == self.slot.as_deref() {
            spec.slot = None;
        }
        self.app
            .job_start(&self.subject, spec, self.cancel.child_token(), work)
            .await
    }

    /// Waits until job `id` (e.g. a child) has finished.
    pub async fn wait_for(&self, id: JobId) -> Result<Job, AppError> {
        self.app.job_wait_unchecked(id, None).await
    }
}

/// Filters for listing jobs; visibility is added by [`App::jobs_list`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub parent: Option<JobId>,
    pub before: Option<JobId>,
    pub limit: u32,
    /// Admins see every user's jobs with this set.
    pub all: bool,
}

/// A job with its log, as `GET /jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    pub log: Vec<JobLogLine>,
}

impl App {
    /// Creates a job and starts its work in the background; returns the
    /// job as stored (usually `queued`). `subject` must be allowed to
    /// operate on `spec.owner`'s infrastructure.
    pub async fn job_submit<F, Fut>(
        &self,
        subject: &Subject,
        spec: JobSpec,
        work: F,
    ) -> Result<Job, AppError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        self.job_start(subject, spec, CancellationToken::new(), work)
            .await
    }

    async fn job_start<F, Fut>(
        &self,
        subject: &Subject,
        spec: JobSpec,
        cancel: CancellationToken,
        work: F,
    ) -> Result<Job, AppError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        authorize(subject, Action::Operate, Resource::OwnedBy(spec.owner))?;
        check_job_kind(&spec.kind)?;
        let job = Job {
            id: JobId::new(),
            kind: spec.kind.clone(),
            requester: subject.id(),
            owner: spec.owner,
            target: spec.target.as_deref().map(scrub),
            status: JobStatus::Queued,
            progress: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
            parent: spec.parent,
        };
        self.store().job_insert(&job).await?;
        metrics::counter!("overvisor_jobs_total", "kind" => job.kind.clone()).increment(1);
        self.events().publish(
            job.owner,
            Event::JobCreated {
                job: Box::new(job.clone()),
            },
        );
        self.jobs().register(job.id, cancel.clone());
        let ctx = JobContext {
            app: self.clone(),
            id: job.id,
            owner: job.owner,
            subject: subject.clone(),
            slot: spec.slot.clone(),
            cancel,
        };
        tokio::spawn(run(ctx, spec, work));
        Ok(job)
    }

    /// One job, if `subject` may see it (another tenant's job is not found).
    pub async fn job_get(&self, subject: &Subject, id: JobId) -> Result<JobDetail, AppError> {
        let job = self.job_visible(subject, id).await?;
        let log = self.store().job_log(id, MAX_LOG_LINES).await?;
        Ok(JobDetail { job, log })
    }

    async fn job_visible(&self, subject: &Subject, id: JobId) -> Result<Job, AppError> {
        let job = self.store().job_get(id).await?;
        authorize(subject, Action::Read, Resource::OwnedBy(job.owner))
            .map_err(|_| AppError::NotFound("job"))?;
        Ok(job)
    }

    pub async fn jobs_list(
        &self,
        subject: &Subject,
        filter: JobFilter,
    ) -> Result<Vec<Job>, AppError> {
        let owner = if filter.all {
            if subject.role() != overvisor_model::account::Role::Admin {
                return Err(AppError::Forbidden("list every user's jobs"));
            }
            None
        } else {
            authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
            Some(subject.id())
        };
        let query = JobQuery {
            owner,
            status: filter.status,
            kind: filter.kind,
            target: filter.target,
            parent: filter.parent,
            before: filter.before,
            limit: filter.limit,
        };
        Ok(self.store().job_list(&query).await?)
    }

    /// Returns job `id` once it has finished or `wait` has passed,
    /// whichever comes first.
    pub async fn job_wait(
        &self,
        subject: &Subject,
        id: JobId,
        wait: Duration,
    ) -> Result<JobDetail, AppError> {
        self.job_visible(subject, id).await?;
        self.job_wait_unchecked(id, Some(wait)).await?;
        self.job_get(subject, id).await
    }

    /// Waits up to `wait` for a job the caller just started and answers
    /// like the synchronous call would have: the job once it succeeded (or
    /// is still running), its error when it did not succeed. For pages that
    /// show an outcome rather than a job.
    pub async fn job_follow(
        &self,
        subject: &Subject,
        job: &Job,
        wait: Duration,
    ) -> Result<Job, AppError> {
        let job = self.job_wait(subject, job.id, wait).await?.job;
        match job.status {
            JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted => Err(
                AppError::HostFailed(job.error.clone().unwrap_or_else(|| job.status.to_string())),
            ),
            _ => Ok(job),
        }
    }

    /// Waits for a job to finish without authorization (the caller checked).
    async fn job_wait_unchecked(&self, id: JobId, wait: Option<Duration>) -> Result<Job, AppError> {
        // Subscribe before reading, so a change in between is not missed.
        let mut rx = self.events().receiver();
        let job = self.store().job_get(id).await?;
        if job.status.is_terminal() {
            return Ok(job);
        }
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(self.store().job_get(id).await?),
                got = rx.recv() => match got {
                    Ok(env) => {
                        if let Event::JobUpdated { job } = &env.event
                            && job.id == id
                            && job.status.is_terminal()
                        {
                            return Ok((**job).clone());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let job = self.store().job_get(id).await?;
                        if job.status.is_terminal() {
                            return Ok(job);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Ok(self.store().job_get(id).await?);
                    }
                },
            }
        }
    }

    /// Asks a queued or running job to stop; returns it once it has
    /// stopped (or after a short grace, still stopping).
    pub async fn job_cancel(&self, subject: &Subject, id: JobId) -> Result<JobDetail, AppError> {
        let job = self.job_visible(subject, id).await?;
        authorize(subject, Action::Operate, Resource::OwnedBy(job.owner))?;
        if job.status.is_terminal() {
            return Err(AppError::Conflict(format!(
                "job already finished ({})",
                job.status
            )));
        }
        match self.jobs().token(id) {
            Some(token) => token.cancel(),
            // Not live in this process (cannot happen after start-up
            // recovery, but a stray row must still be cancellable).
            None => {
                self.job_finish(&job, JobStatus::Cancelled, Some("cancelled"), None)
                    .await;
            }
        }
        self.audit(
            subject,
            "job.cancel",
            job_target(&job),
            Outcome::Success,
            Some(format!("kind={}", job.kind)),
        )
        .await;
        self.job_wait_unchecked(id, Some(Duration::from_secs(5)))
            .await?;
        self.job_get(subject, id).await
    }

    /// Marks jobs a previous process left unfinished as interrupted. Call
    /// once at start-up, before serving.
    pub async fn jobs_recover(&self) -> Result<usize, AppError> {
        let ids = self
            .store()
            .jobs_interrupt_unfinished(Utc::now(), INTERRUPTED_REASON)
            .await?;
        for id in &ids {
            let job = self.store().job_get(*id).await?;
            tracing::warn!(job = %id, kind = %job.kind, "job interrupted by a restart");
            self.audit_raw(NewAuditEvent {
                actor_id: None,
                actor_name: None,
                via: Some("system".into()),
                source_ip: None,
                action: audit_action(&job),
                target: job_target(&job).name,
                target_owner: Some(job.owner),
                outcome: Outcome::Failure,
                detail: Some(format!("job={} status=interrupted", job.id)),
            })
            .await;
        }
        Ok(ids.len())
    }

    /// Writes a status change, then publishes the job as stored.
    async fn job_finish(
        &self,
        job: &Job,
        to: JobStatus,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> bool {
        let error = error.map(scrub);
        match self
            .store()
            .job_transition(job.id, to, Utc::now(), error.as_deref(), result)
            .await
        {
            Ok(true) => {
                self.job_publish_current(job.id, job.owner).await;
                true
            }
            Ok(false) => false,
            Err(err) => {
                tracing::error!(job = %job.id, to = %to, error = %err, "cannot record job status");
                false
            }
        }
    }

    /// A job that sleeps `seconds`, logging and reporting progress every
    /// second, then succeeds (or fails when `fail`). It touches nothing, so
    /// tests can kill the service mid-job or cancel it deterministically;
    /// the server only offers it when test jobs are enabled.
    pub async fn job_test_sleep(
        &self,
        subject: &Subject,
        seconds: u32,
        fail: bool,
    ) -> Result<Job, AppError> {
        let spec = JobSpec::new("test.sleep", subject.id())
            .target(format!("sleep:{seconds}s"))
            .timeout(Duration::from_secs(u64::from(seconds) + 30));
        self.job_submit(subject, spec, move |ctx| async move {
            for second in 0..seconds {
                ctx.info(format!("slept {second} of {seconds} s")).await;
                let percent = u8::try_from(second * 100 / seconds.max(1)).unwrap_or(100);
                ctx.progress(percent).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if fail {
                return Err(JobError::new("failed on purpose"));
            }
            Ok(serde_json::json!({ "slept_seconds": seconds }))
        })
        .await
    }

    async fn job_publish_current(&self, id: JobId, owner: UserId) {
        match self.store().job_get(id).await {
            Ok(job) => self
                .events()
                .publish(owner, Event::JobUpdated { job: Box::new(job) }),
            Err(err) => tracing::warn!(job = %id, error = %err, "cannot re-read job"),
        }
    }
}

/// Jobs are audited as `job.<kind>`, apart from what their work audits.
fn audit_action(job: &Job) -> String {
    format!("job.{}", job.kind)
}

fn job_target(job: &Job) -> Target {
    Target::named(
        job.target
            .clone()
            .unwrap_or_else(|| format!("job:{}", job.id)),
        job.owner,
    )
}

/// Runs one job to its end. Every exit path records a terminal status.
async fn run<F, Fut>(ctx: JobContext, spec: JobSpec, work: F)
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    let app = ctx.app.clone();
    let mut job = match app.store().job_get(ctx.id).await {
        Ok(job) => job,
        Err(err) => {
            tracing::error!(job = %ctx.id, error = %err, "job vanished before it ran");
            app.jobs().forget(ctx.id);
            return;
        }
    };
    let (status, error, result) = execute(&app, &ctx, &spec, &mut job, work).await;
    app.job_finish(&job, status, error.as_deref(), result.as_ref())
        .await;
    app.jobs().forget(job.id);
    let outcome = if status == JobStatus::Succeeded {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let mut detail = format!("job={} status={status}", job.id);
    if let Some(e) = &error {
        detail.push_str(&format!(" error={}", scrub(e)));
    }
    metrics::counter!("overvisor_jobs_finished_total", "status" => status.as_str()).increment(1);
    app.audit(
        &ctx.subject,
        &audit_action(&job),
        job_target(&job),
        outcome,
        Some(detail),
    )
    .await;
}

type Finished = (JobStatus, Option<String>, Option<serde_json::Value>);

async fn execute<F, Fut>(
    app: &App,
    ctx: &JobContext,
    spec: &JobSpec,
    job: &mut Job,
    work: F,
) -> Finished
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    let cancel = ctx.cancel.clone();
    // Wait for a slot on the host, unless cancelled first.
    let _permit = match &spec.slot {
        Some(key) => {
            let slot = app.jobs().slot(key);
            tokio::select! {
                permit = slot.acquire_owned() => permit.ok(),
                _ = cancel.cancelled() => {
                    return (JobStatus::Cancelled, Some("cancelled before it started".into()), None);
                }
            }
        }
        None => None,
    };
    if cancel.is_cancelled() {
        return (
            JobStatus::Cancelled,
            Some("cancelled before it started".into()),
            None,
        );
    }
    if !app.job_finish(job, JobStatus::Running, None, None).await {
        // Someone else finished it (e.g. cancelled while queued).
        return (JobStatus::Cancelled, None, None);
    }
    job.status = JobStatus::Running;
    // The work runs as its own task so a panic fails the job instead of
    // leaving it running, and so it can be aborted on cancel or timeout.
    let mut task = tokio::spawn(work(ctx.clone()));
    let timeout = tokio::time::sleep(spec.timeout);
    tokio::select! {
        joined = &mut task => match joined {
            Ok(Ok(result)) => (JobStatus::Succeeded, None, Some(result)),
            Ok(Err(err)) => (JobStatus::Failed, Some(err.0), None),
            Err(join) if join.is_panic() => {
                tracing::error!(job = %job.id, "job work panicked");
                (JobStatus::Failed, Some("internal error".into()), None)
            }
            Err(_) => (JobStatus::Cancelled, Some("cancelled".into()), None),
        },
        _ = timeout => {
            task.abort();
            (JobStatus::Failed, Some(format!("timed out after {} s", spec.timeout.as_secs())), None)
        }
        _ = cancel.cancelled() => {
            // Give cooperative work a moment to stop on its own.
            match tokio::time::timeout(Duration::from_secs(2), &mut task).await {
                Ok(_) => {}
                Err(_) => task.abort(),
            }
            (JobStatus::Cancelled, Some("cancelled on request".into()), None)
        }
    }
}

/// Removes anything shaped like a secret from text headed for a job record:
/// our API tokens and PEM private-key blocks. Job texts come from code and
/// hosts, not from secrets, but a host's error could echo one back.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let token = rest.find(API_KEY_MARKER);
        let pem = rest.find("-----BEGIN");
        let (at, is_token) = match (token, pem) {
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(t), Some(p)) => (t.min(p), t < p),
            (Some(t), None) => (t, true),
            (None, Some(p)) => (p, false),
        };
        out.push_str(&rest[..at]);
        out.push_str("[redacted]");
        let after = &rest[at..];
        let end = if is_token {
            after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(after.len())
        } else {
            // Up to the end of the matching END line, or everything.
            after
                .find("-----END")
                .and_then(|e| after[e + 8..].find("-----").map(|x| e + 8 + x + 5))
                .unwrap_or(after.len())
        };
        rest = &after[end..];
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests;
