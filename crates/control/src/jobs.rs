//! Jobs: every change runs as a job, a persisted [`Operation`] with steps.
//!
//! Submitting authorizes once and stores the operation, the [`Grant`] that
//! authorization produced, and the job's steps (all pending, or done when the
//! request already made a check). A runner (`jobs/runner.rs`) — in this
//! process or in any other on the same database — claims queued jobs under
//! a lease, runs their steps without authorizing again, records each step,
//! undoes the steps that began when one fails or the job is cancelled, and
//! audits the outcome once, in the requester's name. A job whose runner died
//! is taken over when its lease lapses: resumed from the step it stopped in
//! when every step of its operation is idempotent, else marked `interrupted`
//! with that step named (see [`crate::operations::resumable`]).

mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use overvisor_model::account::{Outcome, Role, UserId};
use overvisor_model::job::{Job, JobId, JobLogLine, JobQuery, JobStatus, LogLevel, check_job_kind};
use overvisor_model::operation::{Grant, JobStep, Operation, StepStatus};
use overvisor_store::jobs::{NewJob, NewStep};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::audit::Target;
use crate::authz::{Action, Resource, Subject, authorize};
use crate::credentials::API_KEY_MARKER;
use crate::events::Event;
use crate::operations;
use crate::{App, AppError};

/// Jobs that may run at once against one host (per runner).
pub const DEFAULT_PER_HOST: usize = 4;
/// How long a job may run unless its operation says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// Most log lines returned with a job.
const MAX_LOG_LINES: u32 = 10_000;
/// Why a job is `interrupted` when its runner died in a step that must not
/// run twice (the step's name follows).
pub const INTERRUPTED_REASON: &str = "the service stopped while this job ran; it was not run again";

/// How runners share the work.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs that may run at once against one host, per runner.
    pub per_host: usize,
    /// How long a claim holds without renewal: a job whose runner died is
    /// taken over this long after the runner's last renewal.
    pub lease: Duration,
    /// How often a runner looks for jobs queued by other processes (its
    /// own are started at once).
    pub poll: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            per_host: DEFAULT_PER_HOST,
            lease: Duration::from_secs(15),
            poll: Duration::from_millis(500),
        }
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

// Like anyhow: any error converts, so steps can use `?` on driver and store calls.
impl<E: std::error::Error> From<E> for JobError {
    fn from(err: E) -> Self {
        Self(err.to_string())
    }
}

/// This process's runner: its identity in leases, host slots, the jobs it
/// runs now, and the bell that starts a claim round.
pub struct JobRunner {
    id: String,
    settings: JobSettings,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    live: Mutex<HashMap<JobId, LiveJob>>,
    wake: Notify,
}

impl Default for JobRunner {
    fn default() -> Self {
        Self::new(JobSettings::default())
    }
}

impl JobRunner {
    pub fn new(settings: JobSettings) -> Self {
        Self {
            id: format!("runner-{}", uuid::Uuid::new_v4()),
            settings: JobSettings {
                per_host: settings.per_host.max(1),
                ..settings
            },
            slots: Mutex::default(),
            live: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// This runner's name in job leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn slot(&self, key: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_host)))
            .clone()
    }

    fn register(&self, id: JobId) -> LiveJob {
        let live = LiveJob {
            cancel: CancellationToken::new(),
            lost: CancellationToken::new(),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
        live
    }

    /// Whether this runner is running job `id` right now.
    fn is_live(&self, id: JobId) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
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
            .map(|live| live.cancel.clone())
    }

    fn live_jobs(&self) -> Vec<(JobId, LiveJob)> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, live)| (*id, live.clone()))
            .collect()
    }

    /// Jobs running in this process.
    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A job this runner is running.
#[derive(Clone)]
struct LiveJob {
    /// Someone asked to cancel it: its steps stop and are undone.
    cancel: CancellationToken,
    /// Another runner took it over: stop at once, write and undo nothing.
    lost: CancellationToken,
}

/// A job with its steps and log, as `GET /jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    /// What the job does, as data (`None` for jobs from older versions).
    pub operation: Option<Operation>,
    pub steps: Vec<JobStep>,
    pub log: Vec<JobLogLine>,
}

/// A step the request itself already ran (e.g. reading a VM's state to
/// refuse an invalid transition before any job exists), with its output.
pub(crate) struct Checked {
    pub index: u16,
    pub output: serde_json::Value,
}

