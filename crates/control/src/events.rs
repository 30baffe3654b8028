//! The event bus: every job update, inventory change and host
//! connect/disconnect is published once, as JSON, and delivered to every
//! subscriber allowed to see it (`GET /api/v1/events`, job long-polls).
//!
//! Publishing never waits: it is a `tokio::sync::broadcast` channel, so a
//! subscriber that falls behind loses the oldest events and is told to
//! resync, instead of slowing down the jobs and reconcilers that publish.
//!
//! A client's subscription lives only as long as the credential it was
//! opened with: whatever revokes a key, ends a session, disables a user or
//! changes a role announces it on a second channel, and the user's open
//! streams re-authenticate (through the same lookups every request makes)
//! and end if that fails or the role changed. A timer repeats the check,
//! for expiry and for changes made by another process on the same
//! database. Neither costs anything per event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use overvisor_model::account::{Credential, UserId};
use overvisor_model::host::HostId;
use overvisor_model::job::{Job, JobId, JobLogLine};
use overvisor_model::operation::JobStep;
use overvisor_model::vm::VmState;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::authz::{Action, Resource, Subject, authorize};
use crate::{App, AppError};

/// How many events a subscriber may fall behind before it must resync.
pub const BUS_CAPACITY: usize = 4096;
/// Credential changes queued per subscriber; one that falls behind simply
/// re-checks, so this only needs to absorb a burst.
const CREDENTIAL_CHANGES_CAPACITY: usize = 256;

/// A VM as events describe it: enough to update a list row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VmBrief {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The guest's addresses as the inventory keeps them (a `vm.changed`
    /// may say only that they changed).
    pub ips: Vec<String>,
}

