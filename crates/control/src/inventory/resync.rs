//! Resync on demand: an operator (or a benchmark, or the portal's refresh
//! button) asks the inventory to re-read hosts now instead of waiting for
//! the periodic resync. The request goes to each host's own reconciler,
//! which re-lists over the connection it already keeps (no second SSH
//! connection, no race with its own resyncs); a disconnected host's
//! reconciler cuts its backoff short and answers after the attempt.
//!
//! It runs as an `inventory.resync` job so its duration and per-host
//! failures are on record like any other operation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use overvisor_model::host::{Host, HostId};
use overvisor_model::job::Job;
use overvisor_model::operation::Operation;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::authz::{Action, Resource, Subject, authorize};
use crate::jobs::JobError;
use crate::operations::{StepCx, StepResult};
use crate::{App, AppError};

/// How a reconciler answers one request: the host's VM count, or why not.
pub(crate) type ResyncReply = oneshot::Sender<Result<usize, String>>;

/// Requests a reconciler may have queued; more are refused, not dropped.
const QUEUE: usize = 32;
/// A whole resync job gives up on hosts that have not answered by then.
pub(crate) const RESYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request waits for the reconcilers to pick up a host change.
const PICKUP_WAIT: Duration = Duration::from_secs(10);

/// Each running reconciler's request queue, with the version (the host
/// row's `updated_at`) of the host it was started for.
#[derive(Default)]
pub(crate) struct Resyncers(Mutex<HashMap<HostId, Queue>>);

struct Queue {
    version: DateTime<Utc>,
    sender: mpsc::Sender<ResyncReply>,
}

/// The answer to one request.
type Answer = oneshot::Receiver<Result<usize, String>>;

impl Resyncers {
    /// A fresh queue for `host`'s (new) reconciler, replacing the old one.
    pub(crate) fn open(&self, host: &Host) -> mpsc::Receiver<ResyncReply> {
        let (sender, rx) = mpsc::channel(QUEUE);
        let queue = Queue {
            version: host.updated_at,
            sender,
        };
        self.lock().insert(host.id, queue);
        rx
    }

    pub(crate) fn close(&self, host: HostId) {
        self.lock().remove(&host);
    }