/// How long a job of `op` may run.
fn timeout_of(op: &Operation) -> Duration {
    match op {
        Operation::VmAction { .. } | Operation::VmDelete { .. } => Duration::from_secs(180),
        // Image downloads dominate; a stalled one fails sooner (the fetch
        // gives up after a minute without progress). An installer's wait
        // for Setup ends on its own before the job's time is up.
        Operation::VmDeploy { spec, .. } => {
            Duration::from_secs(1800) + spec.setup.map_or(Duration::ZERO, |s| s.limit())
        }
        Operation::HostCreate { .. }
        | Operation::HostUpdate { .. }
        | Operation::HostDelete { .. } => Duration::from_secs(60),
        Operation::InventoryResync { .. } => {
            crate::inventory::resync::RESYNC_TIMEOUT + Duration::from_secs(5)
        }
        Operation::TestSleep { seconds, .. } => Duration::from_secs(u64::from(*seconds) + 30),
        Operation::TestSteps { .. } => DEFAULT_TIMEOUT,
    }
}

impl App {
    /// Stores a job running `op` under `grant` and rings the runner; returns
    /// the job as stored (`queued`). The caller authorized: `grant` is the
    /// proof, made by [`crate::authz`]. `secret` travels sealed to the job's
    /// row; `checked` are steps the request already ran.
    pub(crate) async fn job_submit(
        &self,
        grant: Grant,
        op: Operation,
        secret: Option<Vec<u8>>,
        checked: &[Checked],
    ) -> Result<Job, AppError> {
        let kind = op.kind();
        check_job_kind(&kind)?;
        let job = Job::queued(kind, grant.subject, grant.owner, Some(scrub(&op.target())));
        let plan = operations::plan(&op);
        let steps: Vec<NewStep> = plan
            .iter()
            .enumerate()
            .map(|(i, step)| NewStep {
                name: step.name,
                has_undo: step.has_undo,
                done: checked
                    .iter()
                    .find(|c| usize::from(c.index) == i)
                    .map(|c| &c.output),
            })
            .collect();
        let slot = op.host().map(|h| format!("host:{h}"));
        let timeout_secs = u32::try_from(timeout_of(&op).as_secs()).unwrap_or(u32::MAX);
        self.store()
            .job_insert(
                self.sealer(),
                &NewJob {
                    job: &job,
                    operation: &op,
                    grant: &grant,
                    secret: secret.as_deref(),
                    slot: slot.as_deref(),
                    timeout_secs,
                    steps: &steps,
                },
            )
            .await?;
        metrics::counter!("overvisor_jobs_total", "kind" => job.kind.clone()).increment(1);
        self.events().publish(
            job.owner,
            Event::JobCreated {
                job: Box::new(job.clone()),
            },
        );
        self.jobs().wake.notify_one();
        Ok(job)
    }

    /// One job, if `subject` may see it (another tenant's job is not found).
    pub async fn job_get(&self, subject: &Subject, id: JobId) -> Result<JobDetail, AppError> {
        let job = self.job_visible(subject, id).await?;
        self.job_detail(job).await
    }

    async fn job_detail(&self, job: Job) -> Result<JobDetail, AppError> {
        let store = self.store();
        Ok(JobDetail {
            operation: store.job_operation(job.id).await?,
            steps: store.job_steps(job.id).await?,
            log: store.job_log(job.id, MAX_LOG_LINES).await?,
            job,
        })
    }

    async fn job_visible(&self, subject: &Subject, id: JobId) -> Result<Job, AppError> {
        let job = self.store().job_get(id).await?;
        authorize(subject, Action::Read, Resource::OwnedBy(job.owner))
            .map_err(|_| AppError::NotFound("job"))?;
        Ok(job)
    }