/// Declares [`Event`] with each type's name written once: the serde tag,
/// [`Event::type_name`] and the list filters accept all come from it.
macro_rules! events {
    ($( $(#[$doc:meta])* $name:literal => $variant:ident { $($field:ident : $ty:ty),* $(,)? } ),* $(,)?) => {
        /// What happened. Serialised with a `type` field (`job.updated`, ...).
        #[derive(Debug, Clone, Serialize, serde::Deserialize)]
        #[serde(tag = "type")]
        pub enum Event {
            $( $(#[$doc])* #[serde(rename = $name)] $variant { $($field: $ty),* }, )*
        }

        impl Event {
            /// The `type` tag, for filtering without serialising.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Self::$variant { .. } => $name, )*
                }
            }
        }

        /// Every event type, as clients name them.
        pub const TYPES: &[&str] = &[$($name),*];
    };
}

events! {
    "job.created" => JobCreated { job: Box<Job> },
    /// Status or progress changed.
    "job.updated" => JobUpdated { job: Box<Job> },
    "job.log" => JobLog { job_id: JobId, line: JobLogLine },
    /// A step of the job began, progressed, finished or was undone.
    "job.step" => JobStep { job_id: JobId, step: Box<JobStep> },
    "vm.added" => VmAdded { host_id: HostId, vm: VmBrief },
    "vm.changed" => VmChanged { host_id: HostId, vm: VmBrief },
    "vm.removed" => VmRemoved { host_id: HostId, vm: VmBrief },
    "host.connected" => HostConnected { host_id: HostId },
    "host.disconnected" => HostDisconnected {
        host_id: HostId,
        error: String,
        since: DateTime<Utc>,
    },
    /// A host's usage sample: its figures and its VMs' over the step that
    /// starts at `at` (Unix seconds). Only sent to streams that ask for
    /// it by type (`metrics` or `metrics.sampled`).
    "metrics.sampled" => MetricsSampled {
        host_id: HostId,
        at: u64,
        step_secs: u64,
        host: crate::metrics::Values,
        vms: Vec<crate::metrics::VmValues>,
    },
}

impl Event {
    /// The job this event is about, if any.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Self::JobCreated { job } | Self::JobUpdated { job } => Some(job.id),
            Self::JobLog { job_id, .. } | Self::JobStep { job_id, .. } => Some(*job_id),
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
    /// Published by another replica and passed on here (not to be passed
    /// on again).
    pub relayed: bool,
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
    /// Users whose credentials, standing or role just changed.
    credentials: broadcast::Sender<UserId>,
    /// Client streams open per credential.
    open_streams: Arc<Mutex<HashMap<Credential, usize>>>,
    /// Cancelled when the service shuts down: every client stream and
    /// console then ends with [`StreamEnd::ShuttingDown`].
    closing: tokio_util::sync::CancellationToken,
}

/// One open client stream counted against its credential; uncounted when
/// the subscription holding it is dropped (stream closed, upgrade
/// abandoned, client gone).
struct StreamSlot {
    open: Arc<Mutex<HashMap<Credential, usize>>>,
    credential: Credential,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.credential) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.credential);
            }
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(BUS_CAPACITY)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (credentials, _) = broadcast::channel(CREDENTIAL_CHANGES_CAPACITY);
        Self {
            tx,
            seq: AtomicU64::new(1),
            credentials,
            open_streams: Arc::default(),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ends every client's event stream and console with
    /// [`StreamEnd::ShuttingDown`] (the service is stopping): clients learn
    /// why and reconnect, to another replica or to this one restarted,
    /// and the service need not wait for them to leave on their own.
    pub fn close_client_streams(&self) {
        self.closing.cancel();
    }

    /// Cancelled once [`EventBus::close_client_streams`] was called, for
    /// client connections that hold no credential watch (console relays).
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closing.clone()
    }

    /// Counts one more stream for `credential`, unless it already has
    /// `limit` open.
    fn take_stream_slot(&self, credential: &Credential, limit: usize) -> Option<StreamSlot> {
        let mut open = self.open_streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(credential.clone()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                open.remove(credential);
            }
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open_streams.clone(),
            credential: credential.clone(),
        })
    }

    /// Tells `user`'s open streams to re-check their credential: called
    /// after a key is revoked or rotated, a session ends, or the account is
    /// disabled or its role changes (once the change is stored). Never blocks.
    pub fn credentials_changed(&self, user: UserId) {
        // No open stream is normal; nothing to tell then.
        let _ = self.credentials.send(user);
    }

    /// Publishes `event` for `owner` (and administrators). Never blocks.
    pub fn publish(&self, owner: UserId, event: Event) {
        self.send(owner, event, false);
    }

    /// Publishes an event another replica published.
    pub(crate) fn publish_relayed(&self, owner: UserId, event: Event) {
        self.send(owner, event, true);
    }

    fn send(&self, owner: UserId, event: Event, relayed: bool) {
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
            relayed,
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

const TYPE_FAMILIES: [&str; 4] = ["job", "vm", "host", "metrics"];
/// Families a stream receives only when it names them: frequent and large.
const OPT_IN_FAMILIES: [&str; 1] = ["metrics"];

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
        if self.types.is_empty() {
            let family = type_name.split('.').next().unwrap_or_default();
            return !OPT_IN_FAMILIES.contains(&family);
        }
        self.types.iter().any(|t| {
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
    /// The subscription is over because of its credential; nothing follows.
    Ended(StreamEnd),
}

impl Delivery {
    /// The JSON text to send to a client.
    pub fn to_json(&self) -> String {
        match self {
            Self::Event(env) => env.json.clone(),
            Self::Resync { missed } => {
                serde_json::json!({"type": "resync", "missed": missed}).to_string()
            }
            Self::Ended(end) => end.to_json(),
        }
    }
}

/// Why a client's subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The key was revoked, rotated or expired, the session ended or
    /// expired, or the account was disabled: sign in again.
    CredentialsInvalid,
    /// The account's role changed, and with it what the stream may show:
    /// reconnect to get the stream the new role allows.
    RoleChanged,
    /// The service is stopping: reconnect (another replica, or this one
    /// once restarted, answers).
    ShuttingDown,
}

impl StreamEnd {
    /// A stable machine-readable reason.
    pub fn code(self) -> &'static str {
        match self {
            Self::CredentialsInvalid => "credentials_revoked",
            Self::RoleChanged => "role_changed",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// A short human-readable reason (fits a WebSocket close frame).
    pub fn message(self) -> &'static str {
        match self {
            Self::CredentialsInvalid => "credentials revoked or expired",
            Self::RoleChanged => "role changed; reconnect",
            Self::ShuttingDown => "service shutting down; reconnect",
        }
    }

    /// `{"type":"closed","reason":..., "message":...}`, the last message.
    pub fn to_json(self) -> String {
        serde_json::json!({"type": "closed", "reason": self.code(), "message": self.message()})
            .to_string()
    }
}

/// The secret a client authenticated with, kept only as its SHA-256 (what
/// the database holds anyway), so an open stream can be re-authenticated
/// through the same lookups as a request without holding the secret.
#[derive(Clone)]
pub enum PresentedCredential {
    ApiKey {
        prefix: String,
        digest: Vec<u8>,
    },
    Session {
        digest: Vec<u8>,
    },
    /// A provider's bearer JWT, verified when the stream opened: re-checked
    /// by its expiry and the account's standing, not kept.
    OidcToken {
        user: overvisor_model::account::UserId,
        provider: String,
        expires_at: chrono::DateTime<chrono::Utc>,
    },
}

impl std::fmt::Debug for PresentedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Digests are not secrets, but nothing gains from printing them.
        f.write_str(match self {
            Self::ApiKey { .. } => "PresentedCredential::ApiKey",
            Self::Session { .. } => "PresentedCredential::Session",
            Self::OidcToken { .. } => "PresentedCredential::OidcToken",
        })
    }
}

