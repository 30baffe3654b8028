//! The runner: claims jobs from the store under a lease, runs their steps,
//! undoes them on failure or cancel, and keeps its leases alive. Several
//! runners (processes) on one database share the queue: claiming is a
//! guarded update, so each job runs in exactly one of them at a time.

use std::time::Duration;

use chrono::Utc;
use overvisor_model::account::Outcome;
use overvisor_model::job::{Job, JobId, JobStatus};
use overvisor_model::operation::{Grant, JobStep, Operation, StepStatus};
use overvisor_store::jobs::Claimed;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{INTERRUPTED_REASON, scrub};
use crate::App;
use crate::operations::{self, StepCx};

/// Most jobs looked at in one claim round.
const CLAIM_BATCH: u32 = 64;
/// How long an undo may take.
const UNDO_TIMEOUT: Duration = Duration::from_secs(120);

/// How a job ended.
struct Ending {
    status: JobStatus,
    error: Option<String>,
    result: Option<serde_json::Value>,
}

impl App {
    /// Starts this process's runner: claim rounds (at once for jobs
    /// submitted here, every `poll` for jobs queued elsewhere or whose
    /// runner died) and lease renewal, until `shutdown`.
    pub fn jobs_start(&self, shutdown: CancellationToken) {
        let app = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let poll = app.jobs().settings.poll;
            loop {
                app.jobs_claim_round().await;
                tokio::select! {
                    _ = app.jobs().wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
        let app = self.clone();
        tokio::spawn(async move {
            let every = app.jobs().settings.lease / 3;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => app.jobs_renew_leases().await,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Claims every job it can run now (a free host slot for each).
    pub(crate) async fn jobs_claim_round(&self) {
        let now = Utc::now();
        let candidates = match self.store().jobs_claimable(now, CLAIM_BATCH).await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for jobs to run");
                return;
            }
        };
        let runner = self.jobs();
        for candidate in candidates {
            // A job of ours whose lease lapsed because a renewal came late
            // (a busy machine) is still running here: claiming it again
            // would run its steps twice, side by side. The next renewal
            // extends the lease.
            if runner.is_live(candidate.id) {
                continue;
            }
            // A host's jobs run in the replica that owns its connection.
            if !self.replicas().may_run(candidate.slot.as_deref()) {
                continue;
            }
            let permit = match &candidate.slot {
                Some(key) => match runner.slot(key).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    // The host is busy here: leave the job for later (or
                    // for another runner).
                    Err(_) => continue,
                },
                None => None,
            };
            let lease_until = now + runner.settings.lease;
            match self
                .store()
                .job_claim(candidate.id, runner.id(), now, lease_until)
                .await
            {
                Ok(Some(claimed)) => {
                    tracing::debug!(job = %claimed.job.id, kind = %claimed.job.kind, "claimed a job");
                    let live = runner.register(claimed.job.id);
                    let app = self.clone();
                    tokio::spawn(async move { app.job_run_guarded(claimed, live, permit).await });
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(job = %candidate.id, error = %err, "cannot claim job"),
            }
        }
    }

    /// Keeps this runner's leases alive; passes on cancel requests made in
    /// other processes; stops jobs whose lease another runner took.
    pub(super) async fn jobs_renew_leases(&self) {
        let live = self.jobs().live_jobs();
        if live.is_empty() {
            return;
        }
        let until = Utc::now() + self.jobs().settings.lease;
        let leases = match self.store().job_leases_renew(self.jobs().id(), until).await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew job leases");
                return;
            }
        };
        self.jobs_leases_renewed(live, &leases);
    }

    /// Passes on cancel requests to the `live` jobs (as listed before the
    /// renewal) and stops those the renewal did not return.
    pub(super) fn jobs_leases_renewed(
        &self,
        live: Vec<(JobId, super::LiveJob)>,
        leases: &[overvisor_store::jobs::Lease],
    ) {
        for (id, job) in live {
            match leases.iter().find(|l| l.id == id) {
                Some(lease) if lease.cancel_requested => job.cancel.cancel(),
                Some(_) => {}
                // A job that ended since the list was taken is forgotten
                // before its end is written, so it is not renewed: it is
                // not lost (stopping it would cut its audit row short).
                None if !self.jobs().is_live(id) => {}
                None => {
                    tracing::warn!(job = %id, "lost the lease of a job; stopping it here");
                    job.lost.cancel();
                }
            }
        }
    }

    /// Runs a claimed job as its own task so that a panic fails the job
    /// rather than leaving it for another runner to trip over again.
    async fn job_run_guarded(
        self,
        claimed: Claimed,
        live: super::LiveJob,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let job = claimed.job.clone();
        let grant = claimed.grant.clone();
        let app = self.clone();
        let cancel = live.cancel.clone();
        let mut task = tokio::spawn(async move { app.job_run(claimed, cancel).await });
        let joined = tokio::select! {
            joined = &mut task => Some(joined),
            // Another runner holds the job now: whatever this one would
            // still write or undo would fight it.
            _ = live.lost.cancelled() => {
                task.abort();
                None
            }
        };
        if let Some(Err(err)) = joined
            && err.is_panic()
        {
            tracing::error!(job = %job.id, "job panicked");
            let ending = Ending {
                status: JobStatus::Failed,
                error: Some("internal error".into()),
                result: None,
            };
            self.job_end(&job, grant.as_ref(), ending, None).await;
        }
        drop(permit);
        self.jobs().forget(job.id);
        // A slot is free: queued jobs may run now.
        self.jobs().wake.notify_one();
    }

    async fn job_run(&self, claimed: Claimed, cancel: CancellationToken) {
        let job = claimed.job;
        let owner = job.owner;
        self.job_publish_current(job.id, owner).await;
        let (Some(op), Some(grant)) = (claimed.operation, claimed.grant) else {
            let ending = Ending {
                status: JobStatus::Interrupted,
                error: Some(format!(
                    "{INTERRUPTED_REASON} (recorded by an older version of the service)"
                )),
                result: None,
            };
            return self.job_end(&job, None, ending, None).await;
        };
        let mut steps = match self.store().job_steps(job.id).await {
            Ok(steps) => steps,
            Err(err) => {
                let ending = Ending {
                    status: JobStatus::Failed,
                    error: Some(format!("cannot read the job's steps: {err}")),
                    result: None,
                };
                return self.job_end(&job, Some(&grant), ending, Some(&op)).await;
            }
        };
        let taken_over = claimed.attempt > 1;
        if taken_over {
            let stopped_in = steps
                .iter()
                .find(|s| matches!(s.status, StepStatus::Running | StepStatus::Undoing))
                .map(|s| (s.index, s.name.clone()));
            if !operations::resumable(&op) {
                let where_ = match &stopped_in {
                    Some((index, name)) => {
                        self.job_step_write(
                            job.id,
                            owner,
                            *index,
                            StepStatus::Failed,
                            Some("interrupted: the service stopped during this step"),
                            None,
                        )
                        .await;
                        format!(" (in step {} \"{name}\")", index + 1)
                    }
                    // Killed between two steps: say where, as the record
                    // shows it.
                    None => between_steps(&steps),
                };
                let ending = Ending {
                    status: JobStatus::Interrupted,
                    error: Some(format!("{INTERRUPTED_REASON}{where_}")),
                    result: None,
                };
                self.job_steps_skip(job.id).await;
                return self.job_end(&job, Some(&grant), ending, Some(&op)).await;
            }
            let at = stopped_in
                .map(|(i, name)| format!("step {} \"{name}\"", i + 1))
                .unwrap_or_else(|| "its next step".into());
            self.job_log_line(
                job.id,
                owner,
                overvisor_model::job::LogLevel::Warn,
                &format!(
                    "resumed at {at}: the runner that ran it stopped (attempt {})",
                    claimed.attempt
                ),
            )
            .await;
        }
        let secret = match self.store().job_secret(self.sealer(), job.id).await {
            Ok(secret) => secret.map(zeroize::Zeroizing::new),
            Err(err) => {
                let ending = Ending {
                    status: JobStatus::Failed,
                    error: Some(format!("cannot open the job's sealed input: {err}")),
                    result: None,
                };
                return self.job_end(&job, Some(&grant), ending, Some(&op)).await;
            }
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::from(claimed.timeout_secs));
        let run = Run {
            app: self,
            job: &job,
            op: &op,
            grant: &grant,
            cancel: &cancel,
            taken_over,
        };
        let ending = run
            .steps(
                &mut steps,
                secret.as_ref().map(|s| s.as_slice()),
                deadline,
                claimed.timeout_secs,
            )
            .await;
        self.job_end(&job, Some(&grant), ending, Some(&op)).await;
    }

    /// Writes a job's ending (if this runner still holds it), tells
    /// watchers and audits the change once.
    async fn job_end(
        &self,
        job: &Job,
        grant: Option<&Grant>,
        ending: Ending,
        op: Option<&Operation>,
    ) {
        let error = ending.error.as_deref().map(scrub);
        // Nothing is left to cancel; watchers woken by the end find it gone.
        self.jobs().forget(job.id);
        let written = self
            .store()
            .job_transition_held(
                job.id,
                self.jobs().id(),
                ending.status,
                Utc::now(),
                error.as_deref(),
                ending.result.as_ref(),
            )
            .await;
        match written {
            Ok(true) => self.job_publish_current(job.id, job.owner).await,
            // Another runner holds it now, or it was cancelled while queued.
            Ok(false) => return,
            Err(err) => {
                tracing::error!(job = %job.id, error = %err, "cannot record job status");
                return;
            }
        }
        metrics::counter!("overvisor_jobs_finished_total", "status" => ending.status.as_str())
            .increment(1);
        let Some(grant) = grant else {
            return;
        };
        let outcome = if ending.status == JobStatus::Succeeded {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut detail = format!("job={} status={}", job.id, ending.status);
        let outputs: Vec<Option<serde_json::Value>> = match self.store().job_steps(job.id).await {
            Ok(steps) => steps.into_iter().map(|s| s.output).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(extra) = op.and_then(|op| operations::audit_detail(op, &outputs)) {
            detail.push(' ');
            detail.push_str(&extra);
        }
        if let Some(e) = &error {
            detail.push_str(&format!(" error={e}"));
        }
        self.job_audit(grant, job, outcome, detail).await;
    }

    /// Writes a step's status and tells watchers.
    pub(super) async fn job_step_write(
        &self,
        id: JobId,
        owner: overvisor_model::account::UserId,
        index: u16,
        status: StepStatus,
        error: Option<&str>,
        output: Option<&serde_json::Value>,
    ) {
        let error = error.map(scrub);
        if let Err(err) = self
            .store()
            .job_step_set(id, index, status, Utc::now(), error.as_deref(), output)
            .await
        {
            tracing::warn!(job = %id, error = %err, "cannot record job step");
            return;
        }
        self.job_publish_step(id, owner, index).await;
    }
}

/// Where a job stopped when no step of it was running: after its last
/// finished step, before the first that had not begun.
fn between_steps(steps: &[JobStep]) -> String {
    let next = steps.iter().find(|s| s.status != StepStatus::Done);
    let last_done = steps.iter().rev().find(|s| s.status == StepStatus::Done);
    match (last_done, next) {
        (_, None) => " (after its last step)".into(),
        (None, Some(next)) => format!(" (before step {} \"{}\" began)", next.index + 1, next.name),
        (Some(done), Some(next)) => format!(
            " (after step {} \"{}\", before step {} \"{}\" began)",
            done.index + 1,
            done.name,
            next.index + 1,
            next.name
        ),
    }
}

/// One run of a job's steps.
struct Run<'a> {
    app: &'a App,
    job: &'a Job,
    op: &'a Operation,
    grant: &'a Grant,
    cancel: &'a CancellationToken,
    taken_over: bool,
}

impl Run<'_> {
    fn cx<'b>(
        &'b self,
        index: u16,
        outputs: &'b [Option<serde_json::Value>],
        resumed: bool,
    ) -> StepCx<'b> {
        StepCx {
            app: self.app,
            job: self.job.id,
            owner: self.job.owner,
            index,
            grant: self.grant,
            outputs,
            resumed,
            cancel: self.cancel,
        }
    }

    async fn write(
        &self,
        index: u16,
        status: StepStatus,
        error: Option<&str>,
        output: Option<&serde_json::Value>,
    ) {
        self.app
            .job_step_write(self.job.id, self.job.owner, index, status, error, output)
            .await;
    }

    /// Runs the steps not done yet; on failure, cancel or timeout undoes
    /// the ones that began, last first.
    async fn steps(
        &self,
        steps: &mut [JobStep],
        secret: Option<&[u8]>,
        deadline: tokio::time::Instant,
        timeout_secs: u32,
    ) -> Ending {
        let mut outputs: Vec<Option<serde_json::Value>> =
            steps.iter().map(|s| s.output.clone()).collect();
        let total = steps.len().max(1);
        let mut stop: Option<(JobStatus, String)> = None;
        for i in 0..steps.len() {
            if steps[i].status == StepStatus::Done {
                continue;
            }
            if self.cancel.is_cancelled() {
                stop = Some((JobStatus::Cancelled, "cancelled on request".into()));
                break;
            }
            let index = steps[i].index;
            let name = steps[i].name.clone();
            let resumed = self.taken_over && steps[i].status == StepStatus::Running;
            self.write(index, StepStatus::Running, None, None).await;
            steps[i].status = StepStatus::Running;
            let cx = self.cx(index, &outputs, resumed);
            let outcome = tokio::select! {
                r = operations::run_step(self.op, index, &cx, secret) => Some(r),
                _ = self.cancel.cancelled() => None,
                _ = tokio::time::sleep_until(deadline) => {
                    self.write(index, StepStatus::Cancelled, Some("stopped: the job timed out"), None).await;
                    steps[i].status = StepStatus::Cancelled;
                    stop = Some((JobStatus::Failed, format!("timed out after {timeout_secs} s in step {} \"{name}\"", index + 1)));
                    break;
                }
            };
            match outcome {
                Some(Ok(output)) => {
                    self.write(index, StepStatus::Done, None, output.as_ref())
                        .await;
                    steps[i].status = StepStatus::Done;
                    outputs[i] = output;
                    let percent = u8::try_from((i + 1) * 100 / total).unwrap_or(100);
                    let _ = self.app.store().job_progress(self.job.id, percent).await;
                    self.app
                        .job_publish_current(self.job.id, self.job.owner)
                        .await;
                }
                Some(Err(err)) => {
                    self.write(index, StepStatus::Failed, Some(&err.0), None)
                        .await;
                    steps[i].status = StepStatus::Failed;
                    stop = Some((
                        JobStatus::Failed,
                        format!("step {} \"{name}\" failed: {err}", index + 1),
                    ));
                    break;
                }
                None => {
                    self.write(
                        index,
                        StepStatus::Cancelled,
                        Some("cancelled on request"),
                        None,
                    )
                    .await;
                    steps[i].status = StepStatus::Cancelled;
                    stop = Some((JobStatus::Cancelled, "cancelled on request".into()));
                    break;
                }
            }
        }
        let Some((status, message)) = stop else {
            let result = operations::result(self.op, &outputs);
            return Ending {
                status: JobStatus::Succeeded,
                error: None,
                result: Some(result),
            };
        };
        let message = self.undo(steps, &outputs, message).await;
        Ending {
            status,
            error: Some(message),
            result: None,
        }
    }

    /// Undoes every step that began and has an undo, last first; marks the
    /// steps that never began as skipped. Returns `message` with what was
    /// undone and what could not be.
    async fn undo(
        &self,
        steps: &mut [JobStep],
        outputs: &[Option<serde_json::Value>],
        message: String,
    ) -> String {
        let mut undone = Vec::new();
        let mut kept = Vec::new();
        for i in (0..steps.len()).rev() {
            let step = &steps[i];
            if step.status == StepStatus::Pending {
                self.write(step.index, StepStatus::Skipped, None, None)
                    .await;
                continue;
            }
            // A step that failed had its chance to clean up after itself;
            // one that finished, or was cut off by a cancel or the timeout,
            // is undone.
            if !matches!(step.status, StepStatus::Done | StepStatus::Cancelled) || !step.has_undo {
                continue;
            }
            let (index, name) = (step.index, step.name.clone());
            self.write(index, StepStatus::Undoing, None, None).await;
            let cx = self.cx(index, outputs, false);
            let outcome =
                tokio::time::timeout(UNDO_TIMEOUT, operations::undo_step(self.op, index, &cx))
                    .await;
            match outcome {
                Ok(Ok(())) => {
                    self.write(index, StepStatus::Undone, None, None).await;
                    steps[i].status = StepStatus::Undone;
                    undone.push(format!("step {} \"{name}\"", index + 1));
                }
                Ok(Err(err)) => {
                    let why = format!("undo failed: {err}");
                    self.write(index, StepStatus::UndoFailed, Some(&why), None)
                        .await;
                    steps[i].status = StepStatus::UndoFailed;
                    kept.push(format!("step {} \"{name}\" ({err})", index + 1));
                }
                Err(_) => {
                    let why = format!("undo timed out after {} s", UNDO_TIMEOUT.as_secs());
                    self.write(index, StepStatus::UndoFailed, Some(&why), None)
                        .await;
                    steps[i].status = StepStatus::UndoFailed;
                    kept.push(format!("step {} \"{name}\" (undo timed out)", index + 1));
                }
            }
        }
        let mut message = message;
        if !undone.is_empty() {
            message.push_str(&format!("; undone: {}", undone.join(", ")));
        }
        if !kept.is_empty() {
            message.push_str(&format!("; could not undo: {}", kept.join(", ")));
        }
        message
    }
}
