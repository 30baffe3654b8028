//! The event bus: every job update, inventory change and host
//! connect/disconnect is published once, as JSON, and delivered to every
//! subscriber allowed to see it (`GET /api/v1/events`, job long-polls).
//!
//! Publishing never waits: it is a `tokio::sync::broadcast` channel, so a
//! subscriber that falls behind loses the oldest events and is told to
//! resync, instead of slowing down the jobs and reconcilers that publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use overvisor_model::account::UserId;
use overvisor_model::host::HostId;
use overvisor_model::job::{Job, JobId, JobLogLine};
use overvisor_model::vm::VmState;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

/// How many events a subscriber may fall behind before it must resync.
pub const BUS_CAPACITY: usize = 4096;

/// A VM as events describe it: enough to update a list row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmBrief {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// What happened. Serialised with a `type` field (`job.updated`, ...).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "job.created")]
    JobCreated { job: Box<Job> },
    /// Status or progress changed.
    #[serde(rename = "job.updated")]
    JobUpdated { job: Box<Job> },
    #[serde(rename = "job.log")]
    JobLog { job_id: JobId, line: JobLogLine },
    #[serde(rename = "vm.added")]
    VmAdded { host_id: HostId, vm: VmBrief },
    #[serde(rename = "vm.changed")]
    VmChanged { host_id: HostId, vm: VmBrief },
    #[serde(rename = "vm.removed")]
    VmRemoved { host_id: HostId, vm: VmBrief },
    #[serde(rename = "host.connected")]
    HostConnected { host_id: HostId },
    #[serde(rename = "host.disconnected")]
    HostDisconnected {
        host_id: HostId,
        error: String,
        since: DateTime<Utc>,
    },
}

impl Event {
    /// The `type` tag, for filtering without serialising.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::JobCreated { .. } => "job.created",
            Self::JobUpdated { .. } => "job.updated",
            Self::JobLog { .. } => "job.log",
            Self::VmAdded { .. } => "vm.added",
            Self::VmChanged { .. } => "vm.changed",
            Self::VmRemoved { .. } => "vm.removed",
            Self::HostConnected { .. } => "host.connected",
            Self::HostDisconnected { .. } => "host.disconnected",
        }
    }

    /// The job this event is about, if any.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Self::JobCreated { job } | Self::JobUpdated { job } => Some(job.id),
            Self::JobLog { job_id, .. } => Some(*job_id),
            _ => None,
        }
    }
}

/// One published event: numbered, stamped, owned, and serialised once for
/// every subscriber.
#[derive(Debug)]
pub struct Envelope {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// Whose infrastructure it concerns; decides who may receive it.
    pub owner: UserId,
    pub event: Event,
    /// `{"seq", "at", "type", ...}` as sent to clients.
    pub json: String,
}

#[derive(Serialize)]
struct Wire<'a> {
    seq: u64,
    at: DateTime<Utc>,
    #[serde(flatten)]
    event: &'a Event,
}

/// The bus itself; cheap to share.
pub struct EventBus {
    tx: broadcast::Sender<Arc<Envelope>>,
    seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(BUS_CAPACITY)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            seq: AtomicU64::new(1),
        }
    }

    /// Publishes `event` for `owner` (and administrators). Never blocks.
    pub fn publish(&self, owner: UserId, event: Event) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let at = Utc::now();
        let json = match serde_json::to_string(&Wire {
            seq,
            at,
            event: &event,
        }) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(error = %err, kind = event.type_name(), "cannot serialise event");
                return;
            }
        };
        metrics::counter!("overvisor_events_total", "type" => event.type_name()).increment(1);
        // No receivers is normal (nobody watching); nothing to do then.
        let _ = self.tx.send(Arc::new(Envelope {
            seq,
            at,
            owner,
            event,
            json,
        }));
    }

    pub(crate) fn receiver(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.tx.subscribe()
    }
}

/// Which event types a subscriber wants: `job` matches every `job.*`,
/// `vm.changed` only itself. Empty means everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    types: Vec<String>,
}