impl PresentedCredential {
    /// From an `Authorization: Bearer` token; `None` if it is not shaped like one of ours.
    pub fn api_key(token: &str) -> Option<Self> {
        let prefix = crate::credentials::api_token_prefix(token)?;
        Some(Self::ApiKey {
            prefix: prefix.to_owned(),
            digest: crate::credentials::sha256(token.as_bytes()),
        })
    }

    /// From a session cookie's value.
    pub fn session(cookie_value: &str) -> Self {
        Self::Session {
            digest: crate::credentials::sha256(cookie_value.as_bytes()),
        }
    }

    /// Whether this is what `credential` (as authentication recorded it) was made from.
    fn kind_matches(&self, credential: &Credential) -> bool {
        matches!(
            (self, credential),
            (Self::ApiKey { .. }, Credential::ApiKey { .. })
                | (Self::Session { .. }, Credential::Session { .. })
                | (Self::OidcToken { .. }, Credential::OidcToken { .. })
        )
    }
}

/// What a client's long-lived connection (an event stream, a console)
/// needs to keep its credential honest. Made by [`App::credential_watch`].
pub struct CredentialWatch {
    app: App,
    presented: PresentedCredential,
    changes: broadcast::Receiver<UserId>,
    every: tokio::time::Interval,
    closing: tokio_util::sync::CancellationToken,
    /// A re-check was triggered and has not completed yet. Kept across
    /// cancelled `next()` calls, so a trigger is never lost.
    due: bool,
}

impl CredentialWatch {
    /// Resolves when the credential should be re-checked: a change for
    /// `user` was announced (or changes were missed), or the timer fired.
    /// Cancel-safe: every await in it is.
    async fn triggered(&mut self, user: UserId) {
        loop {
            tokio::select! {
                () = self.closing.cancelled() => return,
                _ = self.every.tick() => return,
                change = self.changes.recv() => match change {
                    Ok(changed) if changed != user => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // The bus is going away with the service; the timer still works.
                    Err(broadcast::error::RecvError::Closed) => {
                        self.every.tick().await;
                        return;
                    }
                },
            }
        }
    }

    /// Re-authenticates; `Ok(subject)` to carry on (with the fresh
    /// account), `Err(end)` when the stream must end. A failure to ask the
    /// database keeps the stream and is retried at the next trigger.
    async fn recheck(&self, current: &Subject) -> Result<Subject, Option<StreamEnd>> {
        if self.closing.is_cancelled() {
            return Err(Some(StreamEnd::ShuttingDown));
        }
        let fresh = match self
            .app
            .authenticate_presented(&self.presented, current.source_ip.clone())
            .await
        {
            Ok(fresh) => fresh,
            Err(AppError::Unauthenticated | AppError::NotFound(_)) => {
                return Err(Some(StreamEnd::CredentialsInvalid));
            }
            Err(err) => {
                tracing::warn!(error = %err, user = %current.id(), "cannot re-check an event stream's credential; will retry");
                return Err(None);
            }
        };
        if fresh.id() != current.id() || fresh.credential != current.credential {
            return Err(Some(StreamEnd::CredentialsInvalid));
        }
        // What the stream shows was decided under the old role.
        if fresh.role() != current.role() {
            return Err(Some(StreamEnd::RoleChanged));
        }
        authorize(&fresh, Action::Read, Resource::OwnedBy(fresh.id()))
            .map_err(|_| Some(StreamEnd::CredentialsInvalid))?;
        Ok(fresh)
    }
}

impl CredentialWatch {
    /// Resolves once the credential `subject` authenticated with stops
    /// being valid or its role changes; `subject` is kept fresh meanwhile.
    /// Cancel-safe: a trigger that arrived is re-checked on the next call.
    pub async fn ended(&mut self, subject: &mut Subject) -> StreamEnd {
        loop {
            if !self.due {
                self.triggered(subject.id()).await;
                self.due = true;
            }
            match self.recheck(subject).await {
                Ok(fresh) => *subject = fresh,
                Err(Some(end)) => return end,
                Err(None) => {}
            }
            self.due = false;
        }
    }
}