    /// Asks the reconciler of `host` as of `version` (or newer) to resync;
    /// `None` while no such reconciler runs yet.
    fn request(&self, host: HostId, version: DateTime<Utc>) -> Option<Result<Answer, String>> {
        let sender = match self.lock().get(&host) {
            Some(queue) if queue.version >= version => queue.sender.clone(),
            _ => return None,
        };
        let (reply, answer) = oneshot::channel();
        Some(
            sender
                .try_send(reply)
                .map(|()| answer)
                .map_err(|_| "too many resync requests are queued for this host".to_owned()),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Queue>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers every queued request with the same outcome (one resync serves
/// all requests that arrived while it was pending).
pub(crate) fn answer_all(replies: Vec<ResyncReply>, outcome: &Result<usize, String>) {
    for reply in replies {
        // The requester may have given up (job timeout, cancel): fine.
        let _ = reply.send(outcome.clone());
    }
}

/// One host that could not be resynced.
#[derive(Debug, Clone, Serialize)]
pub struct ResyncFailure {
    pub host_id: HostId,
    pub host_name: String,
    pub error: String,
}

/// The result of an `inventory.resync` job.
#[derive(Debug, Clone, Serialize)]
pub struct ResyncReport {
    /// Hosts asked.
    pub hosts: usize,
    /// VMs listed by the hosts that answered.
    pub vms: usize,
    pub failed: Vec<ResyncFailure>,
    /// From the first request to the last answer.
    pub duration_ms: f64,
}

impl App {
    /// Starts an `inventory.resync` job over `host`, or over every host the
    /// subject may operate when `None`. Operators and admins only; another
    /// tenant's host is not found. With one host, the job fails when that
    /// host cannot be resynced; over many, it succeeds and lists failures.
    pub async fn inventory_resync_job(
        &self,
        subject: &Subject,
        host: Option<HostId>,
    ) -> Result<Job, AppError> {
        let (grant, hosts) = match host {
            Some(id) => {
                let host = self
                    .host_authorized(subject, id, Action::Operate, "inventory.resync")
                    .await?;
                (host.grant(subject, Action::Operate), vec![id])
            }
            None => {
                let grant = crate::authz::grant(subject, Action::Operate, subject.id())?;
                let mut targets = self.store().hosts_list(None).await?;
                targets.retain(|h| {
                    authorize(subject, Action::Operate, Resource::OwnedBy(h.owner)).is_ok()
                });
                (grant, targets.into_iter().map(|h| h.id).collect())
            }
        };
        let op = Operation::InventoryResync {
            hosts,
            single: host.is_some(),
        };
        self.job_submit(grant, op, None, &[]).await
    }

    /// The step of an `inventory.resync` job.
    pub(crate) async fn inventory_resync_step(
        &self,
        cx: &StepCx<'_>,
        hosts: &[HostId],
        single: bool,
    ) -> StepResult {
        let mut targets = self.store().hosts_list(None).await?;
        targets.retain(|h| hosts.contains(&h.id));
        let report = self.inventory_resync(&targets).await;
        for failure in &report.failed {
            let line = format!("{}: {}", failure.host_name, failure.error);
            if single {
                return Err(JobError::new(line));
            }
            cx.warn(line).await;
        }
        if single && targets.is_empty() {
            return Err(JobError::new("the host was removed"));
        }
        cx.info(format!(
            "{} hosts, {} VMs in {:.0} ms",
            report.hosts, report.vms, report.duration_ms
        ))
        .await;
        Ok(Some(serde_json::to_value(&report)?))
    }

    /// Asks every host in `targets` to resync at once and waits for all
    /// answers (or [`RESYNC_TIMEOUT`]).
    async fn inventory_resync(&self, targets: &[Host]) -> ResyncReport {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + RESYNC_TIMEOUT;
        let pending: FuturesUnordered<_> = targets
            .iter()
            .map(|host| async move {
                let outcome = match self.resync_request(host).await {
                    Ok(answer) => match tokio::time::timeout_at(deadline, answer).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(_)) => Err("the host's reconciler stopped".to_owned()),
                        Err(_) => Err(format!("no answer within {RESYNC_TIMEOUT:?}")),
                    },
                    Err(error) => Err(error),
                };
                (host, outcome)
            })
            .collect();
        let outcomes: Vec<_> = pending.collect().await;
        let mut vms = 0;
        let mut failed = Vec::new();
        for (host, outcome) in outcomes {
            match outcome {
                Ok(count) => vms += count,
                Err(error) => failed.push(ResyncFailure {
                    host_id: host.id,
                    host_name: host.name.clone(),
                    error,
                }),
            }
        }
        failed.sort_by(|a, b| a.host_name.cmp(&b.host_name));
        ResyncReport {
            hosts: targets.len(),
            vms,
            failed,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }

    /// Queues a request with the reconciler of `host` as it is now: a host
    /// registered or edited a moment ago may not have one yet, so the
    /// reconcilers are woken and given a little time to pick it up.
    async fn resync_request(&self, host: &Host) -> Result<Answer, String> {
        if !self.replicas().owns(host.id) {
            return Err(
                "another replica owns this host: resync it there (its inventory is mirrored here)"
                    .to_owned(),
            );
        }
        let resyncers = &self.inventory().resyncers;
        if let Some(queued) = resyncers.request(host.id, host.updated_at) {
            return queued;
        }
        self.inventory_wake();
        let give_up = tokio::time::Instant::now() + PICKUP_WAIT;
        while tokio::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(queued) = resyncers.request(host.id, host.updated_at) {
                return queued;
            }
        }
        Err("the inventory has not picked this host up yet".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use overvisor_model::account::UserId;

    use super::*;

    fn host() -> Host {
        crate::inventory::tests::host(UserId::new(), "kvm1", &[])
    }

    #[tokio::test]
    async fn requests_reach_only_the_reconciler_of_the_current_host_row() {
        let resyncers = Resyncers::default();
        let mut old = host();
        assert!(resyncers.request(old.id, old.updated_at).is_none());
        let mut queue = resyncers.open(&old);
        let answer = resyncers.request(old.id, old.updated_at).unwrap().unwrap();
        let reply = queue.recv().await.unwrap();
        answer_all(vec![reply], &Ok(7));
        assert_eq!(answer.await.unwrap(), Ok(7));

        // An edited row: the old reconciler must not answer for it.
        let edited_at = old.updated_at + chrono::Duration::seconds(1);
        assert!(resyncers.request(old.id, edited_at).is_none());
        old.updated_at = edited_at;
        let _fresh = resyncers.open(&old);
        assert!(resyncers.request(old.id, edited_at).is_some());
        resyncers.close(old.id);
        assert!(resyncers.request(old.id, edited_at).is_none());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_dropping() {
        let resyncers = Resyncers::default();
        let h = host();
        let _queue = resyncers.open(&h);
        let answers: Vec<_> = (0..QUEUE)
            .map(|_| resyncers.request(h.id, h.updated_at).unwrap().unwrap())
            .collect();
        let refused = resyncers.request(h.id, h.updated_at).unwrap();
        assert!(refused.unwrap_err().contains("too many"));
        drop(answers);
    }
}