    /// Jobs matching `query`: the subject's own, or with `all` (admins)
    /// everyone's. `query.owner` is set here.
    pub async fn jobs_list(
        &self,
        subject: &Subject,
        mut query: JobQuery,
        all: bool,
    ) -> Result<Vec<Job>, AppError> {
        query.owner = if all {
            authorize(subject, Action::Read, Resource::Everyone)?;
            None
        } else {
            authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
            Some(subject.id())
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
        let job = self.job_wait_unchecked(id, Some(wait)).await?;
        self.job_detail(job).await
    }

    /// Waits up to `wait` for a job the caller just started and answers
    /// like a synchronous call would have: the job once it succeeded (or is
    /// still running), its error when it did not succeed. For pages and
    /// calls that show an outcome rather than a job.
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
    /// Jobs run here announce their end on the event bus; a job run by
    /// another process is seen by re-reading it every second.
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
        let mut reread = tokio::time::interval(Duration::from_secs(1));
        reread.reset();
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(self.store().job_get(id).await?),
                _ = reread.tick() => {
                    let job = self.store().job_get(id).await?;
                    if job.status.is_terminal() {
                        return Ok(job);
                    }
                }
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
    /// stopped (or after a short grace, still stopping). A job running in
    /// another process learns of it when its runner next renews its lease.
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
            None => {
                let cancelled_while_queued = self
                    .store()
                    .job_cancel_queued(id, Utc::now(), "cancelled before it started")
                    .await?;
                if cancelled_while_queued {
                    self.job_steps_skip(id).await;
                    self.job_publish_current(id, job.owner).await;
                } else {
                    self.store().job_request_cancel(id).await?;
                }
            }
        }
        self.audit(
            subject,
            "job.cancel",
            job_target(&job),
            Outcome::Success,
            Some(format!("job={} kind={}", job.id, job.kind)),
        )
        .await;
        let job = self
            .job_wait_unchecked(id, Some(Duration::from_secs(5)))
            .await?;
        self.job_detail(job).await
    }

    /// Marks the pending steps of a job that will not run as skipped.
    async fn job_steps_skip(&self, id: JobId) {
        let Ok(steps) = self.store().job_steps(id).await else {
            return;
        };
        for step in steps.iter().filter(|s| s.status == StepStatus::Pending) {
            let _ = self
                .store()
                .job_step_set(id, step.index, StepStatus::Skipped, Utc::now(), None, None)
                .await;
        }
    }

    /// Appends a timestamped line to a job's log and tells watchers.
    pub(crate) async fn job_log_line(
        &self,
        id: JobId,
        owner: UserId,
        level: LogLevel,
        message: &str,
    ) {
        let mut message = scrub(message);
        truncate_utf8(&mut message, MAX_LOG_LINE);
        let line = JobLogLine {
            at: Utc::now(),
            level,
            message,
        };
        if let Err(err) = self.store().job_log_append(id, &line).await {
            tracing::warn!(job = %id, error = %err, "cannot record job log line");
            return;
        }
        self.events()
            .publish(owner, Event::JobLog { job_id: id, line });
    }

    /// Records progress within a step and tells watchers.
    pub(crate) async fn job_step_progress(
        &self,
        id: JobId,
        owner: UserId,
        index: u16,
        percent: u8,
    ) {
        if let Err(err) = self.store().job_step_progress(id, index, percent).await {
            tracing::warn!(job = %id, error = %err, "cannot record step progress");
            return;
        }
        self.job_publish_step(id, owner, index).await;
    }

    async fn job_publish_step(&self, id: JobId, owner: UserId, index: u16) {
        match self.store().job_steps(id).await {
            Ok(steps) => {
                if let Some(step) = steps.into_iter().find(|s| s.index == index) {
                    self.events().publish(
                        owner,
                        Event::JobStep {
                            job_id: id,
                            step: Box::new(step),
                        },
                    );
                }
            }
            Err(err) => tracing::warn!(job = %id, error = %err, "cannot re-read job steps"),
        }
    }

    async fn job_publish_current(&self, id: JobId, owner: UserId) {
        match self.store().job_get(id).await {
            Ok(job) => self
                .events()
                .publish(owner, Event::JobUpdated { job: Box::new(job) }),
            Err(err) => tracing::warn!(job = %id, error = %err, "cannot re-read job"),
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
        let grant = crate::authz::grant(subject, Action::Operate, subject.id())?;
        self.job_submit(grant, Operation::TestSleep { seconds, fail }, None, &[])
            .await
    }

    /// A job of `steps` steps, each with an undo, that fails or whose undo
    /// fails where asked: how tests prove steps, undo, cancel and resume.
    pub async fn job_test_steps(&self, subject: &Subject, op: Operation) -> Result<Job, AppError> {
        let Operation::TestSteps { steps, .. } = &op else {
            return Err(AppError::Invalid(overvisor_model::InvalidInput::new(
                "op",
                "must be test_steps",
            )));
        };
        if !(1..=8).contains(steps) {
            return Err(
                overvisor_model::InvalidInput::new("steps", "must be between 1 and 8").into(),
            );
        }
        let grant = crate::authz::grant(subject, Action::Operate, subject.id())?;
        self.job_submit(grant, op, None, &[]).await
    }

    /// Records the outcome of a job in its requester's name: the one audit
    /// row of the change.
    async fn job_audit(&self, grant: &Grant, job: &Job, outcome: Outcome, detail: String) {
        self.audit_raw(overvisor_store::audit::NewAuditEvent {
            actor_id: Some(grant.subject),
            actor_name: Some(grant.subject_name.clone()),
            via: Some(grant.via.clone()),
            source_ip: grant.source_ip.clone(),
            action: job.kind.clone(),
            target: job_target(job).name,
            target_owner: Some(job.owner),
            outcome,
            detail: Some(detail),
        })
        .await;
    }
}

/// The role an action needs, as a grant records it.
pub(crate) fn role_for(action: Action) -> Role {
    match action {
        Action::Read => Role::Reader,
        _ => Role::Operator,
    }
}

fn job_target(job: &Job) -> Target {
    Target::named(
        job.target
            .clone()
            .unwrap_or_else(|| format!("job:{}", job.id)),
        job.owner,
    )
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