/// Resolves when `watch` wants a re-check; never, without a watch.
async fn recheck_triggered(watch: &mut Option<CredentialWatch>, user: UserId) {
    match watch {
        Some(watch) => watch.triggered(user).await,
        None => std::future::pending().await,
    }
}

/// A subscriber's view of the bus: only what its subject may see and asked
/// for, and — for a client — only while its credential stays valid.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Envelope>>,
    subject: Subject,
    filter: EventFilter,
    watch: Option<CredentialWatch>,
    ended: bool,
    /// A client's place among its credential's open streams.
    _slot: Option<StreamSlot>,
}

impl Subscription {
    /// The next deliverable event; [`Delivery::Ended`] once when the
    /// credential stopped being valid; `None` after that and when the bus
    /// is gone (shutdown). Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(watch) = self.watch.as_mut().filter(|w| w.due) {
                match watch.recheck(&self.subject).await {
                    Ok(fresh) => self.subject = fresh,
                    Err(Some(end)) => {
                        self.ended = true;
                        metrics::counter!("overvisor_event_streams_ended_total", "reason" => end.code())
                            .increment(1);
                        return Some(Delivery::Ended(end));
                    }
                    Err(None) => {}
                }
                watch.due = false;
            }
            tokio::select! {
                // A revocation wins over events already queued behind it.
                biased;
                () = recheck_triggered(&mut self.watch, self.subject.id()) => {
                    if let Some(watch) = self.watch.as_mut() {
                        watch.due = true;
                    }
                }
                received = self.rx.recv() => match received {
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
                },
            }
        }
    }
}

fn may_see(subject: &Subject, env: &Envelope) -> bool {
    authorize(subject, Action::Read, Resource::OwnedBy(env.owner)).is_ok()
}