const TYPE_FAMILIES: [&str; 3] = ["job", "vm", "host"];
const TYPES: [&str; 8] = [
    "job.created",
    "job.updated",
    "job.log",
    "vm.added",
    "vm.changed",
    "vm.removed",
    "host.connected",
    "host.disconnected",
];

impl EventFilter {
    /// Parses a comma-separated list such as `job,vm.changed`.
    pub fn parse(list: &str) -> Result<Self, overvisor_model::InvalidInput> {
        let mut types = Vec::new();
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !TYPE_FAMILIES.contains(&t) && !TYPES.contains(&t) {
                return Err(overvisor_model::InvalidInput::new(
                    "types",
                    format!(
                        "unknown event type {t:?} (known: {}, {})",
                        TYPE_FAMILIES.join(", "),
                        TYPES.join(", ")
                    ),
                ));
            }
            types.push(t.to_owned());
        }
        Ok(Self { types })
    }

    pub fn matches(&self, type_name: &str) -> bool {
        self.types.is_empty()
            || self.types.iter().any(|t| {
                t == type_name
                    || type_name
                        .strip_prefix(t.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

/// What a subscriber receives next.
#[derive(Debug)]
pub enum Delivery {
    Event(Arc<Envelope>),
    /// Events were dropped because the subscriber was too slow: re-read
    /// whatever it shows (lists, jobs) and carry on.
    Resync {
        missed: u64,
    },
}

impl Delivery {
    /// The JSON text to send to a client.
    pub fn to_json(&self) -> String {
        match self {
            Self::Event(env) => env.json.clone(),
            Self::Resync { missed } => {
                serde_json::json!({"type": "resync", "missed": missed}).to_string()
            }
        }
    }
}

/// A subscriber's view of the bus: only what its subject may see and asked for.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Envelope>>,
    subject: Subject,
    filter: EventFilter,
}

impl Subscription {
    /// The next deliverable event; `None` when the bus is gone (shutdown).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.rx.recv().await {
                Ok(env) => {
                    if self.filter.matches(env.event.type_name()) && may_see(&self.subject, &env) {
                        return Some(Delivery::Event(env));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("overvisor_event_subscriber_lagged_total").increment(1);
                    return Some(Delivery::Resync { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn may_see(subject: &Subject, env: &Envelope) -> bool {
    authorize(subject, Action::Read, Resource::OwnedBy(env.owner)).is_ok()
}

impl App {
    /// Subscribes `subject` to the events it may see, filtered by type.
    pub fn events_subscribe(
        &self,
        subject: &Subject,
        filter: EventFilter,
    ) -> Result<Subscription, AppError> {
        // Reading one's own things is the least right a subscriber needs.
        authorize(subject, Action::Read, Resource::OwnedBy(subject.id()))?;
        Ok(Subscription {
            rx: self.events().receiver(),
            subject: subject.clone(),
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let all = EventFilter::default();
        assert!(all.matches("vm.changed"));
        let f = EventFilter::parse("job, vm.changed").expect("parse");
        assert!(f.matches("job.updated") && f.matches("job.log"));
        assert!(f.matches("vm.changed"));
        assert!(!f.matches("vm.added") && !f.matches("host.connected"));
        assert!(EventFilter::parse("jobs").is_err());
        assert!(EventFilter::parse("vm.exploded").is_err());
    }

    #[tokio::test]
    async fn lagging_subscriber_gets_resync_and_bus_never_blocks() {
        let bus = EventBus::new(4);
        let mut rx = bus.receiver();
        let owner = UserId::new();
        for _ in 0..10 {
            bus.publish(
                owner,
                Event::HostConnected {
                    host_id: HostId::new(),
                },
            );
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
        let env = rx.recv().await.expect("next");
        assert_eq!(env.seq, 7);
        let v: serde_json::Value = serde_json::from_str(&env.json).expect("json");
        assert_eq!(v["type"], "host.connected");
        assert_eq!(v["seq"], 7);
        assert!(v["host_id"].is_string());
    }
}