impl App {
    /// Subscribes `subject` to the events it may see, filtered by type, for
    /// as long as the service runs (for the service's own use and tests;
    /// clients go through [`App::events_subscribe_client`]).
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
            watch: None,
            ended: false,
            _slot: None,
        })
    }

    /// Subscribes a client that authenticated as `subject` with `presented`:
    /// the subscription ends (with [`Delivery::Ended`]) once that credential
    /// stops being valid or the account's role changes.
    pub fn events_subscribe_client(
        &self,
        subject: &Subject,
        presented: PresentedCredential,
        filter: EventFilter,
    ) -> Result<Subscription, AppError> {
        let watch = self.credential_watch(subject, presented)?;
        let limit = self.config().event_streams_per_credential;
        let slot = self
            .events()
            .take_stream_slot(&subject.credential, limit)
            .ok_or_else(|| {
                metrics::counter!("overvisor_event_streams_refused_total").increment(1);
                AppError::TooManyStreams { limit }
            })?;
        let mut subscription = self.events_subscribe(subject, filter)?;
        subscription._slot = Some(slot);
        subscription.watch = Some(watch);
        Ok(subscription)
    }

    /// Starts watching the credential `subject` authenticated with
    /// (`presented`), for a connection that must end when it stops being
    /// valid or the account's role changes.
    pub fn credential_watch(
        &self,
        subject: &Subject,
        presented: PresentedCredential,
    ) -> Result<CredentialWatch, AppError> {
        if !presented.kind_matches(&subject.credential) {
            return Err(AppError::Unauthenticated);
        }
        // Subscribed before anything can change, so no announcement is missed.
        let changes = self.events().credentials.subscribe();
        let period = self.config().stream_recheck.max(Duration::from_millis(100));
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(CredentialWatch {
            app: self.clone(),
            presented,
            changes,
            every,
            closing: self.events().closing.clone(),
            due: false,
        })
    }

    /// Authenticates a presented credential exactly as a request carrying
    /// it would be.
    pub async fn authenticate_presented(
        &self,
        presented: &PresentedCredential,
        source_ip: Option<String>,
    ) -> Result<Subject, AppError> {
        match presented {
            PresentedCredential::ApiKey { prefix, digest } => {
                self.api_key_authenticate_digest(prefix, digest, source_ip)
                    .await
            }
            PresentedCredential::Session { digest } => Ok(self
                .session_authenticate_digest(digest, source_ip)
                .await?
                .subject),
            PresentedCredential::OidcToken {
                user,
                provider,
                expires_at,
            } => {
                self.oidc_token_recheck(*user, provider, *expires_at, source_ip)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppConfig;
    use crate::accounts::NewUser;
    use overvisor_model::account::{Email, Role, UserChanges, UserName};
    use overvisor_store::{MasterKey, Sealer, Store};

    async fn app_with(stream_recheck: Duration) -> (App, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let config = AppConfig {
            stream_recheck,
            ..AppConfig::default()
        };
        let app = App::new(store, Sealer::new(&MasterKey::generate()), config);
        (app, dir)
    }

    /// Creates a user; returns the subject its first key authenticates as, and the token.
    async fn user(app: &App, name: &str, role: Role) -> (Subject, String) {
        let created = app
            .user_create(
                &Subject::console(),
                NewUser {
                    name: UserName::parse(name).expect("name"),
                    email: Email::parse(&format!("{name}@example.com")).expect("email"),
                    role,
                    password: None,
                },
            )
            .await
            .expect("create");
        let subject = app
            .api_key_authenticate(&created.api_token, None)
            .await
            .expect("authenticate");
        (subject, created.api_token)
    }

    async fn client(app: &App, subject: &Subject, token: &str) -> Subscription {
        let presented = PresentedCredential::api_key(token).expect("token shape");
        app.events_subscribe_client(subject, presented, EventFilter::default())
            .expect("subscribe")
    }

    fn key_id(subject: &Subject) -> overvisor_model::account::ApiKeyId {
        match subject.credential {
            Credential::ApiKey { id } => id,
            _ => panic!("not a key"),
        }
    }

    async fn next(sub: &mut Subscription) -> Option<Delivery> {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("nothing within 10 s")
    }

    fn host_event(app: &App, owner: UserId) {
        app.events().publish(
            owner,
            Event::HostConnected {
                host_id: HostId::new(),
            },
        );
    }

    #[tokio::test]
    async fn a_revocation_ends_the_stream_of_that_key_only() {
        let (app, _dir) = app_with(Duration::from_secs(3600)).await;
        let (ann, ann_token) = user(&app, "ann", Role::Operator).await;
        let (bob, bob_token) = user(&app, "bob", Role::Operator).await;
        let mut ann_sub = client(&app, &ann, &ann_token).await;
        let mut bob_sub = client(&app, &bob, &bob_token).await;

        app.api_key_revoke(&ann, key_id(&ann))
            .await
            .expect("revoke");
        assert!(matches!(
            next(&mut ann_sub).await,
            Some(Delivery::Ended(StreamEnd::CredentialsInvalid))
        ));
        assert!(next(&mut ann_sub).await.is_none(), "nothing after the end");

        // Bob re-checks nothing (the change was Ann's) and still gets his events.
        host_event(&app, bob.id());
        assert!(matches!(next(&mut bob_sub).await, Some(Delivery::Event(_))));
    }

    #[tokio::test]
    async fn a_role_change_ends_the_stream_and_other_changes_do_not() {
        let (app, _dir) = app_with(Duration::from_secs(3600)).await;
        let (ada, token) = user(&app, "ada", Role::Admin).await;
        // The last administrator cannot be demoted.
        user(&app, "root", Role::Admin).await;
        let mut sub = client(&app, &ada, &token).await;
        let console = Subject::console();
        let email = UserChanges {
            email: Some(Email::parse("ada@example.org").expect("email")),
            ..UserChanges::default()
        };
        app.user_update(&console, ada.id(), email)
            .await
            .expect("update");
        host_event(&app, UserId::new());
        assert!(
            matches!(next(&mut sub).await, Some(Delivery::Event(_))),
            "an admin still sees everyone's events"
        );
        let demote = UserChanges {
            role: Some(Role::Operator),
            ..UserChanges::default()
        };
        app.user_update(&console, ada.id(), demote)
            .await
            .expect("demote");
        assert!(matches!(
            next(&mut sub).await,
            Some(Delivery::Ended(StreamEnd::RoleChanged))
        ));
    }

    #[tokio::test]
    async fn the_timer_catches_changes_nobody_announced() {
        let (app, _dir) = app_with(Duration::from_millis(200)).await;
        let (cid, token) = user(&app, "cid", Role::Reader).await;
        let mut sub = client(&app, &cid, &token).await;
        // Straight to the store, as another process would.
        app.store()
            .api_key_revoke(cid.id(), key_id(&cid), Utc::now())
            .await
            .expect("revoke");
        assert!(matches!(
            next(&mut sub).await,
            Some(Delivery::Ended(StreamEnd::CredentialsInvalid))
        ));
    }

    #[tokio::test]
    async fn a_credential_of_another_kind_is_refused() {
        let (app, _dir) = app_with(Duration::from_secs(3600)).await;
        let (dee, _) = user(&app, "dee", Role::Reader).await;
        let presented = PresentedCredential::session("not the key it authenticated with");
        assert!(matches!(
            app.events_subscribe_client(&dee, presented, EventFilter::default()),
            Err(AppError::Unauthenticated)
        ));
    }

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
